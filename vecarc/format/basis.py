"""Low-rank memory vectors (`--rank r`): a vector is P @ z and only z is stored.

P is a d x r matrix of signs (+1/-1) scaled by 1/sqrt(r), drawn from SHA-256 in
counter mode, so any reader on any platform regenerates it bit for bit from the
seed in the header (docs/format.md) and the archive needs no copy of it.

Expansion is done in float64: stored z values are fp16, bf16 or integer-times-fp16
numbers, so every sum of +-z_j is exact in float64 whatever order a BLAS kernel
adds in, and the one rounding to float32 at the end is the same everywhere. The
vectors decoded are therefore exactly those verified, as with full vectors.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
import torch

KIND = "rademacher-sha256"
DOMAIN = b"vecarc basis v1"


@lru_cache(maxsize=8)
def _signs(d: int, r: int, seed: int) -> np.ndarray:
    nbits = d * r
    nblocks = -(-nbits // 256)
    stream = b"".join(
        hashlib.sha256(DOMAIN + seed.to_bytes(8, "little") + i.to_bytes(8, "little")).digest() for i in range(nblocks)
    )
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), bitorder="little")[:nbits]
    return (bits.astype(np.float64) * 2 - 1).reshape(d, r)


def signs(d: int, r: int, seed: int) -> torch.Tensor:
    """(d, r) float64 matrix of +-1: entry (i, j) is bit i*r + j of the stream (1 -> +1)."""
    if not 1 <= r <= d:
        raise ValueError(f"rank {r} must be between 1 and the model dimension {d}")
    return torch.from_numpy(_signs(d, r, seed).copy())


def expand(z: torch.Tensor, d: int, seed: int) -> torch.Tensor:
    """Full float32 vectors (..., d) from coordinates z (..., r); differentiable in z."""
    r = z.shape[-1]
    s = signs(d, r, seed).to(z.device)
    return ((z.to(torch.float64) @ s.T) * (1.0 / r**0.5)).to(torch.float32)
