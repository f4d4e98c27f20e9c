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
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VecarcError, VerificationError
from .format import parse_archive, read_archive, write_atomic
from .format.container import write_temp
from .format.index import Index, IndexDocument, Part, Volume, read_index
from .journal import Journal
from .models import sha256_file
from .search import Progress, emit

# Input bytes per volume: a few hundred MiB of memory while packing one, and in vectors mode
# (~38 tokens a chunk) well inside the reader's header cap (~500,000 chunks, docs/reliability.md).
DEFAULT_VOLUME_SIZE = 32 << 20
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


def _read(piece: Piece) -> bytes:
    with open(piece.path, "rb") as f:
        f.seek(piece.offset)
        data = f.read(piece.size)
    if len(data) != piece.size:
        raise VecarcError(f"{piece.path} changed while packing (shorter than planned)")
    return data


def _finished(path: Path, docs: Sequence[tuple[str, bytes]]) -> bool:
    """Whether a volume left by an interrupted pack holds exactly these documents (and reads as an archive)."""
    if not path.is_file():
        return False
    try:
        a = read_archive(path, load_vectors=False)
    except VecarcError:
        return False
    return [(d.name, d.size, d.sha256) for d in a.documents] == [
        (n, len(b), hashlib.sha256(b).hexdigest()) for n, b in docs]


def pack_volumes(inputs: Sequence[tuple[Path, str, int]], output: Path, volume_size: int,
                 pack_one: Callable[[list[tuple[str, bytes]], Journal], bytes], *, resume: bool, force: bool,
                 progress: Progress | None = None) -> Index:
    """Pack each volume with pack_one(documents, journal) -> checked archive bytes, write it, then the index.

    Nothing but the index stays in memory: each volume is dropped once written. With resume,
    a volume already written with exactly its planned documents is kept.
    """
    plans = plan_volumes(inputs, volume_size)
    for k in range(len(plans)):
        if volume_path(output, k).exists() and not (force or resume):
            raise VecarcError(f"{volume_path(output, k)} exists (use -f to overwrite, or --resume)")
    volumes: list[Volume] = []
    hashes = {name: hashlib.sha256() for _, name, _ in inputs}  # of what was packed, part by part
    for k, plan in enumerate(plans):
        path = volume_path(output, k)
        docs = [(p.name, _read(p)) for p in plan.pieces]
        for name, data in docs:
            hashes[name].update(data)
        emit(progress, event="note", message=f"volume {k + 1} of {len(plans)}: {path.name} "
                                             f"({sum(len(b) for _, b in docs):,} bytes)")
        if not (resume and _finished(path, docs)):
            journal = Journal.open(path, resume, force)
            try:
                data = pack_one(docs, journal)
                write_atomic(path, data, force=True)
                journal.remove()
            finally:
                journal.close()
            volumes.append(Volume(path.name, len(data), hashlib.sha256(data).hexdigest()))
        else:
            volumes.append(Volume(path.name, path.stat().st_size, sha256_file(path)))
    index = Index(volumes, _documents(inputs, plans, {n: h.hexdigest() for n, h in hashes.items()}))
    write_atomic(output, index.to_bytes(), force=True)
    return index


def _documents(inputs: Sequence[tuple[Path, str, int]], plans: Sequence[VolumePlan],
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
    a = parse_archive(data, load_vectors=load_vectors)
    want = sorted(d.name for d in index.documents if any(p.volume == k for p in d.parts))
    if sorted(d.name for d in a.documents) != want:
        raise VecarcError(f"volume {v.file} does not hold the documents {index_path.name} names")
    return a


def unpack_index(path: Path, targets: Callable[[Sequence[str]], list[Path]],
                 decode: Callable[[object], list[bytes]], progress: Progress | None = None) -> list[Path]:
    """Decode volume by volume, appending parts to temporary files; rename all once every hash matched."""
    index = read_index(path)
    final = targets([d.name for d in index.documents])
    by_name = {d.name: i for i, d in enumerate(index.documents)}
    temps: list[Path | None] = [None] * len(final)
    hashes = [hashlib.sha256() for _ in final]
    try:
        for k in range(len(index.volumes)):
            a = open_volume(path, index, k)
            for d, data in zip(a.documents, decode(a)):
                i = by_name[d.name]
                part = next(p for p in index.documents[i].parts if p.volume == k)
                if len(data) != part.size:
                    raise VerificationError(f"{d.name}: volume {index.volumes[k].file} holds {len(data)} bytes of "
                                            f"it, the index says {part.size}; nothing written")
                if temps[i] is None:
                    final[i].parent.mkdir(parents=True, exist_ok=True)
                    temps[i] = write_temp(final[i], b"")
                with open(temps[i], "ab") as f:
                    f.write(data)
                hashes[i].update(data)
            emit(progress, event="note", message=f"volume {k + 1} of {len(index.volumes)} decoded")
        for d, h in zip(index.documents, hashes):
            if h.hexdigest() != d.sha256:
                raise VerificationError(f"{d.name}: its parts do not match its SHA-256; nothing written")
        for tmp, t in zip(temps, final):
            os.replace(tmp, t)
    except BaseException:
        for tmp in temps:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    return final


def verify_index(path: Path, check: Callable[[object], tuple[list[str], list]],
                 progress: Progress | None = None) -> tuple[list[str], list]:
    """check(archive) -> (problems, stress reports) per volume; the problems name their volume."""
    from .robust import combine

    index = read_index(path)
    problems, reports = [], []
    for k, v in enumerate(index.volumes):
        try:
            a = open_volume(path, index, k)
        except VecarcError as e:
            problems.append(str(e))
            continue
        found, stress = check(a)
        problems += [f"{v.file}: {p}" for p in found]
        if stress:
            reports.append(stress)
        emit(progress, event="note", message=f"volume {k + 1} of {len(index.volumes)} checked")
    return problems, combine(reports) if reports else []


def index_summary(path: Path) -> dict:
    """What `info` shows for an index, from the index and the volumes' headers (no model)."""
    from .api import summary

    index = read_index(path)
    vols = []
    for k, v in enumerate(index.volumes):
        s = summary(open_volume(path, index, k, load_vectors=False))
        vols.append({"file": v.file, "bytes": v.size, "original_bytes": s["original_bytes"],
                     "documents": len(s["documents"]), "chunks": s["chunks"]["total"],
                     "vector_chunks": s["chunks"]["vector"], "tokens": sum(d["tokens"] for d in s["documents"])})
    original = sum(d.size for d in index.documents)
    stored = path.stat().st_size + sum(v.size for v in index.volumes)
    return {"index": str(path), "volumes": vols, "original_bytes": original, "archive_bytes": stored,
            "ratio": original / stored if stored else None,
            "documents": [{"name": d.name, "size": d.size, "sha256": d.sha256,
                           "parts": [index.volumes[p.volume].file for p in d.parts]} for d in index.documents]}
