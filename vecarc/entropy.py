"""How much a text surprises the model: the yardstick for vector capacity and for
the ideal coder that vecarc is compared against.

Cross-entropy here is teacher-forced, in nats, through the same forward pass that
cramming optimises (vecarc.forward), so "with vectors" and "without" differ only
in the memory vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .forward import teacher_forced
from .models import LoadedModel

LN2 = math.log(2)


@torch.no_grad()
def token_nll(
    lm: LoadedModel,
    chunks: Sequence[Sequence[int]],
    vectors: Sequence[torch.Tensor] | None = None,
    batch_size: int = 8,
) -> list[list[float]]:
    """Per-token nats of each chunk given [sink, its vectors (if any), preceding tokens]."""
    out: list[list[float]] = [[] for _ in chunks]
    for group, _, _, ce in teacher_forced(lm, chunks, vectors, batch_size):
        for r, i in enumerate(group):
            out[i] = ce[r, : len(chunks[i])].tolist()
    return out


def text_nll(lm: LoadedModel, ids: Sequence[int], window: int = 1024) -> list[float]:
    """Per-token nats of a whole text, read in windows of `window` tokens after the sink token."""
    window = min(window, lm.max_positions - 1)
    windows = [ids[i : i + window] for i in range(0, len(ids), window)]
    return [x for row in token_nll(lm, windows, batch_size=2) for x in row]


def bits(nats: float) -> float:
    return nats / LN2
