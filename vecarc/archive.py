"""The .vec file format (docs/format.md): writing, and reading that trusts nothing.

The reader checks sizes against the file before allocating, verifies the
checksum before parsing, and validates every header field it later relies
on, so a hostile file ends in one VecarcError, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from . import basis, quant
from .errors import VecarcError

MAGIC = b"\x89VEC\r\n\x1a\n"
VERSION = 2
# zstd raw-content dictionary for the header (docs/format.md, appendix): a typical header, so that
# the keys and the default model's strings cost almost nothing in a small archive.
HEADER_DICT_FILE = Path(__file__).with_name("header-dict-v2.json")
HEADER_DICT_SHA256 = "b9b9e98752954e554d37ec03125c44e51a6cd73ef22e4f09e3ea8775d94fb715"
HASH_CHARS = 8  # per-chunk token hash: 32 bits locate a bad chunk; the document's SHA-256 is the guarantee
PREFIX = struct.Struct("<8sHHIIIQ")  # magic, version, flags, header_zlen, header_len, reserved, body_len
CHECKSUM_LEN = 32
MAX_HEADER_ZLEN = 16 << 20
MAX_HEADER_LEN = 64 << 20
MAX_PER_CHUNK = 64
MAX_VECTOR_EXPANSION = 8  # decompressed / compressed size of a vectors section
MAX_CHUNK_TOKENS = 1 << 20
MAX_LITERAL = 1 << 30
MAX_LITERAL_TOKENS = min(MAX_CHUNK_TOKENS, MAX_LITERAL // 4)  # one literal token block
_HEX = re.compile(r"[0-9a-f]+")


@dataclass
class Archive:
    """A parsed archive: the header dict, the vector tensor and literal blocks (compressed)."""

    header: dict
    vectors: Any = None  # torch.Tensor (count, k, d) or None when not loaded / empty
    coords: Any = None  # low-rank archives: the stored (count, k, r); vectors = basis.expand(coords)
    literals: dict[int, bytes] = field(default_factory=dict)  # chunk index -> zstd frame
    size: int = 0  # bytes on disk, when read from a file

    @property
    def documents(self) -> list[dict]:
        return self.header["documents"]

    @property
    def chunks(self) -> list[dict]:
        return self.header["chunks"]


def token_hash(tokens: list[int]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(tokens)}I", *tokens)).hexdigest()[:HASH_CHARS]


_dict_cache: list = []


def header_dict() -> zstandard.ZstdCompressionDict:
    if not _dict_cache:
        raw = HEADER_DICT_FILE.read_bytes()
        if hashlib.sha256(raw).hexdigest() != HEADER_DICT_SHA256:
            raise VecarcError(f"{HEADER_DICT_FILE} is damaged (reinstall vecarc)")
        _dict_cache.append(zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT))
    return _dict_cache[0]


def compress_header(text: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19, dict_data=header_dict()).compress(text)


def encode_tokens(tokens: list[int]) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(struct.pack(f"<{len(tokens)}I", *tokens))


def decode_tokens(frame: bytes, n: int) -> list[int]:
    raw = _decompress(frame, 4 * n)
    return list(struct.unpack(f"<{n}I", raw))


def _decompress(frame: bytes, size: int, what: str = "literal block") -> bytes:
    try:
        raw = zstandard.ZstdDecompressor().decompress(frame, max_output_size=max(size, 1))
    except zstandard.ZstdError as e:
        raise VecarcError(f"corrupt {what}: {e}") from None
    if len(raw) != size:
        raise VecarcError(f"corrupt {what}: {len(raw)} bytes where {size} were declared")
    return raw


def literal_bytes(archive: Archive, chunk_index: int) -> bytes:
    return _decompress(archive.literals[chunk_index], archive.chunks[chunk_index]["size"])


# ---------------------------------------------------------------- writing


def serialize(archive: Archive) -> bytes:
    """Lay out the body, fill in offsets, and return the complete file bytes."""
    header = json.loads(json.dumps(archive.header))  # private copy we may annotate
    body = bytearray()
    vec = header["vectors"]
    stored = archive.coords if vec.get("rank") else archive.vectors
    if stored is not None and stored.shape[0] > 0:
        blob = quant.raw_bytes(quant.encode(stored, vec["dtype"]))
        # Integer values are far from uniform (int4: ~3 of 4 bits carry information): zstd's
        # entropy stage takes ~19 % off int4 and ~7 % off int8; float sections rarely shrink.
        packed = zstandard.ZstdCompressor(level=19).compress(blob)
        vec["compression"] = "zstd" if len(packed) < len(blob) else "none"
        blob = packed if vec["compression"] == "zstd" else blob
        vec["section"] = [0, len(blob)]
        body += blob
    else:
        vec["section"], vec["compression"] = [0, 0], "none"
    rows = 0
    for i, ch in enumerate(header["chunks"]):
        if ch["kind"] == "vector":  # a vector chunk's row is its rank among vector chunks: not stored
            if ch.pop("index") != rows:
                raise ValueError("vector rows out of chunk order")  # a bug in pack, not bad input
            rows += 1
        if ch["kind"] in ("tokens", "bytes"):
            frame = archive.literals[i]
            ch["offset"], ch["length"] = len(body), len(frame)
            body += frame
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    ztext = compress_header(text)
    prefix = PREFIX.pack(MAGIC, VERSION, 0, len(ztext), len(text), 0, len(body))
    data = prefix + ztext + bytes(body)
    return data + hashlib.sha256(data).digest()


def write_atomic(path: Path, data: bytes, force: bool = False) -> None:
    """Write via a temporary file in the same folder, then rename: never half a file."""
    path = Path(path)
    if path.exists() and not force:
        raise VecarcError(f"{path} exists (use -f to overwrite)")
    if path.is_dir():
        raise VecarcError(f"{path} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VecarcError(f"folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 is not what a user expects of an output file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_archive(path: Path, archive: Archive, force: bool = False) -> int:
    data = serialize(archive)
    write_atomic(path, data, force=force)
    return len(data)


# ---------------------------------------------------------------- reading


def _bad(msg: str) -> VecarcError:
    return VecarcError(f"corrupt archive: {msg}")


def read_archive(path: str | Path, load_vectors: bool = True) -> Archive:
    """Read and validate an archive; `load_vectors=False` is enough for `info`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise VecarcError(f"{path} is a directory, not an archive")
        with open(path, "rb") as f:
            return _read(f, size, load_vectors)
    except FileNotFoundError:
        raise VecarcError(f"no such file: {path}") from None
    except PermissionError:
        raise VecarcError(f"permission denied: {path}") from None
    except IsADirectoryError:
        raise VecarcError(f"{path} is a directory, not an archive") from None


