"""Format 5: the compact container of coded archives (docs/format.md, "Format 5").

A one-document archive of the default model spends ~40 bytes on magic, header and
checks: what decoding needs (the model's identity, vocabulary and sink, the chunk size,
names, sizes, a 64-bit hash per document) and nothing it can derive. Chunks follow
from each document's token count and the chunk size; each is a coded stream or a
literal zstd frame of its tokens. The reader checks the CRC-32 before parsing and every
count against the bytes that remain before it allocates for it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import VecarcError
from .header import (
    CODED_TOKENS_PER_BYTE,
    MAX_CHUNK_TOKENS,
    MAX_LITERAL_TOKENS,
    Chunk,
    DecodeRecord,
    Document,
    Header,
    ModelRecord,
    VectorsRecord,
    bad,
    need,
)
from .names import check_name, check_names

MAGIC = b"\x89VC"
VERSION = 5
FLAG_SOURCE = 1  # a model source string follows (absent: the default model)
FLAG_CONTEXT = 2  # chunks are coded after the tokens before them: a context length follows the chunk size
FLAG_DICT = 4  # chunks are coded after a dictionary's vectors: its 8-byte id follows the model source
FLAG_PREFIX = 8  # chunks are coded after vectors the archive holds: they follow the sizes
MAX_PREFIX = 64
MAX_CONTEXT = 4096
DEFAULT_SOURCE_MARK = "default"  # sources "default:..." are not stored: the default model, by its fingerprint
FP_BYTES, DOC_HASH_BYTES, DICT_ID_BYTES = 8, 8, 8
KIND_CODED, KIND_TOKENS = 0, 1
MAX_NAME = 4096


@dataclass(frozen=True)
class Prefix:
    """Vectors a coded archive holds (format 5, flag bit 3), read by every chunk after the sink and any
    dictionary's: value [i][j] is q[i d + j] x mults[i] in Q16."""

    q: bytes  # count x hidden int8, row-major
    mults: tuple[int, ...]  # per vector, 1 .. MAX_PREFIX_MULT
    hidden: int
    plain_bytes: int  # the archive's size without them, as pack measured it (informational)

    @property
    def count(self) -> int:
        return len(self.mults)

    def values(self) -> list[list[int]]:
        return [[(b - 256 if b > 127 else b) * m for b in self.q[i * self.hidden : (i + 1) * self.hidden]]
                for i, m in enumerate(self.mults)]


MAX_PREFIX_MULT = (1 << 17) - 1  # |q x mult| <= 128 (2^17 - 1) < 2^24, a dictionary's bound


