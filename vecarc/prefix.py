"""A per-archive prefix (pack --learn-prefix K): memory vectors learnt on the archive's own text and
stored in it (format 5, flag bit 3), kept only where the archive comes out smaller, their own bytes
included.

A dictionary is paid for once across a corpus; a prefix is paid for by its archive alone, so it
pays only on large ones: a vector of the default model costs ~580 bytes (int8, one multiplier),
and vectors were measured to remove a few per cent of a text's coded bytes. Pack therefore trains
only where PAYS of the coded bytes would repay the vectors, then packs the documents again after
them and keeps whichever archive is smaller: a prefix never makes an archive larger.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import dictionary as dictionaries
from .config import PackConfig
from .events import emit
from .format.compact import MAX_PREFIX_MULT, Prefix
from .models import LoadedModel

PAYS = 0.10  # the most a few vectors were measured to remove from coded bytes (docs/benchmarks.md)
STEPS = 60  # optimiser steps: the vectors see the archive's own chunks


def quantise(q16: torch.Tensor, plain_bytes: int) -> Prefix | None:
    """Q16 vectors (k, d) as int8 values times one multiplier per vector (the smallest that fits); None
    where a vector is too large for format 5's multipliers."""
    mults = [max(1, -(-int(top) // 127)) for top in q16.abs().amax(1)]
    if max(mults) > MAX_PREFIX_MULT:
        return None
    q = torch.stack([torch.round(row.double() / m).clamp(-127, 127) for row, m in zip(q16, mults)]).to(torch.int8)
    return Prefix(q.numpy().tobytes(), tuple(mults), int(q16.shape[1]), plain_bytes)


def stored_bytes(count: int, hidden: int) -> int:
    """What `count` vectors cost in format 5 (int8 values, a varint multiplier each; a bound)."""
    return count * (hidden + 3) + 4


def choose(docs: Sequence[tuple[str, bytes]], lm: LoadedModel, cfg: PackConfig, plain, progress=None):
    """`plain` (a PackResult of docs), or the documents packed again after vectors learnt on them,
    whichever is smaller."""
    from .packing import pack_documents

    k, coded = cfg.learn_prefix, sum(len(b) for i, b in plain.archive.literals.items()
                                      if plain.archive.chunks[i].kind == "coded")
    cost = stored_bytes(k, lm.hidden_size)
    if PAYS * coded <= cost:
        emit(progress, event="note", message=f"--learn-prefix: {coded:,} coded bytes cannot repay {k} vectors "
                                             f"({cost:,} bytes); packed without them")
        return plain
    chunks = [c for c in dictionaries.chunks_of(lm, [b for _, b in docs], cfg.chunk_size(lm)) if len(c) >= 2]
    emit(progress, event="note", message=f"--learn-prefix: learning {k} vectors on {len(chunks)} chunks")
    d = dictionaries.of(lm)
    q16 = dictionaries.fit(lm, chunks, dictionaries.TrainConfig(vectors=k, steps=STEPS), progress,
                           after=None if d is None else d.vectors)
    own = quantise(q16, len(plain.data))
    if own is None:
        emit(progress, event="note", message="--learn-prefix: the vectors learnt are too large to store; "
                                             "packed without them")
        return plain
    r = pack_documents(docs, dictionaries.attach(lm, dictionaries.of(lm), own), cfg, progress=progress,
                       stored_as=plain.archive.header.stored_as)
    if len(r.data) < len(plain.data):
        emit(progress, event="note", message=f"--learn-prefix: {k} vectors saved {len(plain.data) - len(r.data):,} "
                                             f"bytes, their own included")
        return r
    emit(progress, event="note", message=f"--learn-prefix: {k} vectors did not pay ({len(r.data):,} bytes against "
                                         f"{len(plain.data):,}); packed without them")
    return plain
