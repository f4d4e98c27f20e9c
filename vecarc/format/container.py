"""The .vec file format (docs/format.md): writing, and reading that trusts nothing.

The reader checks sizes against the file before allocating, verifies the
checksum before parsing, and validates every header field it later relies
on, so a hostile file ends in one VecarcError, never a traceback.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from ..errors import VecarcError, first_line
from . import basis, compact, corrections, quant
from .corrections import Correction
from .header import VERSION, Chunk, CorrectionsRecord, Document, Header, bad
from .strict import parse_json

MAGIC = b"\x89VEC\r\n\x1a\n"
READS = (2, 3, 4)  # what this container reads; format 5 is vecarc.format.compact
# zstd raw-content dictionaries for the header, one per version (docs/format.md, appendix): a typical
# header, so that the keys and the default model's strings cost almost nothing in a small archive.
DICT_DIR = Path(__file__).parent
HEADER_DICTS = {
    2: ("header-dict-v2.json", "b9b9e98752954e554d37ec03125c44e51a6cd73ef22e4f09e3ea8775d94fb715"),
    3: ("header-dict-v3.json", "9579234b827e233209c254b1dca4c028838e1120c6eabc7cfaa85c6493eb4a8e"),
    4: ("header-dict-v4.json", "c7e6b01c03be61523a3068139fef899b9e1553a77f78abf531a61f694e1faa57"),
}
PREFIX = struct.Struct("<8sHHIIIQ")  # magic, version, flags, header_zlen, header_len, reserved, body_len
CHECKSUM_LEN = 32
MAX_COMPACT = 1 << 31  # format 5 is read whole; volumes keep real ones far smaller
MAX_HEADER_ZLEN = 16 << 20
MAX_HEADER_LEN = 64 << 20
# Plain header bytes per compressed byte, above a 1 MiB allowance: real headers expand 5-20x.
MAX_HEADER_EXPANSION = 64
HEADER_ALLOWANCE = 1 << 20


@dataclass
class Archive:
    """A parsed archive: the typed header, the stored vectors and literal blocks (compressed).

    Low-rank vectors are expanded (P z) only when first used, so a reader can compare the
    header with the model before a hostile header makes it allocate.
    """

    header: Header
    stored: Any = None  # torch.Tensor (count, k, width): the vectors section's numbers; None when empty / not loaded
    literals: dict[int, bytes] = field(default_factory=dict)  # chunk index -> its block: zstd frame, coded stream
    corrections: dict[int, list[Correction]] = field(default_factory=dict)  # predicted chunk index -> its corrections
    size: int = 0  # bytes on disk, when read from a file
    _vectors: Any = field(default=None, repr=False, compare=False)

    @property
    def coords(self) -> Any:
        """Low-rank archives: the stored (count, k, rank) coordinates; else None."""
        return self.stored if self.header.vectors.rank else None

    @property
    def vectors(self) -> Any:
        """(count, k, hidden_size) float vectors as the model is fed them."""
        if self._vectors is None and self.stored is not None:
            v = self.header.vectors
            self._vectors = basis.expand(self.stored, v.hidden_size, v.basis_seed) if v.rank else self.stored
        return self._vectors

    @vectors.setter
    def vectors(self, value: Any) -> None:
        self._vectors = value
        if not self.header.vectors.rank:
            self.stored = value

    @property
    def documents(self) -> list[Document]:
        return self.header.documents

    @property
    def chunks(self) -> list[Chunk]:
        return self.header.chunks

    def row(self, chunk: Chunk) -> Any:
        """The vectors a vector chunk stands for."""
        return self.vectors[chunk.row]


_dict_cache: dict[int, zstandard.ZstdCompressionDict] = {}


def header_dict(version: int = VERSION) -> zstandard.ZstdCompressionDict:
    if version not in _dict_cache:
        name, digest = HEADER_DICTS[version]
        path = DICT_DIR / name
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != digest:
            raise VecarcError(f"{path} is damaged (reinstall vecarc)")
        _dict_cache[version] = zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return _dict_cache[version]


def compress_header(text: bytes, version: int = VERSION) -> bytes:
    return zstandard.ZstdCompressor(level=19, dict_data=header_dict(version)).compress(text)


def encode_tokens(tokens: list[int]) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(struct.pack(f"<{len(tokens)}I", *tokens))


def decode_tokens(frame: bytes, n: int, vocab_size: int) -> list[int]:
    ids = list(struct.unpack(f"<{n}I", _decompress(frame, 4 * n)))
    if ids and max(ids) >= vocab_size:
        raise VecarcError(f"corrupt literal block: token id {max(ids)} is not in the model's {vocab_size}")
    return ids


def _decompress(frame: bytes, size: int, what: str = "literal block", dict_data: Any = None) -> bytes:
    """Exactly `size` bytes from one zstd frame, never holding more than size + 1 of them.

    python-zstandard trusts a frame's own content size over max_output_size, so a frame that
    declares gigabytes is refused from its header, and the rest is read as a bounded stream.
    """
    try:
        declared = zstandard.frame_content_size(frame)
        if declared not in (-1, size):  # -1: the frame does not say
            raise VecarcError(f"corrupt {what}: its frame declares {declared} bytes where {size} were declared")
        d = zstandard.ZstdDecompressor(dict_data=dict_data)
        parts, got = [], 0
        with d.stream_reader(frame) as r:
            while got <= size and (part := r.read(size + 1 - got)):
                parts.append(part)
                got += len(part)
    except zstandard.ZstdError as e:
        raise VecarcError(f"corrupt {what}: {e}") from None
    if got != size:
        held = f"more than {size}" if got > size else str(got)
        raise VecarcError(f"corrupt {what}: it holds {held} bytes where {size} were declared")
    return b"".join(parts)


def literal_bytes(archive: Archive, chunk_index: int) -> bytes:
    return _decompress(archive.literals[chunk_index], archive.chunks[chunk_index].size)


# ---------------------------------------------------------------- writing


def serialize(archive: Archive) -> bytes:
    """Lay out the body, fill in offsets, and return the complete file bytes."""
    if archive.header.version in compact.READS:
        return compact.serialize(archive.header, archive.literals)
    header = archive.header.to_json()
    body = bytearray()
    vec = header["vectors"]
    stored = archive.stored
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
    if archive.header.version >= 3:
        _corrections_section(archive, header, body)
    rows = 0
    for i, (ch, c) in enumerate(zip(header["chunks"], archive.chunks)):
        if c.kind == "vector":  # a vector chunk's row is its rank among vector chunks: not stored
            if c.row != rows:
                raise ValueError("vector rows out of chunk order")  # a bug in pack, not bad input
            rows += 1
        elif c.in_body:
            frame = archive.literals[i]
            ch["offset"], ch["length"] = len(body), len(frame)
            body += frame
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    version = archive.header.version
    ztext = compress_header(text, version)
    prefix = PREFIX.pack(MAGIC, version, 0, len(ztext), len(text), 0, len(body))
    data = prefix + ztext + bytes(body)
    return data + hashlib.sha256(data).digest()


def _corrections_section(archive: Archive, header: dict, body: bytearray) -> None:
    """Append the corrections of every predicted chunk, in chunk order, and fill in their record."""
    per_chunk = [archive.corrections[i] for i, c in enumerate(archive.chunks) if c.corrections]
    if any(len(archive.corrections.get(i, ())) != c.corrections for i, c in enumerate(archive.chunks)):
        raise ValueError("chunk correction counts differ from their corrections")  # a bug in pack
    rec = CorrectionsRecord()
    if per_chunk:
        coded = corrections.encode(per_chunk)
        rec = CorrectionsRecord(sum(map(len, per_chunk)), (len(body), len(coded)))
        body += coded
    archive.header.corrections = rec
    header["corrections"] = rec.to_json()


TMP_SUFFIX = ".vecarc-tmp"


def write_atomic(path: Path, data: bytes, force: bool = False) -> None:
    """Write via a temporary file in the same folder, then rename: never half a file."""
    path = Path(path)
    if path.exists() and not force:
        raise VecarcError(f"{path} exists (use -f to overwrite)")
    if path.is_dir():
        raise VecarcError(f"{path} is a directory")
    tmp = write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise VecarcError(f"cannot write {path}: {e.strerror}") from None
        raise


def write_temp(path: Path, data: bytes) -> Path:
    """data in a new hidden file next to path (synced, mode as the umask says), to be renamed onto it.

    Its name carries this process's id, so a later run can tell a temporary file left by a
    killed process from one still being written (remove_stale_temps).
    """
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise VecarcError(f"folder {parent} does not exist")
    remove_stale_temps(path)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=parent)
    except OSError as e:
        raise VecarcError(f"cannot write in {parent}: {e.strerror}") from None
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 is not what a user expects of an output file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise VecarcError(f"cannot write {path}: {e.strerror}") from None
        raise
    return tmp


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files of `path` whose writing process no longer exists; returns them."""
    gone = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            gone.append(tmp)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