def varint(n: int) -> bytes:
    """n as unsigned LEB128, the varint of format 5 and of dictionary files."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class Reader:
    """Fields taken from the front of `data`, each checked before use; `fail` makes the error (default: a
    corrupt archive's)."""

    def __init__(self, data: bytes, fail: Callable[[str], VecarcError] = bad) -> None:
        self.data, self.at, self.fail = data, 0, fail

    def need(self, cond: bool, msg: str) -> None:
        if not cond:
            raise self.fail(msg)

    def take(self, n: int, what: str) -> bytes:
        self.need(0 <= n <= len(self.data) - self.at, f"truncated in {what}")
        self.at += n
        return self.data[self.at - n : self.at]

    def varint(self, what: str, top: int = 1 << 62) -> int:
        n, shift = 0, 0
        while True:
            self.need(self.at < len(self.data) and shift < 63, f"truncated or overlong number in {what}")
            b = self.data[self.at]
            self.at += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                self.need(b or shift == 7, f"overlong number in {what}")
                self.need(n <= top, f"{what} out of range")
                return n

    def text(self, what: str) -> str:
        raw = self.take(self.varint(what, MAX_NAME), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None


def is_compact(head: bytes) -> bool:
    return head[:3] == MAGIC


def spans(tokens: int, chunk: int) -> list[int]:
    """The token counts of a text document's chunks: ceil(tokens / chunk) near-equal ones, the first
    (tokens mod count) of them one token longer (equal spans: no short tail chunk)."""
    if not tokens:
        return []
    count = -(-tokens // chunk)
    base, extra = divmod(tokens, count)
    return [base + (i < extra) for i in range(count)]


def serialize(header: Header, blocks: dict[int, bytes]) -> bytes:
    """The file: header, the chunks' blocks in order, CRC-32. header.chunks must follow spans()."""
    check_layout(header)
    m = header.model
    source = "" if m.source.startswith(DEFAULT_SOURCE_MARK + ":") else m.source
    digest = bytes.fromhex(m.fingerprint.partition(":")[2])[:FP_BYTES]
    context = header.cram.get("context_tokens", 0)
    dictionary = header.cram.get("dictionary")
    flags = (FLAG_SOURCE if source else 0) | (FLAG_CONTEXT if context else 0) | (FLAG_DICT if dictionary else 0) | (
        FLAG_PREFIX if header.prefix is not None else 0)
    out = bytearray(MAGIC + bytes([VERSION, flags]) + digest)
    if source:
        out += varint(len(source.encode())) + source.encode()
    if dictionary:
        out += bytes.fromhex(dictionary)
    sizes = [m.vocab_size, m.hidden_size, m.sink_token_id, header.cram["chunk_tokens"]] + ([context] if context else [])
    out += b"".join(varint(x) for x in sizes)
    if header.prefix is not None:
        p = header.prefix
        out += varint(p.count) + varint(p.plain_bytes)
        out += b"".join(varint(mult) + p.q[i * p.hidden : (i + 1) * p.hidden] for i, mult in enumerate(p.mults))
    out += varint(len(header.documents))
    by_doc = header.chunks_by_document()
    body = bytearray()
    for doc, mine in zip(header.documents, by_doc):
        name = doc.name.encode()
        tokens = sum(header.chunks[i].tokens for i in mine) if doc.encoding == "text" else -1
        out += varint(len(name)) + name + varint(doc.size) + varint(tokens + 1)
        out += bytes.fromhex(doc.sha256)[:DOC_HASH_BYTES]
        for i in mine:
            c = header.chunks[i]
            block = blocks[i]
            kind = KIND_TOKENS if c.kind in ("tokens", "bytes") else KIND_CODED
            out += varint(len(block) * 2 + kind) if c.kind != "bytes" else varint(len(block))
            c.offset, c.length = len(body), len(block)
            body += block
    data = bytes(out + body)
    return data + zlib.crc32(data).to_bytes(4, "little")


def parse(data: bytes) -> tuple[Header, dict[int, bytes]]:
    """The header as typed records and each chunk's block; VecarcError for anything malformed."""
    need(len(data) >= 4 + 2 + FP_BYTES + 4, "truncated before the end of the fixed header")
    need(data[3] == VERSION, f"unsupported compact version {data[3]}")
    if zlib.crc32(data[:-4]).to_bytes(4, "little") != data[-4:]:
        raise bad("checksum mismatch (the file is damaged)")
    r = Reader(data[:-4])
    r.take(4, "magic")
    flags = r.take(1, "flags")[0]
    need(not flags & ~(FLAG_SOURCE | FLAG_CONTEXT | FLAG_DICT | FLAG_PREFIX), "reserved flags are set")
    fingerprint = "fp2:" + r.take(FP_BYTES, "fingerprint").hex()
    source = r.text("model source") if flags & FLAG_SOURCE else DEFAULT_SOURCE_MARK
    dictionary = r.take(DICT_ID_BYTES, "dictionary id").hex() if flags & FLAG_DICT else None
    vocab = r.varint("vocabulary size", 1 << 24)
    need(vocab >= 1, "vocabulary size out of range")
    hidden = r.varint("hidden size", 1 << 16)
    sink = r.varint("sink token", vocab - 1)
    chunk = r.varint("chunk size", MAX_CHUNK_TOKENS)
    need(chunk >= 1, "chunk size out of range")
    context = r.varint("context length", MAX_CONTEXT) if flags & FLAG_CONTEXT else 0
    need(context >= 1 or not flags & FLAG_CONTEXT, "context length out of range")
    prefix = _prefix(r, hidden) if flags & FLAG_PREFIX else None
    ndocs = r.varint("document count", len(data))  # each document takes more than a byte
    docs, chunks, blocks, offset = [], [], {}, 0
    for d in range(ndocs):
        name = r.text("a document name")
        check_name(name)
        size = r.varint("a document size")
        tokens = r.varint("a document's token count") - 1
        digest = r.take(DOC_HASH_BYTES, "a document hash").hex()
        docs.append(Document(name, size, digest, "text" if tokens >= 0 else "bytes"))
        if tokens < 0:
            length = r.varint("a block length", len(data))
            chunks.append(Chunk(d, "bytes", size=size, offset=offset, length=length))
            offset += length
            continue
        need(tokens <= CODED_TOKENS_PER_BYTE * len(data), f"document {name!r} declares {tokens} tokens")
        for n in spans(tokens, chunk):
            v = r.varint("a chunk", 2 * len(data) + 1)
            kind, length = ("tokens" if v & 1 else "coded"), v >> 1
            need(kind == "coded" or (1 <= length and n <= MAX_LITERAL_TOKENS), "bad literal block")
            need(kind == "tokens" or n <= CODED_TOKENS_PER_BYTE * (length + 1),
                 f"a coded chunk declares {n} tokens for a stream of {length} bytes")
            chunks.append(Chunk(d, kind, n, offset=offset, length=length))
            offset += length
    check_names([d.name for d in docs])
    body = data[r.at : -4]
    need(offset == len(body), f"the chunks' blocks take {offset} bytes, the body holds {len(body)}")
    for i, c in enumerate(chunks):
        blocks[i] = body[c.offset : c.offset + c.length]
    name = "the default model" if source == DEFAULT_SOURCE_MARK else source.partition(":")[2].rsplit("/", 1)[-1]
    model = ModelRecord(name, source, fingerprint, "int", hidden, vocab, sink)
    cram = {"mode": "coded", "chunk_tokens": chunk} | ({"context_tokens": context} if context else {}) | (
        {"dictionary": dictionary} if dictionary else {})
    header = Header(model, VectorsRecord(1, "float32", hidden, 0), docs, chunks, cram,
                    decode=DecodeRecord("integer", "int", None), prefix=prefix, version=VERSION)
    return header, blocks


def _prefix(r: Reader, hidden: int) -> Prefix:
    count = r.varint("prefix vectors", MAX_PREFIX)
    need(count >= 1, "prefix vectors out of range")
    plain = r.varint("the prefix's plain size")
    need(count * (hidden + 1) <= len(r.data) - r.at, "truncated in the prefix vectors")
    mults, q = [], bytearray()
    for _ in range(count):
        mults.append(r.varint("a prefix multiplier", MAX_PREFIX_MULT))
        need(mults[-1] >= 1, "a prefix multiplier out of range")
        q += r.take(hidden, "the prefix vectors")
    return Prefix(bytes(q), tuple(mults), hidden, plain)


def check_layout(header: Header) -> None:
    """What the writer relies on: every text document's chunks follow spans(); refused otherwise (a bug)."""
    chunk = header.cram["chunk_tokens"]
    for doc, mine in zip(header.documents, header.chunks_by_document()):
        kinds = [header.chunks[i].kind for i in mine]
        if doc.encoding == "bytes":
            ok = kinds == ["bytes"]
        else:
            sizes = [header.chunks[i].tokens for i in mine]
            ok = sizes == spans(sum(sizes), chunk) and set(kinds) <= {"coded", "tokens"}
        if not ok:
            raise VecarcError(f"internal error: document {doc.name!r} does not have format 5's chunk layout")
