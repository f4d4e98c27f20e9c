"""The .vec file format (docs/format.md): writing, and reading that trusts nothing.

The reader checks sizes against the file before allocating, verifies the
checksum before parsing, and validates every header field it later relies
on, so a hostile file ends in one VecarcError, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from ..errors import VecarcError
from . import basis, quant
from .header import Chunk, Document, Header, bad

MAGIC = b"\x89VEC\r\n\x1a\n"
VERSION = 2
# zstd raw-content dictionary for the header (docs/format.md, appendix): a typical header, so that
# the keys and the default model's strings cost almost nothing in a small archive.
HEADER_DICT_FILE = Path(__file__).with_name("header-dict-v2.json")
HEADER_DICT_SHA256 = "b9b9e98752954e554d37ec03125c44e51a6cd73ef22e4f09e3ea8775d94fb715"
PREFIX = struct.Struct("<8sHHIIIQ")  # magic, version, flags, header_zlen, header_len, reserved, body_len
CHECKSUM_LEN = 32
MAX_HEADER_ZLEN = 16 << 20
MAX_HEADER_LEN = 64 << 20


@dataclass
class Archive:
    """A parsed archive: the typed header, the vector tensor and literal blocks (compressed)."""

    header: Header
    vectors: Any = None  # torch.Tensor (count, k, d) or None when not loaded / empty
    coords: Any = None  # low-rank archives: the stored (count, k, r); vectors = basis.expand(coords)
    literals: dict[int, bytes] = field(default_factory=dict)  # chunk index -> zstd frame
    size: int = 0  # bytes on disk, when read from a file

    @property
    def documents(self) -> list[Document]:
        return self.header.documents

    @property
    def chunks(self) -> list[Chunk]:
        return self.header.chunks

    def row(self, chunk: Chunk) -> Any:
        """The vectors a vector chunk stands for."""
        return self.vectors[chunk.row]


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
    return _decompress(archive.literals[chunk_index], archive.chunks[chunk_index].size)


# ---------------------------------------------------------------- writing


def serialize(archive: Archive) -> bytes:
    """Lay out the body, fill in offsets, and return the complete file bytes."""
    header = archive.header.to_json()
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
    else:  # an empty section: section before compression, the key order this writer has always used
        del vec["compression"], vec["section"]
        vec["section"], vec["compression"] = [0, 0], "none"
    rows = 0
    for i, (ch, c) in enumerate(zip(header["chunks"], archive.chunks)):
        if c.kind == "vector":  # a vector chunk's row is its rank among vector chunks: not stored
            if c.row != rows:
                raise ValueError("vector rows out of chunk order")  # a bug in pack, not bad input
            rows += 1
        else:
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


# ---------------------------------------------------------------- reading


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
        raise bad("truncated before the end of the fixed header")
    _, version, flags, zlen, hlen, reserved, body_len = PREFIX.unpack(head)
    if version != VERSION:
        raise VecarcError(f"unsupported archive version {version} (this vecarc reads version {VERSION})")
    if flags or reserved:
        raise bad("reserved fields are not zero")
    if not 1 <= zlen <= MAX_HEADER_ZLEN or not 2 <= hlen <= MAX_HEADER_LEN:
        raise bad(f"header size out of range ({zlen} compressed, {hlen} plain)")
    expected = PREFIX.size + zlen + body_len + CHECKSUM_LEN
    if expected != size:
        what = "truncated" if size < expected else "has trailing bytes"
        raise bad(f"{what}: the header promises {expected} bytes, the file has {size}")
    h = hashlib.sha256(head)
    rest = bytearray()
    remaining = size - PREFIX.size - CHECKSUM_LEN
    while remaining:
        block = f.read(min(remaining, 1 << 20))
        if not block:
            raise bad("file shrank while reading")
        rest += block
        remaining -= len(block)
    h.update(rest)
    if h.digest() != f.read(CHECKSUM_LEN):
        raise bad("checksum mismatch (the file is damaged)")
    try:
        text = zstandard.ZstdDecompressor(dict_data=header_dict()).decompress(bytes(rest[:zlen]),
                                                                               max_output_size=hlen)
        if len(text) != hlen:
            raise ValueError("length differs from the declared one")
        header = parse_json(text.decode("utf-8"))
    except (zstandard.ZstdError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise bad(f"header does not decode ({str(e).splitlines()[0][:200]})") from None
    body = memoryview(rest)[zlen:]
    archive = Archive(header=Header.from_json(header, body_len), size=size)
    for i, ch in enumerate(archive.chunks):
        if ch.is_literal:
            archive.literals[i] = bytes(body[ch.offset : ch.offset + ch.length])
    if load_vectors:
        archive.vectors, archive.coords = _load_vectors(archive.header, body)
    return archive


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {dup!r} appears twice in one object")
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str) -> Any:
    """Strict JSON, as the format requires: no repeated keys in an object, no NaN or Infinity."""
    return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _load_vectors(h: Header, body: memoryview):
    v = h.vectors
    if v.count == 0:
        return None, None
    off, length = v.section
    try:
        shape = (v.count, v.per_chunk, v.width)
        blob = bytes(body[off : off + length])
        if v.compression == "zstd":  # the exact size is known: nothing larger is ever allocated
            blob = _decompress(blob, v.count * v.row_bytes, "vectors section")
        stored = quant.decode(quant.from_raw(blob, v.dtype, shape), v.dtype, shape)
    except ValueError as e:
        raise bad(str(e)) from None
    if not v.rank:
        return stored, None
    return basis.expand(stored, v.hidden_size, v.basis_seed), stored