def parse_archive(data: bytes, load_vectors: bool = True) -> Archive:
    import io

    return _read(io.BytesIO(data), len(data), load_vectors)


def _read(f, size: int, load_vectors: bool) -> Archive:
    head = f.read(PREFIX.size)
    if not head or head[: len(MAGIC)] != MAGIC[: len(head)]:
        raise VecarcError("not a vecarc archive (bad magic number)")
    if len(head) < PREFIX.size:
        raise _bad("truncated before the end of the fixed header")
    _, version, flags, zlen, hlen, reserved, body_len = PREFIX.unpack(head)
    if version != VERSION:
        raise VecarcError(f"unsupported archive version {version} (this vecarc reads version {VERSION})")
    if flags or reserved:
        raise _bad("reserved fields are not zero")
    if not 1 <= zlen <= MAX_HEADER_ZLEN or not 2 <= hlen <= MAX_HEADER_LEN:
        raise _bad(f"header size out of range ({zlen} compressed, {hlen} plain)")
    expected = PREFIX.size + zlen + body_len + CHECKSUM_LEN
    if expected != size:
        what = "truncated" if size < expected else "has trailing bytes"
        raise _bad(f"{what}: the header promises {expected} bytes, the file has {size}")
    h = hashlib.sha256(head)
    rest = bytearray()
    remaining = size - PREFIX.size - CHECKSUM_LEN
    while remaining:
        block = f.read(min(remaining, 1 << 20))
        if not block:
            raise _bad("file shrank while reading")
        rest += block
        remaining -= len(block)
    h.update(rest)
    if h.digest() != f.read(CHECKSUM_LEN):
        raise _bad("checksum mismatch (the file is damaged)")
    try:
        text = zstandard.ZstdDecompressor(dict_data=header_dict()).decompress(bytes(rest[:zlen]),
                                                                               max_output_size=hlen)
        if len(text) != hlen:
            raise ValueError("length differs from the declared one")
        header = json.loads(text.decode("utf-8"))
    except (zstandard.ZstdError, ValueError, UnicodeDecodeError) as e:
        raise _bad(f"header does not decode ({e})") from None
    body = memoryview(rest)[zlen:]
    _validate(header, body_len)
    archive = Archive(header=header, size=size)
    for i, ch in enumerate(header["chunks"]):
        if ch["kind"] in ("tokens", "bytes"):
            archive.literals[i] = bytes(body[ch["offset"] : ch["offset"] + ch["length"]])
    if load_vectors:
        archive.vectors, archive.coords = _load_vectors(header["vectors"], body)
    return archive


