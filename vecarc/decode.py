"""Greedy decoding from memory vectors: the only way tokens come back.

Pack verifies every chunk with this very function, so what unpack runs is
what was checked. Chunks are decoded as a batch with a KV cache; all rows
share the prefix [sink, mem_1..mem_k], so no padding is needed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

from .format.corrections import Correction
from .forward import length_batches
from .models import LoadedModel

DECODE_CELLS = 1 << 15  # rows x tokens per greedy batch: 64 rows of 512, or 4 of 8,192 (the KV cache follows it)


def _cache_arg(model) -> str:
    # transformers 5.x renamed past_key_values to cache; accept both.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


STEP_EVERY = 16  # greedy steps between two progress reports: often enough to move, rarely enough to cost nothing


def tokens_done(lengths: Sequence[int], steps: int) -> int:
    """Tokens decoded after `steps` greedy steps of a batch of rows of these lengths."""
    return sum(min(steps, n) for n in lengths)


@torch.no_grad()
def greedy_decode(
    lm: LoadedModel, vectors: torch.Tensor, lengths: Sequence[int], model=None,
    corrections: Sequence[Sequence[Correction]] | None = None, on_step: Callable[[int], None] | None = None,
) -> tuple[list[list[int]], list[float]]:
    """Decode lengths[i] tokens from vectors[i] (shape (B, k, d); k = 0 for predicted chunks).

    Returns the tokens and, per row, the smallest margin between the chosen
    token's logit and the runner-up (within its class where corrections[i] holds a
    correction): how close decoding came to flipping.
    `model` (default lm.model) lets `verify --strict` decode on a variant.
    """
    toks, marg = greedy_margins(lm, vectors, lengths, model, corrections, on_step)
    rows = [toks[r, : lengths[r]].tolist() for r in range(len(lengths))]
    mins = [float(marg[r, : lengths[r]].min()) if lengths[r] else float("inf") for r in range(len(lengths))]
    return rows, mins


@torch.no_grad()
def greedy_margins(
    lm: LoadedModel, vectors: torch.Tensor, lengths: Sequence[int], model=None,
    corrections: Sequence[Sequence[Correction]] | None = None, on_step: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, n) and per-position margins: the winner's lead over the runner-up, among all
    tokens where the model chooses and within the class where a correction names one."""
    model, dev = (lm.model if model is None else model), lm.device
    emb = model.get_input_embeddings()
    B, k, d = vectors.shape
    maxn = max(lengths)
    bits = torch.zeros((B, maxn), dtype=torch.long)  # 0: the model chooses
    value = torch.zeros((B, maxn), dtype=torch.long)
    for r, row in enumerate(corrections or ()):
        for pos, b, v in row:
            bits[r, pos], value[r, pos] = b, v
    corrected = bits.any(0).tolist()  # per step, on the host: no device sync inside the loop
    bits, value = bits.to(dev), value.to(dev)
    ids = None
    sink = emb(torch.tensor([lm.sink_id], device=dev))[0]  # as the model embeds that token (some scale it)
    x = torch.cat([sink.expand(B, 1, d), vectors.to(dev, emb.weight.dtype)], dim=1)
    arg = _cache_arg(model)
    out = model(inputs_embeds=x, use_cache=True)
    past = getattr(out, arg)
    tokens: list[torch.Tensor] = []
    margins: list[torch.Tensor] = []
    logits = out.logits[:, -1].float()
    for i in range(maxn):
        if corrected[i]:  # a correction: the best token of its class (format.corrections)
            if ids is None:
                ids = torch.arange(logits.shape[-1], device=dev)
            low = (1 << bits[:, i, None]) - 1
            logits = logits.masked_fill((ids & low) != (value[:, i, None] & low), -torch.inf)
        top = logits.topk(2, dim=-1).values
        nxt = logits.argmax(-1)
        tokens.append(nxt)
        if on_step is not None and ((i + 1) % STEP_EVERY == 0 or i + 1 == maxn):
            on_step(i + 1)  # steps taken: what a progress bar counts
        margins.append(top[:, 0] - top[:, 1])  # -inf runner-up: a class of one token, inf
        if i + 1 == maxn:
            break
        out = model(input_ids=nxt[:, None], use_cache=True, **{arg: past})
        past = getattr(out, arg)
        logits = out.logits[:, -1].float()
    return torch.stack(tokens, 1).cpu(), torch.stack(margins, 1).cpu()


def decode_many(
    lm: LoadedModel,
    vectors: Sequence[torch.Tensor],
    lengths: Sequence[int],
    batch_size: int = 64,
    progress=None,
    model=None,
    max_cells: int = DECODE_CELLS,
    corrections: Sequence[Sequence[Correction]] | None = None,
) -> tuple[list[list[int]], list[float]]:
    """Decode many chunks, grouping those of similar length into batches of at most max_cells row-tokens.

    All vectors must have the same k (predicted chunks: (0, d) each); corrections[i] are chunk i's corrections.
    """
    tokens: list[list[int]] = [[] for _ in lengths]
    margins: list[float] = [float("inf")] * len(lengths)
    done, total, base, all_tokens = 0, sum(1 for n in lengths if n), 0, sum(lengths)
    for group in length_batches(lengths, batch_size, max_cells):
        vec = torch.stack([vectors[i] for i in group])
        sizes = [lengths[i] for i in group]
        step = None if progress is None else (lambda k, base=base, sizes=sizes: progress(
            {"event": "tokens", "done": base + tokens_done(sizes, k), "total": all_tokens}))
        rows, mins = greedy_decode(lm, vec, sizes, model,
                                   [corrections[i] for i in group] if corrections is not None else None, step)
        for i, r, m in zip(group, rows, mins):
            tokens[i], margins[i] = r, m
        done, base = done + len(group), base + sum(sizes)
        if progress is not None:
            progress({"event": "decode", "done": done, "total": total})
    return tokens, margins
