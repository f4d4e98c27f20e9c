"""The archive header as typed records (docs/format.md, "Header").

`Header.from_json` is the one place a header is validated: every field a later
step relies on is checked there, once, and what comes out is typed. `to_json`
writes the same JSON, key for key and in the same order, so an archive read and
written again keeps its bytes. Informational fields (margins, steps, the plan)
are kept when well typed and dropped otherwise; nothing downstream trusts them.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import VecarcError
from . import basis, quant
from .names import check_name, check_names

VERSION = 4  # the version of the JSON container this vecarc writes (coded archives: 5, format.compact)
# Version 4 records the model fingerprint in scheme 2 (vecarc/fingerprint.py); 2 and 3 in scheme 1.
FINGERPRINT = {2: re.compile(r"sha256:[0-9a-f]{64}"), 3: re.compile(r"sha256:[0-9a-f]{64}"),
               4: re.compile(r"fp2:[0-9a-f]{64}")}
HASH_CHARS = 8  # per-chunk token hash: 32 bits locate a bad chunk; the document's SHA-256 is the guarantee
MAX_PER_CHUNK = 64
MAX_VECTOR_EXPANSION = 8  # decompressed / compressed size of a vectors section
MAX_CHUNK_TOKENS = 1 << 20
MAX_LITERAL = 1 << 30
MAX_LITERAL_TOKENS = min(MAX_CHUNK_TOKENS, MAX_LITERAL // 4)  # one literal token block
_HEX = re.compile(r"[0-9a-f]+")
CHUNK_KINDS = ("vector", "tokens", "bytes", "predicted")  # in the JSON container; "predicted": format 3 on
# Format 5 (format.compact) holds "coded", "tokens" and "bytes" chunks.
# A coded chunk may ask a reader to decode this many tokens per byte of its stream (plus one byte):
# text coded at 1/128 of a bit a token is already a text the model knows by heart.
CODED_TOKENS_PER_BYTE = 1024
# What a small file may make a reader do, as an allowance plus a multiple of the body's bytes:
# expanded float32 vectors (low rank: P z) and tokens to decode or detokenize. Real archives
# stay far inside (an int8 rank-256 vector is 258 B, expands to 2.3 KB and holds ~50 tokens).
EXPANDED_ALLOWANCE, EXPANDED_PER_BYTE = 64 << 20, 1024
TOKEN_ALLOWANCE, TOKENS_PER_BYTE = 1 << 20, 64  # all chunks, per byte of the body
# Tokens greedy decoding must produce (vector and predicted chunks), per byte of the vectors and
# corrections sections: real archives hold ~0.2 (vectors) and ~0.7 (corrections) per byte.
GREEDY_TOKEN_ALLOWANCE, GREEDY_TOKENS_PER_BYTE = 1024, 16


def bad(msg: str) -> VecarcError:
    return VecarcError(f"corrupt archive: {msg}")


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise bad(msg)


def _int(x: Any, lo: int, hi: int) -> bool:
    return type(x) is int and lo <= x <= hi


def is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _hex(x: Any, n: int) -> bool:
    return isinstance(x, str) and len(x) == n and _HEX.fullmatch(x) is not None


def token_hash(tokens: Sequence[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}I", *tokens)).hexdigest()[:HASH_CHARS]


@dataclass
class ModelRecord:
    """The frozen model the vectors belong to; `info` keeps the informational fields as written."""

    name: str
    source: str
    fingerprint: str
    dtype: str
    hidden_size: int
    vocab_size: int
    sink_token_id: int
    info: dict = field(default_factory=dict)  # architecture, num_layers, attention, ...

    ORDER = ("name", "source", "fingerprint", "architecture", "hidden_size", "vocab_size", "num_layers", "dtype",
             "attention", "sink_token_id")

    @classmethod
    def from_json(cls, m: dict, version: int = VERSION) -> ModelRecord:
        for key in ("name", "source", "fingerprint", "dtype"):
            need(isinstance(m.get(key), str), f"model.{key} missing")
        need(FINGERPRINT[version].fullmatch(m["fingerprint"]) is not None,
             f"model.fingerprint is not a format-{version} fingerprint")
        need(_int(m.get("vocab_size"), 1, 1 << 24), "model.vocab_size out of range")
        need(_int(m.get("hidden_size"), 1, 1 << 16), "model.hidden_size out of range")
        need(_int(m.get("sink_token_id"), 0, m["vocab_size"] - 1), "model.sink_token_id out of range")
        core = ("name", "source", "fingerprint", "dtype", "hidden_size", "vocab_size", "sink_token_id")
        return cls(*(m[k] for k in core), info={k: v for k, v in m.items() if k not in core})

    def to_json(self) -> dict:
        known = {"name": self.name, "source": self.source, "fingerprint": self.fingerprint, "dtype": self.dtype,
                 "hidden_size": self.hidden_size, "vocab_size": self.vocab_size, "sink_token_id": self.sink_token_id}
        both = known | self.info
        return {k: both[k] for k in self.ORDER if k in both} | {k: v for k, v in both.items() if k not in self.ORDER}


@dataclass
class VectorsRecord:
    """The vectors section: how many rows, in which storage form, where."""

    per_chunk: int
    dtype: str
    hidden_size: int
    count: int
    rank: int = 0  # 0: whole vectors; r: r coordinates in the basis
    basis_seed: int | None = None  # rank > 0 only
    compression: str = "none"
    section: tuple[int, int] = (0, 0)  # offset, length in the body

    @property
    def width(self) -> int:
        """Numbers stored per vector."""
        return self.rank or self.hidden_size

    @property
    def row_bytes(self) -> int:
        return quant.row_bytes(self.dtype, self.per_chunk, self.width)

    @classmethod
    def from_json(cls, v: dict, hidden_size: int, body_len: int) -> VectorsRecord:
        need(isinstance(v.get("dtype"), str) and v["dtype"] in quant.FORMS, f"unknown vector dtype {v.get('dtype')!r}")
        need(_int(v.get("per_chunk"), 1, MAX_PER_CHUNK), "vectors.per_chunk out of range")
        need(v.get("hidden_size") == hidden_size, "vectors.hidden_size differs from the model's")
        need(_int(v.get("count"), 0, body_len), "vectors.count out of range")
        sec = v.get("section")
        need(isinstance(sec, list) and len(sec) == 2 and all(_int(x, 0, body_len) for x in sec), "bad vectors section")
        need(sec[0] + sec[1] <= body_len, "vectors section runs past the body")
        rank = v.get("rank", 0)
        need(_int(rank, 0, 1 << 16), "vectors.rank out of range")
        need(rank <= hidden_size, f"vectors.rank {rank} is larger than the model dimension {hidden_size}")
        seed = None
        if rank:
            b = v.get("basis")
            need(isinstance(b, dict) and b.get("kind") == basis.KIND, f"unknown vector basis {b!r}")
            need(_int(b.get("seed"), 0, (1 << 63) - 1), "vectors.basis.seed out of range")
            seed = b["seed"]
        need(v.get("compression") in ("none", "zstd"), f"unknown vectors compression {v.get('compression')!r}")
        rec = cls(v["per_chunk"], v["dtype"], hidden_size, v["count"], rank, seed, v["compression"], tuple(sec))
        expanded = rec.count * rec.per_chunk * hidden_size * 4
        need(expanded <= EXPANDED_ALLOWANCE + EXPANDED_PER_BYTE * body_len,
             f"vectors would expand to {expanded} bytes from a body of {body_len}")
        need_bytes = rec.count * rec.row_bytes
        if rec.compression == "none":
            need(need_bytes == sec[1], f"vectors section is {sec[1]} bytes, the declared count needs {need_bytes}")
        else:
            # Real sections shrink by ~20 % at most; a cap on the ratio bounds what a hostile file can make us allocate.
            need(0 < sec[1] and need_bytes <= MAX_VECTOR_EXPANSION * sec[1],
                 f"compressed vectors section claims {need_bytes} bytes from {sec[1]}")
        return rec

    def to_json(self) -> dict:
        out = {"per_chunk": self.per_chunk, "dtype": self.dtype, "hidden_size": self.hidden_size,
               "count": self.count, "rank": self.rank}
        if self.rank:
            out["basis"] = {"kind": basis.KIND, "seed": self.basis_seed}
        return out | {"compression": self.compression, "section": list(self.section)}


@dataclass
class CorrectionsRecord:
    """The corrections section (format 3): how many, where."""

    count: int = 0
    section: tuple[int, int] = (0, 0)  # offset, length in the body

    @classmethod
    def from_json(cls, c: Any, body_len: int) -> CorrectionsRecord:
        need(isinstance(c, dict), "header field 'corrections' missing or of the wrong type")
        need(_int(c.get("count"), 0, 1 << 40), "corrections.count out of range")
        sec = c.get("section")
        need(isinstance(sec, list) and len(sec) == 2 and all(_int(x, 0, body_len) for x in sec),
             "bad corrections section")
        need(sec[0] + sec[1] <= body_len, "corrections section runs past the body")
        need((c["count"] == 0) == (sec[1] == 0), "corrections section length does not fit its count")
        need(not sec[1] or sec[1] >= 5, "corrections section shorter than a range-coded stream")
        return cls(c["count"], tuple(sec))

    def to_json(self) -> dict:
        return {"count": self.count, "section": list(self.section)}


@dataclass
class Document:
    name: str
    size: int
    sha256: str
    encoding: str  # "text": stored as tokens; "bytes": one zstd literal

    @classmethod
    def from_json(cls, d: Any) -> Document:
        need(isinstance(d, dict), "document entry is not an object")
        check_name(d.get("name"))
        need(_int(d.get("size"), 0, 1 << 62), "document size out of range")
        need(_hex(d.get("sha256"), 64), "bad document sha256")
        need(d.get("encoding") in ("text", "bytes"), "unknown document encoding")
        return cls(d["name"], d["size"], d["sha256"], d["encoding"])

    def to_json(self) -> dict:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "encoding": self.encoding}


@dataclass
class Chunk:
    """One piece of a document: a vector row, a block of literal tokens, or a whole bytes document."""

    doc: int
    kind: str  # one of CHUNK_KINDS
    tokens: int = 0  # vector and tokens chunks
    hash: str = ""  # token_hash of the chunk's tokens (vector and tokens chunks)
    size: int = 0  # bytes chunks: the document's size
    offset: int = 0  # literal chunks: where the zstd frame starts in the body
    length: int = 0  # ... and its length
    row: int = -1  # vector chunks, in memory only: the row of the vectors section (its rank among vector chunks)
    corrections: int = 0  # predicted chunks: how many of its tokens the corrections section supplies
    # Informational (vector chunks): greedy decode margin, optimisation steps, planned nats.
    margin: float | None = None
    steps: int | None = None
    search_steps: int | None = None
    planned_nats: float | None = None

    @property
    def is_literal(self) -> bool:
        """Stored as a zstd frame of its own in the body (a token block or a bytes document)."""
        return self.kind in ("tokens", "bytes")

    @property
    def in_body(self) -> bool:
        """Holds a block of the body of its own: a literal frame, or a coded chunk's stream."""
        return self.kind in ("tokens", "bytes", "coded")

    @property
    def is_greedy(self) -> bool:
        """Decoded by the model: a vector chunk, or a predicted one."""
        return self.kind in ("vector", "predicted")

    @classmethod
    def from_json(cls, ch: Any, row: int) -> Chunk:
        need(isinstance(ch, dict), "chunk entry is not an object")
        kind = ch.get("kind")
        if kind not in CHUNK_KINDS:
            raise bad(f"unknown chunk kind {kind!r}")
        c = cls(ch.get("doc"), kind)
        if kind == "vector":
            need(_int(ch.get("tokens"), 1, MAX_CHUNK_TOKENS), "chunk token count out of range")
            need("index" not in ch, "vector chunks carry no index in this version")
            c.tokens, c.row = ch["tokens"], row
            c.margin, c.planned_nats = (ch.get(k) if is_number(ch.get(k)) else None for k in ("margin", "planned_nats"))
            c.steps, c.search_steps = (ch.get(k) if _int(ch.get(k), 0, 1 << 62) else None
                                       for k in ("steps", "search_steps"))
        elif kind == "predicted":
            need(_int(ch.get("tokens"), 1, MAX_CHUNK_TOKENS), "chunk token count out of range")
            need(_int(ch.get("corrections"), 0, ch["tokens"]), "chunk corrections out of range")
            c.tokens, c.corrections = ch["tokens"], ch["corrections"]
        elif kind == "tokens":
            need(_int(ch.get("tokens"), 1, MAX_LITERAL_TOKENS), "token block size out of range")
            c.tokens = ch["tokens"]
        else:
            need(_int(ch.get("size"), 0, MAX_LITERAL), "bytes block size out of range")
            c.size = ch["size"]
        if kind != "bytes":
            need(_hex(ch.get("hash"), HASH_CHARS), "bad chunk hash")
            c.hash = ch["hash"]
        return c

    def literal_range(self, ch: dict, vec_end: int, body_len: int) -> None:
        need(_int(ch.get("offset"), vec_end, body_len), "literal block offset out of range")
        need(_int(ch.get("length"), 1, body_len - ch["offset"]), "literal block runs past the body")
        self.offset, self.length = ch["offset"], ch["length"]

    def to_json(self) -> dict:
        out: dict[str, Any] = {"doc": self.doc, "kind": self.kind}
        if self.kind == "bytes":
            out["size"] = self.size
        else:
            out["tokens"] = self.tokens
        if self.kind == "predicted":
            out["corrections"] = self.corrections
        if self.kind == "vector":
            for key in ("margin", "steps", "search_steps"):
                if getattr(self, key) is not None:
                    out[key] = getattr(self, key)
        if self.kind != "bytes":
            out["hash"] = self.hash
        if self.kind == "vector" and self.planned_nats is not None:
            out["planned_nats"] = self.planned_nats
        if self.in_body:
            out |= {"offset": self.offset, "length": self.length}
        return out


