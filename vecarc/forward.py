"""The float model's teacher-forced pass: logits for every position of many chunks at once.

Cramming optimises through it, predicted chunks find their corrections with it, and
the entropy yardstick measures with it, so "with vectors" and "without" differ only
in the prefix. Input to the model is [sink, mem_1..mem_k, t_1..t_{n-1}]; the logits
at mem_k .. t_{n-1} predict t_1..t_n.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .models import LoadedModel


def length_batches(lengths: Sequence[int], batch_size: int, max_cells: int | None = None) -> Iterator[list[int]]:
    """Indices of non-empty rows, shortest first, in batches: rows of like length pad least.

    max_cells bounds rows x longest row, so a batch's memory (a KV cache, say) follows its
    tokens, not its row count.
    """
    group: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if not lengths[i]:
            continue
        if group and (len(group) == batch_size or (max_cells and (len(group) + 1) * lengths[i] > max_cells)):
            yield group
            group = []
        group.append(i)
    if group:
        yield group


def chunk_forward(
    lm: LoadedModel,
    prefix: torch.Tensor,
    text_embs: Sequence[torch.Tensor],
    tokens: Sequence[torch.Tensor],
    model: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced pass over [sink, prefix, text] for a batch of chunks.

    prefix: (B, k, d) float32 memory vectors (k may be 0). Chunks are right-padded,
    which needs no attention mask in a causal model. Returns logits (B, n_max, V)
    for the positions that predict the text, targets (-100 on padding) and
    per-token cross-entropy in nats. `model` defaults to lm.model (float32).
    """
    model = lm.model if model is None else model
    emb = lm.model.get_input_embeddings()
    B, k, d = prefix.shape
    dev = prefix.device
    maxn = max(len(t) for t in tokens)
    text = torch.zeros(B, maxn - 1, d, device=dev)
    targets = torch.full((B, maxn), -100, dtype=torch.long, device=dev)
    for r, (e, t) in enumerate(zip(text_embs, tokens)):
        text[r, : len(t) - 1] = e
        targets[r, : len(t)] = t
    sink = emb(torch.tensor([lm.sink_id], device=dev))[0].detach().to(torch.float32)
    x = torch.cat([sink.expand(B, 1, d), prefix, text], dim=1).to(model.dtype)
    # Logits for every position, then slice: keeping only the last n made the head
    # a broadcast bmm that copied the whole output matrix per row in bf16.
    # Cross-entropy over contiguous (position, vocabulary) rows: the transposed (B, V, n)
    # layout made log-softmax and its backward stride across memory, 2.3x slower on the CPU.
    logits = model(inputs_embeds=x, use_cache=False).logits[:, k:].float().contiguous()
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100, reduction="none")
    return logits, targets, ce.view(B, maxn)


def teacher_forced(
    lm: LoadedModel, chunks: Sequence[Sequence[int]], vectors: Sequence[torch.Tensor] | None = None,
    batch_size: int = 8, model: Any = None,
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]]:
    """chunk_forward over many chunks, in batches of like length: (indices, logits, targets, ce) per batch.

    vectors[i] (k, d) go before chunk i; None: none (the sink alone). Callers choose no_grad.
    """
    emb = lm.model.get_input_embeddings()
    for group in length_batches([len(c) for c in chunks], batch_size):
        toks = [torch.tensor(list(chunks[i]), dtype=torch.long, device=lm.device) for i in group]
        if vectors is None:
            prefix = torch.zeros(len(group), 0, lm.hidden_size, device=lm.device)
        else:
            prefix = torch.stack([vectors[i] for i in group]).to(lm.device, torch.float32)
        yield (group, *chunk_forward(lm, prefix, [emb(t[:-1]).float() for t in toks], toks, model))


@torch.no_grad()
def logit_margins(logits: torch.Tensor, targets: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """Per position: the target's logit minus the best other one (meaningless where targets are -100).

    scratch=True lets it overwrite `logits` instead of copying them (a copy of the
    vocabulary-sized tensor is a noticeable part of a step).
    """
    tgt = targets.clamp(min=0)[..., None]
    correct = logits.gather(2, tgt).squeeze(2)
    other = (logits.scatter_ if scratch else logits.scatter)(2, tgt, float("-inf")).amax(2)
    return correct - other
