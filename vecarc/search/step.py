"""One optimisation step for a group of chunks: the teacher-forced pass, its margins, and Adam.

Input to the frozen model is [sink, mem_1..mem_k, t_1..t_{n-1}]; the logits at
mem_k .. t_{n-1} must predict t_1..t_n. Only the k vectors are trained.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..format import basis
from ..format.quant import quantize
from ..models import LoadedModel, length_batches
from .settings import CramSettings


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


GROUP_COST = 96  # a group step's fixed cost in (rows x positions): one bf16 row of ~50 costs 0.26 s, four 0.35 s


def by_length(rows: Sequence[int], lengths: Sequence[int], fixed: int = GROUP_COST) -> list[list[int]]:
    """Split rows into groups of similar length, to pay for padding or for another pass, whichever is less.

    A batch is right-padded to its longest row, and every padded position costs as much as a
    real one; with the capacity plan, chunk lengths in one batch differ by 3x. Each group costs
    fixed + rows x longest; the best split of the rows sorted by length is a small dynamic program.
    """
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            c = best[i] + fixed + (j - i) * lengths[order[j - 1]]
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(sorted(rows[x] for x in order[cut[j] : j]))
        j = cut[j]
    return groups[::-1]


@dataclass
class RowStep:
    """What one step saw for one chunk, and the gradient for its parameters."""

    values: torch.Tensor  # the rounded values evaluated (what would be stored)
    margin: float  # min teacher-forced margin over the chunk
    accuracy: float
    loss: float
    grad: torch.Tensor


def group_step(lm: LoadedModel, model: Any, params: Sequence[torch.Tensor], texts: Sequence[torch.Tensor],
               tokens: Sequence[torch.Tensor], s: CramSettings) -> list[RowStep]:
    """One forward/backward for some rows, on `model`."""
    p = torch.stack(list(params)).requires_grad_(True)
    # Straight-through rounding: the model sees exactly what will be stored.
    q = p + (quantize(p, s.vector_dtype) - p).detach()
    full = basis.expand(q, lm.hidden_size, s.basis_seed) if s.rank else q
    logits, targets, ce = chunk_forward(lm, full, texts, tokens, model)
    valid = targets != -100
    lengths = valid.sum(1)
    row_loss = ce.sum(1) / lengths
    row_loss.sum().backward()
    with torch.no_grad():
        margin = logit_margins(logits, targets, scratch=True).masked_fill(~valid, float("inf"))
        row_margin = margin.amin(1).tolist()
        row_acc = (((margin > 0) & valid).sum(1) / lengths).tolist()
        row_loss_l = row_loss.tolist()
    qd = q.detach()
    return [RowStep(qd[r], row_margin[r], row_acc[r], row_loss_l[r], p.grad[r]) for r in range(len(params))]


class Adam:
    """Adam for one chunk's parameters, with its own step count, so chunks can join and leave a batch."""

    def __init__(self, p: torch.Tensor, s: CramSettings):
        self.p, self.m, self.v = p, torch.zeros_like(p), torch.zeros_like(p)
        self.b1, self.b2, self.lr = s.beta1, s.beta2, s.step_size

    @torch.no_grad()
    def update(self, g: torch.Tensor, t: int) -> None:
        self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        mhat = self.m / (1 - self.b1**t)
        vhat = self.v / (1 - self.b2**t)
        self.p.sub_(self.lr * mhat / (vhat.sqrt() + 1e-8))
