"""The integer model's constants and tables, computed in exact integer arithmetic.

Each entry is defined as the rounding of a real number (docs/format.md, "Integer
model"), so any implementation with enough precision builds the same integers. Here
they come from series in 128-bit fixed point; a value within 2^-64 of a rounding tie
would make that definition fragile, and building refuses it rather than guess.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache, lru_cache

import torch

P = 128  # fractional bits of the exact computations
ONE = 1 << P
ROPE_BITS = 24  # cos/sin tables: Q24


def _series(x: int, step) -> int:
    """Sum of a series whose terms step(k, term) shrink to zero, in P-bit fixed point."""
    total, term, k = 0, x, 0
    while term:
        total += term
        k += 1
        term = step(k, term)
    return total


def _atanh_inv(n: int) -> int:
    """atanh(1/n) = sum 1/((2k+1) n^(2k+1)), in P-bit fixed point."""
    total, power, k = 0, ONE // n, 0
    while power:
        total += power // (2 * k + 1)
        power //= n * n
        k += 1
    return total


def _atan_inv(n: int) -> int:
    total, power, k = 0, ONE // n, 0
    while power:
        total += (-1) ** k * (power // (2 * k + 1))
        power //= n * n
        k += 1
    return total


LN2 = 2 * _atanh_inv(3)
PI = 16 * _atan_inv(5) - 4 * _atan_inv(239)


def _mul(a: int, b: int) -> int:
    return (a * b) >> P


def exp_fixed(x: int) -> int:
    """e^x for x in P-bit fixed point: x = k ln2 + r with |r| <= ln2/2, then Taylor."""
    k = (x + LN2 // 2) // LN2
    r = x - k * LN2
    total, term, n = ONE, ONE, 1
    while term:
        term = _mul(term, r) // n
        total += term
        n += 1
    return total << k if k >= 0 else total >> -k


def ln_fixed(q: Fraction) -> int:
    """ln q for a positive rational, P-bit fixed point: q = 2^e y with y in [1, 2), ln y = 2 atanh((y-1)/(y+1))."""
    e = q.numerator.bit_length() - q.denominator.bit_length()
    y = q / Fraction(2) ** e
    if y < 1:
        y, e = y * 2, e - 1
    z = ((y - 1) / (y + 1) * ONE).__floor__()
    z2 = _mul(z, z)
    total, power, k = 0, z, 0
    while power:
        total += power // (2 * k + 1)
        power = _mul(power, z2)
        k += 1
    return e * LN2 + 2 * total


def _round(value: int, bits: int) -> int:
    """round(value / 2^(P-bits)) of a P-bit fixed-point value, refusing near-ties."""
    shift = P - bits
    frac = value & ((1 << shift) - 1)
    if abs(frac - (1 << (shift - 1))) < (1 << (shift - 64)):
        raise ArithmeticError("a table entry lies too close to a rounding tie to be defined by this precision")
    return (value + (1 << (shift - 1))) >> shift


LOG2E_Q24 = _round((ONE << P) // LN2, 24)  # round(2^24 / ln 2)
EXP_STEPS = 1024  # exp tables step by 2^(-1/1024)
EXP_SIZE = 1 << 16


@cache
def exp_table(bits: int) -> torch.Tensor:
    """EXP[i] = round(2^bits * 2^(-i/1024)) for i < 2^16 (0 where that rounds to nothing): e^-x for
    x >= 0 in Q16 is EXP[(x * LOG2E_Q24) >> 30], 2^(-1/1024) steps (0.07 %)."""
    step = exp_fixed(-LN2 // EXP_STEPS)
    out, v = [], ONE
    while v >> (P - bits - 1) and len(out) < EXP_SIZE:
        out.append(_round(v, bits))
        v = _mul(v, step)
    return torch.tensor(out + [0] * (EXP_SIZE - len(out)), dtype=torch.int64)


@lru_cache(maxsize=8)
def rope_tables(theta: Fraction, head_dim: int, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """COS[p, i] = round(2^24 cos(p w_i)), SIN likewise, w_i = theta^(-2i/head_dim), i < head_dim/2.

    Positions advance by multiplying unit complex numbers in 128-bit fixed point; the
    error after 2^16 steps stays below 2^-100, far under the tie guard.
    """
    half = head_dim // 2
    log_theta = ln_fixed(theta)
    cos = [[0] * half for _ in range(positions)]
    sin = [[0] * half for _ in range(positions)]
    for i in range(half):
        w = exp_fixed(-(2 * i * log_theta) // head_dim)
        w2 = _mul(w, w)
        c1 = _series(ONE, lambda k, t, w2=w2: -_mul(t, w2) // ((2 * k - 1) * 2 * k))
        s1 = _series(w, lambda k, t, w2=w2: -_mul(t, w2) // ((2 * k) * (2 * k + 1)))
        c, s = ONE, 0
        for p in range(positions):
            cos[p][i], sin[p][i] = _round(c, ROPE_BITS), _round(s, ROPE_BITS)
            c, s = _mul(c, c1) - _mul(s, s1), _mul(s, c1) + _mul(c, s1)
    return torch.tensor(cos, dtype=torch.int64), torch.tensor(sin, dtype=torch.int64)


def eps_table(eps: float, frac_bits: int, norm_bits: int) -> torch.Tensor:
    """EPS[s] = round(eps * 2^(2(frac_bits + norm_bits - s))) for s < 64: RMSNorm's epsilon in the units of
    a row quantised with shift s (value 0 where that rounds to nothing)."""
    exact = Fraction(eps)
    out = []
    for s in range(64):
        v = exact * Fraction(2) ** (2 * (frac_bits + norm_bits - s))
        out.append(int((v + Fraction(1, 2)).__floor__()))
    return torch.tensor(out, dtype=torch.int64)


SIG_BITS, SIG_SPAN = 12, 1 << 16  # sigmoid table: x = (i - 2^16) / 2^12 for i < 2^17, x in [-16, 16)


@cache
def sigmoid_table() -> torch.Tensor:
    """SIG[i] = round(2^30 / (1 + e^-x)), x = (i - 2^16) / 2^12: SiLU's gate, indexed by x in Q12."""
    step = exp_fixed(-ONE // (1 << SIG_BITS))
    pos, neg, e = [], [], ONE  # e = e^-x for x = j / 4096, j = 0 .. 2^16
    for _ in range(SIG_SPAN + 1):
        pos.append(_round((ONE << P) // (ONE + e), 30))
        neg.append(_round((e << P) // (ONE + e), 30))
        e = _mul(e, step)
    return torch.tensor(neg[SIG_SPAN:0:-1] + pos[:SIG_SPAN], dtype=torch.int64)
