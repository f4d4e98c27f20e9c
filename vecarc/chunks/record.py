"""A chunk's fate as pack settles it: the journal's record, the Ray engine's reply, the ledger's entry.

A `ChunkRecord` is what computing a chunk yields, in a form that is small and plain
(numbers, corrections, a few tensors), so it can be journaled and sent between
processes; `from_journal` trusts nothing it reads. A `Settled` chunk is a record
made into the header entry it will have in the archive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import VecarcError
from ..events import Progress, Trace
from ..format import Chunk, is_number
from ..format.corrections import Correction

Tag = tuple[int, int, int]  # (document, start, end) in token offsets
# split: a vector chunk that failed, computed again as halves
OUTCOMES = ("vector", "predicted", "coded", "tokens", "split")


@dataclass(frozen=True)
class ChunkRecord:
    tag: Tag
    outcome: str  # one of OUTCOMES
    margin: float | None = None  # vector: the greedy decode's smallest margin (rounded: header bytes)
    steps: int | None = None  # vector: optimisation steps
    search_steps: int | None = None  # vector: of those, on the search model (when fewer)
    corrections: tuple[Correction, ...] | None = None  # predicted
    vectors: torch.Tensor | None = None  # vector: (k, d) as decoded
    coords: torch.Tensor | None = None  # vector, low rank: (k, r) as stored
    stream: bytes | None = None  # coded: the range-coded tokens

    def to_journal(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(meta, tensors) as docs/format.md ("Pack journal") lays a result record out."""
        info: dict[str, Any] | None = None
        if self.outcome == "vector":
            info = {"margin": self.margin, "steps": self.steps}
            if self.search_steps is not None:
                info["search_steps"] = self.search_steps
        elif self.outcome == "predicted":
            info = {"corrections": [list(f) for f in self.corrections or ()]}
        elif self.outcome == "coded":
            info = {"stream": (self.stream or b"").hex()}
        tensors = {}
        if self.vectors is not None:
            tensors["v"] = self.vectors
            if self.coords is not None:
                tensors["z"] = self.coords
        return {"tag": list(self.tag), "outcome": self.outcome, "info": info}, tensors

    @classmethod
    def from_journal(cls, meta: Any, tensors: Any) -> ChunkRecord:
        """A record read back (a journal, a worker's reply), refused with VecarcError unless well-formed."""
        need(isinstance(meta, dict) and isinstance(tensors, dict), "a result record is not an object")
        tag, outcome, info = meta.get("tag"), meta.get("outcome"), meta.get("info")
        need(is_tag(tag), "a result record's tag is not (document, start, end)")
        need(outcome in OUTCOMES, f"unknown outcome {outcome!r}")
        tag = (tag[0], tag[1], tag[2])
        if outcome == "vector":
            return cls._vector(tag, info, tensors)
        if outcome == "predicted":
            need(isinstance(info, dict) and isinstance(info.get("corrections"), list), "corrections missing")
            corrections = info["corrections"]
            need(all(isinstance(f, list) and len(f) == 3 and all(is_count(x) for x in f) for f in corrections),
                 "a correction is not (position, bits, value)")
            return cls(tag, outcome, corrections=tuple((f[0], f[1], f[2]) for f in corrections))
        if outcome == "coded":
            stream = info.get("stream") if isinstance(info, dict) else None
            need(isinstance(stream, str) and len(stream) % 2 == 0 and all(c in "0123456789abcdef" for c in stream),
                 "a coded record lacks its stream")
            return cls(tag, outcome, stream=bytes.fromhex(stream))
        return cls(tag, outcome)

    @classmethod
    def _vector(cls, tag: Tag, info: Any, tensors: dict) -> ChunkRecord:
        need(isinstance(info, dict) and is_number(info.get("margin")) and is_count(info.get("steps")),
             "a vector record lacks its margin or steps")
        search = info.get("search_steps")
        need(search is None or is_count(search), "a vector record's search_steps is not a count")
        v, z = tensors.get("v"), tensors.get("z")
        need(isinstance(v, torch.Tensor) and v.dim() == 2 and v.dtype.is_floating_point,
             "a vector record lacks its vectors")
        need(z is None or (isinstance(z, torch.Tensor) and z.dim() == 2 and z.dtype.is_floating_point),
             "a vector record's coordinates are malformed")
        return cls(tag, "vector", margin=float(info["margin"]), steps=info["steps"], search_steps=search,
                   vectors=v, coords=z)


@dataclass(frozen=True)
class Dims:
    """What a record must fit: the vocabulary, and the shape of one chunk's vectors (and coordinates)."""

    vocab_size: int
    vectors: tuple[int, int]  # (per chunk, hidden size)
    coords: tuple[int, int] | None = None  # (per chunk, rank) when low-rank


@dataclass
class Settled:
    """A chunk kept in the archive: its header entry and what its sections will hold."""

    record: Chunk
    vectors: torch.Tensor | None = None
    coords: torch.Tensor | None = None
    corrections: list[Correction] | None = None  # predicted chunks
    stream: bytes | None = None  # coded chunks
    replayed: bool = False  # restored from a journal or a worker: decoded again before anything is written


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise VecarcError(msg)


def is_count(x: Any) -> bool:
    """A JSON int that counts something: no bool, no float, not negative, not absurd."""
    return type(x) is int and 0 <= x < 1 << 62


def is_tag(t: Any) -> bool:
    """A chunk's tag as JSON holds it: [document, start, end], start < end."""
    return isinstance(t, list) and len(t) == 3 and all(is_count(x) for x in t) and t[1] < t[2]



Item = tuple[Tag, Sequence[int]]  # a chunk to compute: its tag and its tokens


@dataclass
class Hooks:
    """What a pack hands the code computing its chunks, besides the chunks themselves."""

    progress: Progress | None = None
    total: int = 0  # chunks planned in all: predicted chunks' progress counts against it (a search counts its own)
    # The records handed over so far are final: journal this state (a mark, or the search's snapshot).
    final: Callable[[dict], None] | None = None
    every: float = 60.0  # seconds between snapshots of a long search
    resume: dict | None = None  # the search's snapshot to continue from
    rebuild: Callable[[Tag], Sequence[int]] | None = None  # a tag's tokens (a resumed search's halves)
    trace: Trace | None = None
