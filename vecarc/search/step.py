"""One optimisation step for a group of chunks: the teacher-forced pass (vecarc.forward), its
margins, and Adam. Only the k memory vectors are trained; the model stays frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..format import basis
from ..format.quant import quantize
from ..forward import chunk_forward, logit_margins
from ..models import LoadedModel
from .settings import SearchSettings

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
               tokens: Sequence[torch.Tensor], s: SearchSettings) -> list[RowStep]:
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

    def __init__(self, p: torch.Tensor, s: SearchSettings):
        self.p, self.m, self.v = p, torch.zeros_like(p), torch.zeros_like(p)
        self.b1, self.b2, self.lr = s.beta1, s.beta2, s.step_size

    @torch.no_grad()
    def update(self, g: torch.Tensor, t: int) -> None:
        self.m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        mhat = self.m / (1 - self.b1**t)
        vhat = self.v / (1 - self.b2**t)
        self.p.sub_(self.lr * mhat / (vhat.sqrt() + 1e-8))
