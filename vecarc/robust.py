"""Would another machine decode the same tokens? Decoding under perturbed conditions.

Greedy decoding is exact only if every token's winning logit stays ahead of
the runner-up wherever the archive is read. Other CPUs, thread counts,
attention kernels or batch shapes change the last bits of every logit; pack
therefore demands a margin. This module measures how far those conditions
actually move the margins (drift, teacher-forced on the stored tokens) and
whether any chunk's greedy decode flips, so the margin can be chosen from
numbers and `verify --strict` can re-check an archive on the machine at hand.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .decode import decode_many
from .errors import first_line
from .format.corrections import Correction
from .forward import logit_margins, teacher_forced
from .models import LoadedModel

# Margins at which `stress` counts the chunks whose drift would reach them.
MARGIN_GRID = (0.01, 0.03, 0.1, 0.3, 0.5, 1.0)


@dataclass
class Condition:
    """One way another reader might decode. `binding`: a conforming fp32 decoder may do this,
    so a flip under it fails `verify --strict`; bf16 is reported only."""

    name: str
    threads: int | None = None
    attention: str | None = None
    dtype: torch.dtype = torch.float32
    batch_size: int = 64
    binding: bool = True


@dataclass
class ConditionReport:
    name: str
    binding: bool
    chunks: int
    flips: int  # chunks whose greedy decode differs from the stored tokens
    min_margin: float  # smallest greedy decode margin under this condition
    max_drift: float  # largest |margin change| of any token, teacher-forced
    drift: list[float] = field(default_factory=list)  # per chunk
    skipped: str | None = None  # why this model cannot run under the condition (then nothing was decoded)

    def reaching(self, margin: float) -> int:
        """Chunks that a margin this small would not protect against this condition."""
        return sum(d >= margin for d in self.drift)

    def as_dict(self) -> dict:
        return {"condition": self.name, "binding": self.binding, "chunks": self.chunks, "flips": self.flips,
                "min_margin": self.min_margin, "max_drift": self.max_drift,
                "chunks_drift_at_least": {str(m): self.reaching(m) for m in MARGIN_GRID}, "skipped": self.skipped}


def conditions(lm: LoadedModel) -> list[Condition]:
    """The perturbations this machine can try: another thread count, the other attention kernel,
    one chunk per batch, and a bf16 model."""
    threads = torch.get_num_threads()
    other_attn = "eager" if lm.attention != "eager" else "sdpa"
    return [
        Condition(f"threads {1 if threads > 1 else 2}", threads=1 if threads > 1 else 2),
        Condition(f"attention {other_attn}", attention=other_attn),
        Condition("batch 1", batch_size=1),
        Condition("bf16 model", dtype=torch.bfloat16, binding=False),
    ]


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _variant(lm: LoadedModel, c: Condition) -> Any:
    return lm.variant(c.dtype, c.attention)


@torch.no_grad()
def token_margins(
    lm: LoadedModel, vectors: Sequence[torch.Tensor], tokens: Sequence[list[int]], model: Any = None,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """Per-token margin (stored token's logit minus the best other), teacher-forced."""
    out: list[torch.Tensor] = [torch.zeros(0) for _ in tokens]
    for group, logits, targets, _ in teacher_forced(lm, tokens, vectors, batch_size, model):
        margin = logit_margins(logits, targets).cpu()
        for r, i in enumerate(group):
            out[i] = margin[r, : len(tokens[i])]
    return out


def stress(
    lm: LoadedModel, vectors: Sequence[torch.Tensor], tokens: Sequence[list[int]],
    which: Sequence[Condition] | None = None, progress=None, corrections: Sequence[Sequence[Correction]] | None = None,
) -> list[ConditionReport]:
    """Decode every chunk under each condition; count flips and measure margin drift.

    All vectors share one k (predicted chunks: (0, d), with their corrections in `corrections`);
    drift is measured where the model chooses, not where a correction supplies the token.
    """
    base = _chosen(token_margins(lm, vectors, tokens), corrections)
    lengths = [len(t) for t in tokens]
    reports = []
    for c in which if which is not None else conditions(lm):
        try:
            model = _variant(lm, c)
        except (ValueError, RuntimeError, NotImplementedError) as e:  # e.g. no eager or SDPA attention for it
            why = first_line(e)[:200]
            reports.append(ConditionReport(c.name, c.binding, 0, 0, float("inf"), 0.0, skipped=why))
            continue
        with _threads(c.threads):
            got, mins = decode_many(lm, list(vectors), lengths, batch_size=c.batch_size, model=model,
                                    corrections=corrections)
            moved = _chosen(token_margins(lm, vectors, tokens, model, batch_size=min(16, c.batch_size)), corrections)
        drift = [float((a - b).abs().max()) if len(a) else 0.0 for a, b in zip(base, moved)]
        flips = sum(g != t for g, t in zip(got, tokens))
        reports.append(ConditionReport(c.name, c.binding, len(tokens), flips, min(mins, default=float("inf")),
                                       max(drift, default=0.0), drift))
        if progress is not None:
            progress({"event": "stress", "condition": c.name, "flips": flips})
    return reports


def _chosen(margins: list[torch.Tensor], corrections: Sequence[Sequence[Correction]] | None) -> list[torch.Tensor]:
    """Margins with the corrected positions zeroed: no decoder reads the model's choice there."""
    if corrections is None:
        return margins
    out = []
    for m, row in zip(margins, corrections):
        m = m.clone()
        m[[f[0] for f in row]] = 0.0
        out.append(m)
    return out


def combine(parts: Sequence[Sequence[ConditionReport]]) -> list[ConditionReport]:
    """One report per condition from stress runs over disjoint sets of chunks."""
    out = []
    for same in zip(*parts):
        ran = [r for r in same if r.skipped is None]
        first = same[0]
        if not ran:
            out.append(first)
            continue
        out.append(ConditionReport(first.name, first.binding, sum(r.chunks for r in ran), sum(r.flips for r in ran),
                                   min(r.min_margin for r in ran), max(r.max_drift for r in ran),
                                   [d for r in ran for d in r.drift]))
    return out