@dataclass
class DecodeRecord:
    """How the chunks were verified: the margin every greedy step kept (what `verify --strict` demands)."""

    method: str = "greedy-kv"
    dtype: str = "float32"
    margin: float | None = None

    @classmethod
    def from_json(cls, d: Any) -> DecodeRecord | None:
        if not isinstance(d, dict):
            return None
        return cls(str(d.get("method", "")), str(d.get("dtype", "")),
                   float(d["margin"]) if is_number(d.get("margin")) else None)

    def to_json(self) -> dict:
        return {"method": self.method, "dtype": self.dtype, "margin": self.margin}


@dataclass
class Header:
    """Everything an archive says about itself. `cram` (the search settings) and `plan` are informational."""

    model: ModelRecord
    vectors: VectorsRecord
    documents: list[Document]
    chunks: list[Chunk]
    cram: dict = field(default_factory=dict)
    plan: dict | None = None
    decode: DecodeRecord | None = None
    software: dict | None = None
    corrections: CorrectionsRecord | None = None  # format 3 on (required there)
    prefix: Any = None  # format 5 only: a format.compact.Prefix, vectors every coded chunk reads
    version: int = VERSION  # the format version the header was read as, or will be written as
    # Format 6: the archive's file name (None: unknown, or standard output). A one-document archive whose
    # document it names (compact.implied_name) stores no name; reading one, it gives the name.
    stored_as: str | None = None

    def chunks_by_document(self) -> list[list[int]]:
        """Per document, the indices of its chunks in order: one pass, however many documents."""
        out: list[list[int]] = [[] for _ in self.documents]
        for i, c in enumerate(self.chunks):
            out[c.doc].append(i)
        return out

    @property
    def required_margin(self) -> float:
        """The decode margin the archive promises: recorded under decode (cram's before that field existed)."""
        if self.decode is not None and self.decode.margin is not None:
            return self.decode.margin
        m = self.cram.get("margin")
        return float(m) if is_number(m) else 0.0

    @classmethod
    def from_json(cls, h: Any, body_len: int, version: int = VERSION) -> Header:
        need(isinstance(h, dict) and h.get("format") == "vecarc", "header is not a vecarc header")
        for key, typ in (("model", dict), ("vectors", dict), ("documents", list), ("chunks", list), ("cram", dict)):
            need(isinstance(h.get(key), typ), f"header field {key!r} missing or of the wrong type")
        model = ModelRecord.from_json(h["model"], version)
        vectors = VectorsRecord.from_json(h["vectors"], model.hidden_size, body_len)
        corrections = None
        if version >= 3:
            corrections = CorrectionsRecord.from_json(h.get("corrections"), body_len)
            need(not corrections.count or corrections.section[0] == sum(vectors.section),
                 "the corrections section does not follow the vectors section")
        else:
            need("corrections" not in h, "format 2 has no corrections")
        docs = _documents(h["documents"])
        chunks = _chunks(h["chunks"], docs, vectors, corrections, body_len, version)
        return cls(model, vectors, docs, chunks, h["cram"], h.get("plan"), DecodeRecord.from_json(h.get("decode")),
                   h.get("software") if isinstance(h.get("software"), dict) else None, corrections, version=version)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"format": "vecarc"}
        if self.software is not None:
            out["software"] = self.software
        out |= {"model": self.model.to_json(), "vectors": self.vectors.to_json()}
        if self.version >= 3:
            out["corrections"] = (self.corrections or CorrectionsRecord()).to_json()
        out["cram"] = self.cram
        if self.plan is not None:
            out["plan"] = self.plan
        if self.decode is not None:
            out["decode"] = self.decode.to_json()
        return out | {"documents": [d.to_json() for d in self.documents], "chunks": [c.to_json() for c in self.chunks]}