def _load_vectors(vec: dict, body: memoryview):
    off, length = vec["section"]
    if vec["count"] == 0:
        return None, None
    rank = vec.get("rank", 0)
    try:
        shape = (vec["count"], vec["per_chunk"], rank or vec["hidden_size"])
        blob = bytes(body[off : off + length])
        if vec["compression"] == "zstd":  # the exact size is known: nothing larger is ever allocated
            want = vec["count"] * quant.row_bytes(vec["dtype"], vec["per_chunk"], shape[2])
            blob = _decompress(blob, want, "vectors section")
        stored = quant.decode(quant.from_raw(blob, vec["dtype"], shape), vec["dtype"], shape)
    except ValueError as e:
        raise _bad(str(e)) from None
    if not rank:
        return stored, None
    return basis.expand(stored, vec["hidden_size"], vec["basis"]["seed"]), stored


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise _bad(msg)


def _int(x: Any, lo: int, hi: int) -> bool:
    return type(x) is int and lo <= x <= hi


def check_name(name: Any) -> str:
    """Document names are relative, normalised, '/'-separated paths."""
    ok = isinstance(name, str) and 0 < len(name.encode("utf-8", "surrogatepass")) <= 4096 and "\x00" not in name
    if ok:
        parts = name.split("/")
        ok = not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)
        ok = ok and not re.match(r"^[A-Za-z]:", name)
    if not ok:
        raise _bad(f"unsafe document name {name!r}")
    return name


def _hash(ch: dict) -> None:
    x = ch.get("hash")
    _need(isinstance(x, str) and len(x) == HASH_CHARS and _HEX.fullmatch(x) is not None, "bad chunk hash")