# ---------------------------------------------------------------- reading


def read_archive(path: str | Path, load_vectors: bool = True) -> Archive:
    """Read and validate an archive; `load_vectors=False` is enough for `info`. Its file name names the
    document of a one-document archive that stores no name (format 6)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise VecarcError(f"{path} is a directory, not an archive")
        with open(path, "rb") as f:
            return _parse_stream(f, size, load_vectors, path.name)
    except FileNotFoundError:
        raise VecarcError(f"no such file: {path}") from None
    except PermissionError:
        raise VecarcError(f"permission denied: {path}") from None
    except IsADirectoryError:
        raise VecarcError(f"{path} is a directory, not an archive") from None


def parse_archive(data: bytes, load_vectors: bool = True, stored_as: str | None = None) -> Archive:
    """An archive's bytes; stored_as is its file name, if it has one (see read_archive)."""
    import io

    return _parse_stream(io.BytesIO(data), len(data), load_vectors, stored_as)


def _compact(head: bytes, f, size: int, stored_as: str | None) -> Archive:
    if size > MAX_COMPACT:
        raise bad(f"a compact archive of {size} bytes (this reader takes up to {MAX_COMPACT})")
    header, blocks = compact.parse(head + f.read(size - len(head)), stored_as)
    return Archive(header=header, literals=blocks, size=size)


