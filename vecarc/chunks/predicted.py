"""Predicted chunks: the model's own greedy guesses, corrected where they go wrong.

A chunk is decoded from the sink token alone. Wherever greedy decoding would
choose another token, or the right one by less than the margin, the archive
stores a correction: the position, and the fewest low bits of the right token's
id that make it the best of the ids sharing those bits, by the margin
(format.corrections). Everywhere else the model's choice is kept. Every choice
the decoder makes, among all tokens or within a class, therefore led by the
margin when packed: as safe across machines as a vector chunk's tokens.

Why it is the default: on the default model ~60-70 % of English tokens need a
correction and a correction costs ~11 bits once range-coded, so a 4 KiB text
takes ~1 KB. A vector that makes 38 tokens exact costs 244 bytes, ~8 bytes per
token it fixes; a small vector added to a predicted chunk removed fewer
corrections than its own bytes would buy (docs/benchmarks.md, "Levers").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..config import PackConfig
from ..decode import DECODE_CELLS, greedy_margins, tokens_done
from ..events import emit
from ..format import Archive, Chunk, encode_tokens, greedy_cap, token_hash
from ..format import corrections as codec
from ..format.corrections import Correction, full_bits, token_correction
from ..forward import length_batches, logit_margins, teacher_forced
from ..models import LoadedModel
from ..plan import Plan
from .record import ChunkRecord, Dims, Hooks, Item, Settled, need

OUTCOMES = ("predicted", "tokens")  # what computing predicted chunks settles as
MAX_ROUNDS = 8  # greedy checks per chunk; each adds at least one correction, real chunks need one


def class_bits(logits: torch.Tensor, targets: torch.Tensor, margin: float, top: int) -> torch.Tensor:
    """Per row of logits (n, V), the fewest bits b for which targets[i] leads every other id with
    the same low b bits by `margin` (top, a class of one, always does)."""
    ids = torch.arange(logits.shape[-1], device=logits.device)
    own = logits.gather(1, targets[:, None])
    out = torch.full_like(targets, top)
    for b in range(top - 1, 0, -1):  # from the top down: a class that works keeps working with more bits
        same = ((ids ^ targets[:, None]) & ((1 << b) - 1)) == 0
        same.scatter_(1, targets[:, None], False)
        rival = logits.masked_fill(~same, -torch.inf).max(1, keepdim=True).values
        out = torch.where((own - rival)[:, 0] >= margin, b, out)
    return out


@torch.no_grad()
def teacher_corrections(lm: LoadedModel, chunks: Sequence[Sequence[int]], margin: float) -> list[list[Correction]]:
    """Corrections from one teacher-forced pass: every position whose token is not the model's
    choice by at least `margin`, each with the fewest bits that single the token out."""
    top = full_bits(lm.vocab_size)
    out: list[list[Correction]] = [[] for _ in chunks]
    for group, logits, targets, _ in teacher_forced(lm, chunks, batch_size=4):
        margins = logit_margins(logits, targets)
        for r, i in enumerate(group):
            n = len(chunks[i])
            where = (margins[r, :n] < margin).nonzero()[:, 0]
            bits = torch.cat([class_bits(logits[r, p], targets[r, p], margin, top) for p in where.split(256)]) \
                if len(where) else where
            out[i] = [(p, b, int(chunks[i][p]) & ((1 << b) - 1)) for p, b in zip(where.tolist(), bits.tolist())]
    return out


def checked_corrections(lm: LoadedModel, chunks: Sequence[Sequence[int]], corrections: list[list[Correction]],
                        margin: float, on_step: Callable[[int], None] | None = None) -> list[list[Correction] | None]:
    """The corrections, completed until real greedy decoding (the one unpack runs) gives every
    chunk back with `margin` at every position; None for a chunk that does not settle. A position
    the check finds short gets a correction of full bits (one token: nothing can outrank it).
    on_step(steps) follows the first check, which decodes every chunk (later ones, few, are not counted)."""
    out: list[list[Correction] | None] = [list(f) for f in corrections]
    todo = list(range(len(chunks)))
    for round_ in range(MAX_ROUNDS):
        if not todo:
            break
        empty = torch.zeros(len(todo), 0, lm.hidden_size)
        toks, marg = greedy_margins(lm, empty, [len(chunks[i]) for i in todo], corrections=[out[i] for i in todo],
                                    on_step=on_step if round_ == 0 else None)
        again = []
        for r, i in enumerate(todo):
            want = torch.tensor(list(chunks[i]))
            n = len(want)
            wrong = (toks[r, :n] != want).nonzero()[:, 0]
            upto = int(wrong[0]) if len(wrong) else n  # past the first wrong token the path is another text's
            add = set((marg[r, :upto] < margin).nonzero()[:, 0].tolist()) | ({upto} if upto < n else set())
            if add:
                have = {f[0]: f for f in out[i]}
                have.update((p, token_correction(p, int(want[p]), lm.vocab_size)) for p in add)
                out[i] = [have[p] for p in sorted(have)]
                again.append(i)
        todo = again
    for i in todo:
        out[i] = None
    return out


def compute(lm: LoadedModel, cfg: PackConfig, items: Sequence[Item], on_record: Callable[[ChunkRecord], None],
            hooks: Hooks | None = None) -> None:
    """Find and check the corrections of each chunk; on_record receives each chunk's fate.

    Chunks are taken in batches of like length (the greedy check is one batch per group);
    each batch's records are final once handed over (hooks.final marks them in the journal).
    """
    hooks = hooks or Hooks()
    done, base, all_tokens = 0, 0, sum(len(t) for _, t in items)
    for group in length_batches([len(t) for _, t in items], 64, DECODE_CELLS):
        toks = [items[i][1] for i in group]
        sizes = [len(t) for t in toks]
        step = None if hooks.progress is None else (lambda k, base=base, sizes=sizes: emit(
            hooks.progress, event="tokens", done=base + tokens_done(sizes, k), total=all_tokens))
        got = checked_corrections(lm, toks, teacher_corrections(lm, toks, cfg.margin), cfg.margin, step)
        base += sum(sizes)
        for i, t, corrections in zip(group, toks, got):
            on_record(fate(items[i][0], t, corrections))
        if hooks.final is not None:
            hooks.final({"step": 0})
        done += len(group)
        emit(hooks.progress, event="predict", done=done, total=hooks.total or len(items))


def fate(tag, tokens: Sequence[int], corrections: list[Correction] | None) -> ChunkRecord:
    """Keep a predicted chunk unless it did not settle, or its corrections would cost more
    than its tokens as a literal block (text the model does not know: code, tables, noise)."""
    if corrections is not None and len(codec.encode([corrections])) < len(encode_tokens(list(tokens))):
        return ChunkRecord(tag, "predicted", corrections=tuple(corrections))
    return ChunkRecord(tag, "tokens")


def settle(rec: ChunkRecord, plan: Plan, dims: Dims, replayed: bool) -> Settled:
    """The header entry of a predicted chunk; corrections a decoder could not follow are refused."""
    d, a, b = rec.tag
    corrections = list(rec.corrections or ())
    top, last = full_bits(dims.vocab_size), -1
    for pos, bits, value in corrections:
        need(last < pos < b - a and 1 <= bits <= top and value < min(1 << bits, dims.vocab_size),
             "a correction is out of order or out of range")
        last = pos
    tokens = plan.tokens[d][a:b]
    entry = Chunk(d, "predicted", b - a, token_hash(tokens), corrections=len(corrections))
    return Settled(entry, corrections=corrections, replayed=replayed)


def greedy_jobs(archive: Archive, skip: set[int]) -> list[tuple[list[int], list, list | None]]:
    """The predicted chunks to decode: an empty prefix each, and their corrections."""
    pred = [i for i, c in enumerate(archive.chunks) if c.kind == "predicted" and i not in skip]
    if not pred:
        return []
    empty = torch.zeros(0, archive.header.model.hidden_size)
    return [(pred, [empty] * len(pred), [archive.corrections.get(i, []) for i in pred])]


def finish(kept: dict[tuple[int, int], Settled]) -> None:
    """Make literal blocks of the most predictable predicted chunks while the archive would ask a
    reader to decode more tokens than its corrections' bytes allow (format.greedy_cap): a text the
    model knows almost by heart (zstd packs those well too)."""
    pred = sorted((k for k, v in kept.items() if v.record.kind == "predicted"),
                  key=lambda k: (kept[k].record.corrections / kept[k].record.tokens, k))
    while pred:
        corrections = [kept[k].corrections for k in sorted(pred) if kept[k].corrections]
        stored = len(codec.encode(corrections)) if corrections else 0
        over = sum(kept[k].record.tokens for k in pred) - greedy_cap(stored)
        if over <= 0:
            return
        while over > 0 and pred:  # the estimate ignores the bytes each demotion takes away; the loop re-measures
            k = pred.pop(0)
            over -= kept[k].record.tokens
            kept[k] = Settled(Chunk(k[0], "tokens", kept[k].record.tokens))
