"""Packs larger than one volume: several ordinary archives and one index (format/index.py).

An archive is built and checked in memory, so a corpus is cut into volumes of about
`volume_size` input bytes, each packed, verified and written before the next is read;
a document larger than a volume is cut into parts (at a line end where there is one).
Memory follows the volume, not the corpus. Unpack decodes a volume at a time and
appends each part to its document's temporary file, checking every document's SHA-256
before anything is renamed into place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VecarcError
from .format import Archive, parse_archive, read_archive
from .format.index import Index, IndexDocument, Part, is_index, read_index

SEAM_SEARCH = 64 << 10  # how far back from a volume's end to look for a line end to cut at


@dataclass
class Piece:
    """Bytes [offset, offset + size) of one input, stored under the document's name in a volume."""

    path: Path
    name: str
    offset: int
    size: int


@dataclass
class VolumePlan:
    pieces: list[Piece] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)


def _cut(path: Path, start: int, end: int) -> int:
    """Where to end a part near `end`: after the last line end in the last 64 KiB, else at a UTF-8 character start."""
    lo = max(start + 1, end - SEAM_SEARCH)
    with open(path, "rb") as f:
        f.seek(lo)
        window = f.read(end - lo + 1)
    nl = window.rfind(b"\n", 0, end - lo)
    if nl >= 0:
        return lo + nl + 1
    back = 0
    while back < 3 and end - lo - back > 0 and window[end - lo - back] & 0xC0 == 0x80:
        back += 1
    return end - back


def plan_volumes(inputs: Sequence[tuple[Path, str, int]], volume_size: int) -> list[VolumePlan]:
    """(path, name, size) per input, in order, cut into volumes of at most volume_size bytes."""
    vols, cur = [], VolumePlan()
    for path, name, size in inputs:
        offset = 0
        while True:
            room = volume_size - cur.size
            if size - offset <= room:
                cur.pieces.append(Piece(path, name, offset, size - offset))
                break
            if room <= 0 or (room < volume_size // 8 and cur.pieces):  # too little room left: next volume
                vols.append(cur)
                cur = VolumePlan()
                continue
            end = _cut(path, offset, offset + room)
            cur.pieces.append(Piece(path, name, offset, end - offset))
            vols.append(cur)
            cur, offset = VolumePlan(), end
    if cur.pieces:
        vols.append(cur)
    return vols


def volume_path(output: Path, k: int) -> Path:
    return output.with_name(f"{output.name}.{k + 1:04d}")


def read_piece(piece: Piece) -> bytes:
    with open(piece.path, "rb") as f:
        f.seek(piece.offset)
        data = f.read(piece.size)
    if len(data) != piece.size:
        raise VecarcError(f"{piece.path} changed while it was packed (file changed as we read it: shorter than "
                          f"planned); no index written: pack again once it is still")
    return data


def finished(path: Path, docs: Sequence[tuple[str, bytes]], fingerprint: str, mode: str, margin: float,
             dictionary: str | None = None) -> bool:
    """Whether a volume left by an interrupted pack holds exactly these documents, packed with
    this model in this mode at this margin, with this dictionary (and reads as an archive): a resume
    keeps it."""
    if not path.is_file():
        return False
    try:
        a = read_archive(path, load_vectors=False)
    except VecarcError:
        return False
    h = a.header
    coded = h.cram.get("mode") == "coded"  # no margin: every machine decodes it alike
    same = (fingerprint.startswith(h.model.fingerprint), h.cram.get("mode"), coded or h.required_margin == margin,
            h.cram.get("dictionary")) == (True, mode, True, dictionary)
    return same and [(d.name, d.size, d.sha256) for d in a.documents] == [
        (n, len(b), hashlib.sha256(b).hexdigest()[: len(d.sha256)]) for d, (n, b) in zip(a.documents, docs)] \
        and len(a.documents) == len(docs)


def index_documents(inputs: Sequence[tuple[Path, str, int]], plans: Sequence[VolumePlan],
               sha: dict[str, str]) -> list[IndexDocument]:
    parts: dict[str, list[Part]] = {}
    for k, plan in enumerate(plans):
        for p in plan.pieces:
            parts.setdefault(p.name, []).append(Part(k, p.size))
    return [IndexDocument(name, size, sha[name], parts[name]) for _, name, size in inputs]


# ---------------------------------------------------------------- reading


def open_volume(index_path: Path, index: Index, k: int, load_vectors: bool = True):
    """Volume k, refused unless it is the file the index names (size and SHA-256)."""
    v = index.volumes[k]
    path = index_path.with_name(v.file)
    if not path.is_file():
        raise VecarcError(f"volume {v.file} of {index_path.name} is missing")
    if path.stat().st_size != v.size:
        raise VecarcError(f"volume {v.file} is not the one {index_path.name} names (size or SHA-256 differs)")
    data = path.read_bytes()  # read once: hashed here, parsed (and its own checksum checked) below
    if hashlib.sha256(data).hexdigest() != v.sha256:
        raise VecarcError(f"volume {v.file} is not the one {index_path.name} names (size or SHA-256 differs)")
    a = parse_archive(data, load_vectors=load_vectors, stored_as=v.file)
    want = sorted(d.name for d in index.documents if any(p.volume == k for p in d.parts))
    if sorted(d.name for d in a.documents) != want:
        raise VecarcError(f"volume {v.file} does not hold the documents {index_path.name} names")
    return a


@dataclass
class Indexed:
    """A volume index opened for reading: its path (the volumes lie beside it) and its records."""

    path: Path
    index: Index

    def volume(self, k: int, load_vectors: bool = True) -> Archive:
        return open_volume(self.path, self.index, k, load_vectors)

    def volumes_holding(self, names: set[str] | None = None) -> list[int]:
        """The volumes holding a part of any of these documents (None: every volume), in order."""
        return sorted({p.volume for d in self.index.documents if names is None or d.name in names for p in d.parts})


def open_any(source: str | Path | Archive | Indexed, load_vectors: bool = True) -> Archive | Indexed:
    """An archive, or a volume index: the one place that tells them apart (by the magic number)."""
    if isinstance(source, (Archive, Indexed)):
        return source
    if is_index(source):
        return Indexed(Path(source), read_index(source))
    return read_archive(source, load_vectors=load_vectors)
