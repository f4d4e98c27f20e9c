"""The pack journal: an interrupted pack keeps its work and `--resume` continues it.

Packing a long text takes hours, so a kill must not throw the work away.
Next to the output, pack appends records to OUTPUT.journal (format in
docs/format.md): first the identity of the pack (inputs, model, settings,
plan), then each finished chunk as it leaves the batch, and every
`checkpoint_every` seconds a snapshot of the optimiser's whole in-flight
state (vectors, Adam moments, step counts, the queue).

Resuming restores the last snapshot bit for bit and drops the records that
came after it: they are recomputed, and because the computation from a
snapshot is the same computation, the archive comes out byte-identical to an
uninterrupted run's. A record torn by the kill fails its checksum and ends
the journal there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any

import torch

from .chunks.record import is_count, is_tag
from .errors import VecarcError, VerificationError

MAGIC = b"VECJ"
VERSION = 1
RECORD = struct.Struct("<4sBII")  # magic, kind, meta_len, blob_len
MAX_META = 64 << 20
MAX_BLOB = 1 << 30
HEADER, RESULT, STATE = 1, 2, 3


def journal_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".journal")


def identity(**parts: Any) -> str:
    """A hash of everything that decides the archive's bytes; resuming needs it to match."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _tensors_to_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous().cpu() for k, v in tensors.items()}) if tensors else b""


