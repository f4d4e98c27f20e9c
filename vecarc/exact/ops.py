"""Integer tensor operations whose results do not depend on the machine.

Everything is int64 arithmetic (exact, so any evaluation order gives the same
integers) or a matmul of small integers that is exact whatever the kernel does:
int8 x int8 into int32 (`torch._int_mm`), or float64 products of integers whose
every partial sum stays below 2^53. The bounds are stated where they are relied on.
"""

from __future__ import annotations

import torch

from .tables import LOG2E_Q24

A_BITS = 15  # activations enter matmuls as |a| <= A_MAX: a high and a low int8 half
A_MAX = 32639  # the largest a whose halves (a - lo) / 256 and lo both fit in int8


def shift_round(x: torch.Tensor, n: int | torch.Tensor) -> torch.Tensor:
    """x / 2^n rounded half up, n >= 0 (or a tensor of such shifts that broadcasts against x)."""
    return (x + (1 << n >> 1)) >> n


def round_div(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """x / d rounded half up, d > 0."""
    return torch.div(2 * x + d, 2 * d, rounding_mode="floor")


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Bits of non-negative int64 values: frexp's exponent of the binary64 value, less one where
    rounding to binary64 carried the value up to the next power of two."""
    e = torch.frexp(x.double())[1].to(torch.int64)
    return torch.where((e > 0) & ((1 << (e - 1).clamp(min=0)) > x), e - 1, e)


def quantise_rows(x: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row (or each of `groups` equal parts of it) as a * 2^s with |a| <= A_MAX; returns (a, s),
    s shaped like the rows (with a last axis of `groups` when there are several).

    s is the fewest right shifts that bring the row's largest value under 2^15, so a row's
    scale depends on that row alone: a token's activations quantise the same in any batch.
    """
    shape = x.shape
    g = x.reshape(*shape[:-1], groups, shape[-1] // groups)
    top = g.abs().amax(-1, keepdim=True)
    s = (bit_length(top) - A_BITS).clamp(min=0)
    a = shift_round(g, s).clamp_(-A_MAX, A_MAX)
    s = s.squeeze(-1)
    return a.reshape(shape), s.squeeze(-1) if groups == 1 else s


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) for 0 <= n < 2^62: a binary64 estimate, within one of the answer (its error is
    below 2^-21 at these sizes), then made exact."""
    r = torch.sqrt(n.double()).floor().to(torch.int64)
    r = torch.where(r * r > n, r - 1, r)
    return torch.where((r + 1) * (r + 1) <= n, r + 1, r)


def int_matmul(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a @ w.T exactly, as int64: a (M, K) int64 with |a| <= A_MAX, w (N, K) int8.

    a splits into int8 halves, a = 256 hi + lo, stacked into one int8 x int8 -> int32 product:
    every partial sum is below 128 * 128 * K < 2^31 for K < 2^17, so the product is exact in any
    order. Where `torch._int_mm` cannot run, float64 computes the same integers (sums below 2^53).
    """
    lo = ((a + 128) & 255) - 128
    hi = (a - lo) >> 8
    m = a.shape[0]
    both = torch.cat([hi, lo]).to(torch.int8)
    try:
        rows = both if both.shape[0] > 16 or both.device.type == "cpu" else torch.cat(
            [both, both.new_zeros(17 - both.shape[0], both.shape[1])])
        out = torch._int_mm(rows, w.t())[: 2 * m].to(torch.int64)
    except RuntimeError:
        out = (both.double() @ w.double().t()).to(torch.int64)
    return out[:m] * 256 + out[m:]


X_CLAMP = 1 << 21  # e^-32 is 0 in Q30: larger arguments change nothing


def exp_neg(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """e^(-x) for x >= 0 in Q16, from a pinned table: EXP[(min(x, 2^21) * LOG2E_Q24) >> 30]."""
    return table[(x.clamp(max=X_CLAMP) * LOG2E_Q24) >> 30]

