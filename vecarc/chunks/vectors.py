"""Vector chunks: memory vectors found per chunk by optimisation (vecarc.search).

A chunk is kept as a vector once the search's own greedy check gave its tokens back
with the margin; one that fails is split in halves while they are long enough, else
kept as literal tokens. The split halves join the running batch at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import PackConfig
from ..format import Archive, Chunk, token_hash
from ..models import LoadedModel
from ..plan import Plan, split_span
from ..search import CramResult, Job, chunk_key, cram
from .record import ChunkRecord, Dims, Hooks, Item, Settled, Tag, need

OUTCOMES = ("vector", "tokens", "split")  # what computing vector chunks settles as


def compute(lm: LoadedModel, cfg: PackConfig, items: Sequence[Item], on_record: Callable[[ChunkRecord], None],
            hooks: Hooks | None = None) -> None:
    """Search vectors for each chunk, in one continuous batch; on_record receives each fate (a split
    chunk's halves follow as chunks of their own). With hooks.resume, the search continues from its
    snapshot, where items must be the whole plan (the snapshot counts what it drew from it)."""
    hooks = hooks or Hooks()
    tokens = dict(items)

    def job(tag: Tag) -> Job:
        d, a, b = tag
        if tag not in tokens and hooks.rebuild is not None:
            tokens[tag] = hooks.rebuild(tag)
        return Job(tokens[tag], chunk_key(d, a, b), tag)

    def on_result(j: Job, r: CramResult) -> list[Job]:
        rec = fate(j.tag, r, cfg.min_chunk_tokens)
        on_record(rec)
        if rec.outcome != "split":
            return []
        d, a, b = j.tag
        halves = [(d, x, y) for x, y in split_span(a, b)]
        for h in halves:
            tokens[h] = j.tokens[h[1] - a : h[2] - a]
        return [job(h) for h in halves]

    jobs = (job(tag) for tag, _ in items)  # made as slots free up: a long input costs memory for the batch
    cram(lm, jobs, cfg.search, hooks.progress, on_result=on_result, resume=hooks.resume, rebuild=job,
         total=len(items), snapshot=hooks.final, snapshot_every=hooks.every, trace=hooks.trace)


def fate(tag: Tag, r: CramResult, min_chunk_tokens: int) -> ChunkRecord:
    """Keep a chunk the search verified (its greedy decode gave its tokens back, with the
    margin) as a vector; split one that failed while its halves are long enough, else keep
    its tokens."""
    if r.ok:
        # Informational, and rounded: each digit costs header bytes in every archive.
        return ChunkRecord(tag, "vector", margin=round(r.decode_margin, 2), steps=r.steps,
                           search_steps=r.search_steps if r.search_steps != r.steps else None,
                           vectors=r.vectors, coords=r.coords)
    _, a, b = tag
    return ChunkRecord(tag, "split" if b - a >= 2 * min_chunk_tokens else "tokens")


def settle(rec: ChunkRecord, plan: Plan, dims: Dims, replayed: bool) -> Settled:
    """The header entry of a vector chunk, with the nats the capacity plan gave it."""
    d, a, b = rec.tag
    need(rec.vectors is not None and tuple(rec.vectors.shape) == dims.vectors,
         f"a vector record's vectors are not {dims.vectors[0]} x {dims.vectors[1]}")
    coords = None if rec.coords is None else tuple(rec.coords.shape)
    need(coords == dims.coords, "a vector record's coordinates do not fit the rank")
    entry = Chunk(d, "vector", b - a, token_hash(plan.tokens[d][a:b]), margin=rec.margin, steps=rec.steps,
                  search_steps=rec.search_steps)
    if d in plan.nats:
        entry.planned_nats = round(sum(plan.nats[d][a:b]), 1)
    return Settled(entry, rec.vectors, rec.coords, replayed=replayed)


def greedy_jobs(archive: Archive, skip: set[int]) -> list[tuple[list[int], list, list | None]]:
    """The vector chunks to decode, each with its row of the vectors section as its prefix."""
    vec = [i for i, c in enumerate(archive.chunks) if c.kind == "vector" and i not in skip]
    return [(vec, [archive.row(archive.chunks[i]) for i in vec], None)] if vec else []


def finish(kept: dict) -> None:
    """Nothing to settle once all are in: each vector chunk was checked on its own."""