def _bytes_to_tensors(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(blob) if blob else {}


def _record(kind: int, meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> bytes:
    m = json.dumps(meta, separators=(",", ":")).encode()
    blob = _tensors_to_bytes(tensors or {})
    body = RECORD.pack(MAGIC, kind, len(m), len(blob)) + m + blob
    return body + hashlib.sha256(body).digest()


def _records(data: bytes) -> tuple[list[tuple[int, dict, dict, int]], int]:
    """Valid records from the start: (kind, meta, tensors, end offset); and where the valid part ends.

    Stops at the first record that is short, oversized or fails its checksum:
    that is where a kill tore the file.
    """
    out, pos = [], 0
    while pos + RECORD.size <= len(data):
        magic, kind, mlen, blen = RECORD.unpack_from(data, pos)
        end = pos + RECORD.size + mlen + blen + 32
        if magic != MAGIC or kind not in (HEADER, RESULT, STATE) or mlen > MAX_META or blen > MAX_BLOB:
            break
        if end > len(data) or hashlib.sha256(data[pos : end - 32]).digest() != data[end - 32 : end]:
            break
        start = pos + RECORD.size
        try:
            meta = json.loads(data[start : start + mlen])
            tensors = _bytes_to_tensors(data[start + mlen : start + mlen + blen])
        except Exception:  # a record that checks out but does not parse: a bug or tampering; stop here
            break
        out.append((kind, meta, tensors, end))
        pos = end
    return out, pos


def malformed(kind: int, meta: Any, tensors: dict) -> str | None:
    """Why a record cannot be what its kind says, or None. Results are checked as typed records by
    the ledger (vecarc.chunks.record); here, that every record is an object and every state is one
    the search could restore from, so a re-sealed journal ends in one line, never a KeyError."""
    if not isinstance(meta, dict):
        return "a record that is not an object"
    if kind != STATE:
        return None
    if not is_count(meta.get("step")):
        return "a snapshot without its step"
    if "slots" not in meta:
        return None  # a mark: the results before it are final
    slots, pending = meta.get("slots"), meta.get("pending")
    if not (isinstance(slots, list) and isinstance(pending, list) and all(is_tag(t) for t in pending)
            and all(is_count(meta.get(k)) for k in ("total", "done", "taken"))):
        return "a snapshot without its queue"
    if not all(isinstance(sl, dict) and _slot(sl) for sl in slots):
        return "a snapshot with a malformed slot"
    rows = {name: t.shape[0] if t.dim() == 3 and t.dtype == torch.float32 else -1 for name, t in tensors.items()}
    waiting = sum(sl.get("cand") is not None for sl in slots)
    if slots and (any(rows.get(name) != len(slots) for name in ("p", "m", "v")) or rows.get("q", 0) != waiting):
        return "a snapshot whose tensors do not match its slots"
    return None


def _number(x: Any) -> bool:
    return type(x) in (int, float)


def _slot(sl: dict) -> bool:
    cand = sl.get("cand")
    return (is_tag(sl.get("tag")) and is_count(sl.get("t")) and _number(sl.get("best")) and is_count(sl.get("best_t"))
            and type(sl.get("polish")) is bool and "search_steps" in sl
            and (sl["search_steps"] is None or is_count(sl["search_steps"]))
            and _number(sl.get("extra", 0.0)) and is_count(sl.get("decodes", 0))
            and (cand is None or (isinstance(cand, list) and len(cand) == 3 and all(map(_number, cand)))))


class Journal:
    """Append-only record of one pack. Create with `Journal.open`, then `start(identity)`.

    The file is opened without following symlinks and held under an exclusive lock for
    the whole pack, so a planted link cannot redirect it and a second pack writing the
    same output is refused instead of interleaving its records with ours.
    """

    def __init__(self, path: Path, resume: bool, fd: int):
        self.path = Path(path)
        self.resume = resume
        self._fd: int | None = fd
        self.results: list[tuple[dict, dict]] = []  # kept (meta, tensors) from a previous run
        self.state: dict | None = None  # cram state from the last snapshot

    @classmethod
    def open(cls, output: str | Path, resume: bool, force: bool) -> "Journal":
        """Take the journal (creating it empty), and refuse to start over silently on a previous pack's work."""
        path = journal_path(output)
        fd = _open_locked(path)
        try:
            if os.fstat(fd).st_size and not resume:
                if not force:
                    raise VecarcError(
                        f"{path} holds the work of an interrupted pack: add --resume to continue it, "
                        f"or -f to start over"
                    )
                os.ftruncate(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, resume, fd)

    @property
    def existed(self) -> bool:
        """Whether a previous run left work here (known once open)."""
        return os.fstat(self._fd).st_size > 0

    def start(self, ident: str) -> None:
        """Load what a previous run left (when resuming), cut the file after its last snapshot, append from there."""
        size = os.fstat(self._fd).st_size
        if self.resume and size:
            data = os.pread(self._fd, size, 0)
            recs, _ = _records(data)
            if not recs or recs[0][0] != HEADER:
                raise VecarcError(f"{self.path} is not a readable pack journal; remove it to start over")
            if (v := recs[0][1].get("version")) != VERSION:
                raise VecarcError(f"{self.path} is a version {v!r} pack journal and this vecarc reads version "
                                  f"{VERSION}; remove it to start over")
            if recs[0][1].get("identity") != ident:
                raise VecarcError(
                    f"{self.path} belongs to another pack (inputs, model, settings or plan differ); "
                    f"remove it, or pack with -f to start over"
                )
            last = max((i for i, r in enumerate(recs) if r[0] == STATE), default=0)
            keep = recs[: last + 1]
            for kind, meta, tensors, _ in keep[1:]:
                if (why := malformed(kind, meta, tensors)) is not None:
                    raise VerificationError(f"the journal {self.path} holds work that does not decode ({why}); "
                                            f"pack again with -f to start over")
            self.results = [(m, t) for k, m, t, _ in keep if k == RESULT]
            if last:
                self.state = {**recs[last][1], "tensors": recs[last][2]}
            os.ftruncate(self._fd, keep[-1][3])
            return
        os.ftruncate(self._fd, 0)
        self._append(_record(HEADER, {"version": VERSION, "identity": ident}))

    def _append(self, rec: bytes) -> None:
        end = os.fstat(self._fd).st_size
        view = memoryview(rec)
        while view:
            n = os.pwrite(self._fd, view, end)
            view, end = view[n:], end + n
        os.fsync(self._fd)

    def add_result(self, meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
        self._append(_record(RESULT, meta, tensors))

    def add_state(self, state: dict) -> None:
        tensors = state.pop("tensors", {})
        try:
            self._append(_record(STATE, state, tensors))
        finally:
            state["tensors"] = tensors

    def close(self) -> None:
        """Release the lock; an empty journal (nothing was started) is removed with it."""
        if self._fd is not None:
            if os.fstat(self._fd).st_size == 0:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """The archive is written: the journal has served its purpose (removed while still locked)."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
        self.close()


def _open_locked(path: Path) -> int:
    """Open or create the journal without following a symlink, and lock it against a second pack."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(3):
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:  # removed between the two calls: try creating again
                continue
            except OSError as e:
                if path.is_symlink():
                    raise VecarcError(f"{path} is a symlink; refusing to write a journal through it") from None
                raise VecarcError(f"cannot open the journal {path}: {e.strerror}") from None
        except FileNotFoundError:
            raise VecarcError(f"folder {path.parent} does not exist") from None
        except OSError as e:
            raise VecarcError(f"cannot create the journal {path}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise VecarcError(f"{path} is not a regular file; refusing to use it as a journal")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise VecarcError(f"another pack is writing {path} (the journal is locked); "
                              f"wait for it, or pack to another output") from None
        if os.fstat(fd).st_nlink == 0:  # the holder removed it just before we locked: start again
            os.close(fd)
            continue
        return fd
    raise VecarcError(f"cannot take the journal {path}: it keeps disappearing")


def count_records(path: str | Path) -> dict[str, int]:
    """How many valid records of each kind a journal holds (tests and `--verbose` use it)."""
    recs, _ = _records(Path(path).read_bytes())
    names = {HEADER: "header", RESULT: "results", STATE: "snapshots"}
    counts = {v: 0 for v in names.values()}
    for k, *_ in recs:
        counts[names[k]] += 1
    return counts