def _documents(raw: list) -> list[Document]:
    docs = [Document.from_json(d) for d in raw]
    check_names([d.name for d in docs])
    return docs


def _chunks(raw: list, docs: Sequence[Document], v: VectorsRecord, corrections: CorrectionsRecord | None,
            body_len: int, version: int) -> list[Chunk]:
    """Chunks in document order, each of a kind its document allows; vector chunks get their rows."""
    out, rows, last_doc = [], 0, 0
    bytes_chunks = [0] * len(docs)
    vec_end = lit_end = max(sum(v.section), sum(corrections.section) if corrections else 0)
    for ch in raw:
        need(isinstance(ch, dict), "chunk entry is not an object")
        need(_int(ch.get("doc"), last_doc, len(docs) - 1), "chunks out of document order")
        last_doc, enc = ch["doc"], docs[ch["doc"]].encoding
        kind = ch.get("kind")
        if kind == "predicted":
            need(corrections is not None, "format 2 has no predicted chunks")
        if kind in ("vector", "tokens", "predicted"):
            need(enc == "text", f"{kind} chunk in a bytes document")
        elif kind == "bytes":
            need(enc == "bytes", "bytes block in a text document")
        c = Chunk.from_json(ch, rows)
        if c.kind == "vector":
            need(rows < v.count, "more vector chunks than vectors")
            rows += 1
        elif c.is_literal:
            c.literal_range(ch, vec_end, body_len)
            need(c.offset >= lit_end, "literal blocks overlap or are out of order")
            lit_end = c.offset + c.length
        if c.kind == "bytes":
            need(c.size == docs[c.doc].size, "bytes block size differs from the document's")
            bytes_chunks[c.doc] += 1
        out.append(c)
    need(rows == v.count, f"{v.count} vectors but {rows} vector chunks")
    if corrections is not None:
        held = sum(c.corrections for c in out)
        need(held == corrections.count, f"chunks hold {held} corrections, the section {corrections.count}")
    tokens = sum(c.tokens for c in out)
    need(tokens <= TOKEN_ALLOWANCE + TOKENS_PER_BYTE * body_len,
         f"{tokens} tokens declared in a body of {body_len} bytes")
    greedy = sum(c.tokens for c in out if c.is_greedy)  # each one a greedy decoding step
    stored = v.section[1] + (corrections.section[1] if corrections else 0)
    need(greedy <= greedy_cap(stored),
         f"{greedy} tokens to decode declared for {stored} bytes of vectors and corrections")
    for d, n in zip(docs, bytes_chunks):
        if d.encoding == "bytes":
            need(n == 1, f"bytes document {d.name!r} needs exactly one block")
    return out


def greedy_cap(stored_bytes: int) -> int:
    """The most tokens a reader will decode greedily for this many bytes of vectors and corrections."""
    return GREEDY_TOKEN_ALLOWANCE + GREEDY_TOKENS_PER_BYTE * stored_bytes