def _validate(h: Any, body_len: int) -> None:
    _need(isinstance(h, dict) and h.get("format") == "vecarc", "header is not a vecarc header")
    for key, typ in (("model", dict), ("vectors", dict), ("documents", list), ("chunks", list), ("cram", dict)):
        _need(isinstance(h.get(key), typ), f"header field {key!r} missing or of the wrong type")
    m = h["model"]
    for key in ("name", "source", "fingerprint", "dtype"):
        _need(isinstance(m.get(key), str), f"model.{key} missing")
    _need(_int(m.get("vocab_size"), 1, 1 << 24), "model.vocab_size out of range")
    _need(_int(m.get("hidden_size"), 1, 1 << 16), "model.hidden_size out of range")
    _need(_int(m.get("sink_token_id"), 0, m["vocab_size"] - 1), "model.sink_token_id out of range")
    v = h["vectors"]
    _need(isinstance(v.get("dtype"), str) and v["dtype"] in quant.FORMS, f"unknown vector dtype {v.get('dtype')!r}")
    _need(_int(v.get("per_chunk"), 1, MAX_PER_CHUNK), "vectors.per_chunk out of range")
    _need(v.get("hidden_size") == m["hidden_size"], "vectors.hidden_size differs from the model's")
    _need(_int(v.get("count"), 0, body_len), "vectors.count out of range")
    sec = v.get("section")
    _need(isinstance(sec, list) and len(sec) == 2 and all(_int(x, 0, body_len) for x in sec), "bad vectors section")
    _need(sec[0] + sec[1] <= body_len, "vectors section runs past the body")
    rank = v.get("rank", 0)
    _need(_int(rank, 0, 1 << 16), "vectors.rank out of range")
    _need(rank <= v["hidden_size"], f"vectors.rank {rank} is larger than the model dimension {v['hidden_size']}")
    if rank:
        b = v.get("basis")
        _need(isinstance(b, dict) and b.get("kind") == basis.KIND, f"unknown vector basis {b!r}")
        _need(_int(b.get("seed"), 0, (1 << 63) - 1), "vectors.basis.seed out of range")
    row = quant.row_bytes(v["dtype"], v["per_chunk"], rank or v["hidden_size"])
    _need(v.get("compression") in ("none", "zstd"), f"unknown vectors compression {v.get('compression')!r}")
    if v["compression"] == "none":
        _need(v["count"] * row == sec[1],
              f"vectors section is {sec[1]} bytes, the declared count needs {v['count'] * row}")
    else:
        # Real sections shrink by ~20 % at most; a cap on the ratio bounds what a hostile file can make us allocate.
        _need(0 < sec[1] and v["count"] * row <= MAX_VECTOR_EXPANSION * sec[1],
              f"compressed vectors section claims {v['count'] * row} bytes from {sec[1]}")
    names = set()
    for d in h["documents"]:
        _need(isinstance(d, dict), "document entry is not an object")
        check_name(d.get("name"))
        _need(d["name"] not in names, f"duplicate document name {d['name']!r}")
        names.add(d["name"])
        _need(_int(d.get("size"), 0, 1 << 62), "document size out of range")
        sha = d.get("sha256")
        _need(isinstance(sha, str) and len(sha) == 64 and _HEX.fullmatch(sha) is not None, "bad document sha256")
        _need(d.get("encoding") in ("text", "bytes"), "unknown document encoding")
    ndocs, rows, last_doc = len(h["documents"]), 0, 0
    bytes_chunks = [0] * ndocs
    for ch in h["chunks"]:
        _need(isinstance(ch, dict), "chunk entry is not an object")
        doc = ch.get("doc")
        _need(_int(doc, last_doc, ndocs - 1), "chunks out of document order")
        last_doc = doc
        kind, enc = ch.get("kind"), h["documents"][doc]["encoding"]
        if kind == "vector":
            _need(enc == "text", "vector chunk in a bytes document")
            _need(_int(ch.get("tokens"), 1, MAX_CHUNK_TOKENS), "chunk token count out of range")
            _need("index" not in ch, "vector chunks carry no index in this version")
            _need(rows < v["count"], "more vector chunks than vectors")
            ch["index"] = rows  # the in-memory form names the row
            rows += 1
            _hash(ch)
        elif kind in ("tokens", "bytes"):
            _need(_int(ch.get("offset"), sec[0] + sec[1], body_len), "literal block offset out of range")
            _need(_int(ch.get("length"), 1, body_len - ch["offset"]), "literal block runs past the body")
            if kind == "tokens":
                _need(enc == "text", "token block in a bytes document")
                _need(_int(ch.get("tokens"), 1, MAX_LITERAL_TOKENS), "token block size out of range")
                _hash(ch)
            else:
                _need(enc == "bytes", "bytes block in a text document")
                _need(_int(ch.get("size"), 0, MAX_LITERAL), "bytes block size out of range")
                _need(ch["size"] == h["documents"][doc]["size"], "bytes block size differs from the document's")
                bytes_chunks[doc] += 1
        else:
            raise _bad(f"unknown chunk kind {kind!r}")
    _need(rows == v["count"], f"{v['count']} vectors but {rows} vector chunks")
    for i, d in enumerate(h["documents"]):
        if d["encoding"] == "bytes":
            _need(bytes_chunks[i] == 1, f"bytes document {d['name']!r} needs exactly one block")