def _read_checked(f, head: bytes, size: int) -> bytearray:
    """The rest of the file after the prefix, its SHA-256 checked before anything parses it."""
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
    return rest


def _parse_stream(f, size: int, load_vectors: bool, stored_as: str | None = None) -> Archive:
    head = f.read(PREFIX.size)
    if compact.is_compact(head):
        return _compact(head, f, size, stored_as)
    if not head or head[: len(MAGIC)] != MAGIC[: len(head)]:
        raise VecarcError("not a vecarc archive (bad magic number)")
    if len(head) < PREFIX.size:
        raise bad("truncated before the end of the fixed header")
    _, version, flags, zlen, hlen, reserved, body_len = PREFIX.unpack(head)
    if version not in READS:
        raise VecarcError(f"unsupported archive version {version} (this vecarc reads versions "
                          f"{', '.join(map(str, (*READS, *compact.READS)))})")
    if flags or reserved:
        raise bad("reserved fields are not zero")
    if not 1 <= zlen <= MAX_HEADER_ZLEN or not 2 <= hlen <= min(MAX_HEADER_LEN,
                                                                 HEADER_ALLOWANCE + MAX_HEADER_EXPANSION * zlen):
        raise bad(f"header size out of range ({zlen} compressed, {hlen} plain)")
    expected = PREFIX.size + zlen + body_len + CHECKSUM_LEN
    if expected != size:
        what = "truncated" if size < expected else "has trailing bytes"
        raise bad(f"{what}: the header promises {expected} bytes, the file has {size}")
    rest = _read_checked(f, head, size)
    try:
        text = _decompress(bytes(rest[:zlen]), hlen, "header", header_dict(version))
        header = parse_json(text.decode("utf-8"))
    except VecarcError as e:
        raise bad(f"header does not decode ({str(e).removeprefix('corrupt header: ')})") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise bad(f"header does not decode ({first_line(e)[:200]})") from None
    body = memoryview(rest)[zlen:]
    archive = Archive(header=Header.from_json(header, body_len, version), size=size)
    for i, ch in enumerate(archive.chunks):
        if ch.in_body:
            archive.literals[i] = bytes(body[ch.offset : ch.offset + ch.length])
    archive.corrections = _load_corrections(archive.header, body)
    if load_vectors:
        archive.stored = _load_stored(archive.header, body)
    return archive


def _load_corrections(h: Header, body: memoryview) -> dict[int, list[Correction]]:
    c = h.corrections
    if c is None or not c.count:
        return {}
    off, length = c.section
    which = [i for i, ch in enumerate(h.chunks) if ch.corrections]
    try:
        got = corrections.parse(bytes(body[off : off + length]), [h.chunks[i].corrections for i in which],
                                [h.chunks[i].tokens for i in which], h.model.vocab_size)
    except ValueError as e:
        raise bad(str(e)) from None
    return dict(zip(which, got))


def _load_stored(h: Header, body: memoryview) -> Any:
    v = h.vectors
    if v.count == 0:
        return None
    off, length = v.section
    try:
        shape = (v.count, v.per_chunk, v.width)
        blob = bytes(body[off : off + length])
        if v.compression == "zstd":  # the exact size is known: nothing larger is ever allocated
            blob = _decompress(blob, v.count * v.row_bytes, "vectors section")
        return quant.decode(quant.from_raw(blob, v.dtype, shape), v.dtype, shape)
    except ValueError as e:
        raise bad(str(e)) from None
