"""Storage forms of memory vectors (`--vector-dtype`): float or integer with a scale.

A vector is 576 numbers for the default model; its storage form sets most of an
archive's size. The optimiser runs the model on `quantize(p)` with a
straight-through gradient, so the values stored are exactly those the model saw
when the chunk was verified: integer forms round-trip bit for bit.

int8 / int4: symmetric, one fp16 scale per vector, scale = max|x| / L with L = 127
or 7; stored values n in [-L, L], decoded as n * scale in float32. int4 packs two
values per byte (n + 8 in each nibble, low nibble first; 0 is not a valid nibble).
"""

from __future__ import annotations

import math
import sys

import torch

FLOAT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LEVELS = {"int8": 127, "int4": 7}
FORMS = (*FLOAT, *LEVELS)


def quantize(p: torch.Tensor, form: str) -> torch.Tensor:
    """float32 values, exactly representable in `form`, nearest to p (per vector along the last dim)."""
    if form in FLOAT:
        return p.to(FLOAT[form]).to(torch.float32)
    level = LEVELS[form]
    scale = _scale(p.detach().abs().amax(-1, keepdim=True), level)
    return (p / scale).round().clamp(-level, level) * scale


def _scale(absmax: torch.Tensor, level: int) -> torch.Tensor:
    # Rounded to fp16 first: that is what is stored, so q = n * scale is reproduced exactly.
    s = (absmax / level).to(torch.float16).to(torch.float32)
    return torch.where(s > 0, s, torch.ones_like(s))


def in_memory(q: torch.Tensor, form: str) -> torch.Tensor:
    """What pack keeps and decodes: the float dtype itself, or the exact float32 values of an integer form."""
    return q.to(FLOAT[form]) if form in FLOAT else q.to(torch.float32)


def _width(form: str, d: int) -> int:
    """Stored bytes of one integer vector's values: int4 packs two per byte."""
    return d if form == "int8" else (d + 1) // 2


def row_bytes(form: str, k: int, d: int) -> int:
    """Stored bytes of one chunk's k vectors (scales included)."""
    if form in FLOAT:
        return k * d * torch.finfo(FLOAT[form]).bits // 8
    return k * _width(form, d) + 2 * k


def encode(vectors: torch.Tensor, form: str) -> dict[str, torch.Tensor]:
    """Tensors for the archive's vectors section; vectors is (count, k, d) as pack kept them."""
    if form in FLOAT:
        return {"vectors": vectors.to(FLOAT[form]).contiguous()}
    level = LEVELS[form]
    q = vectors.to(torch.float32)
    # q = n * scale with max|n| = level, so absmax / level gives the fp16 scale back exactly.
    scale16 = (q.abs().amax(-1) / level).to(torch.float16)
    scale = scale16.to(torch.float32)[..., None]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    n = (q / safe).round()
    if not torch.equal(n * safe, q) or n.abs().max() > level:
        raise ValueError(f"vectors are not on the {form} grid")  # a bug in pack, not bad input
    n = n.to(torch.int8)
    if form == "int8":
        return {"vectors": n.contiguous(), "scales": scale16.contiguous()}
    u = (n + 8).to(torch.uint8)
    if u.shape[-1] % 2:
        u = torch.cat([u, torch.full_like(u[..., :1], 8)], -1)
    return {"vectors": (u[..., 0::2] | (u[..., 1::2] << 4)).contiguous(), "scales": scale16.contiguous()}


def raw_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The vectors section: the values, then the scales (integer forms), each row-major little-endian."""
    if sys.byteorder != "little":
        raise ValueError("vecarc writes archives on little-endian hosts only")
    return b"".join(tensors[n].contiguous().view(torch.uint8).numpy().tobytes() for n in ("vectors", "scales")
                    if n in tensors)


def from_raw(blob: bytes, form: str, shape: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    """The tensors of a raw vectors section of this shape; ValueError unless its length is exact."""
    if sys.byteorder != "little":
        raise ValueError("vecarc reads archives on little-endian hosts only")
    count, k, d = shape
    if form in FLOAT:
        parts = [("vectors", FLOAT[form], (count, k, d))]
    else:
        parts = [("vectors", torch.int8 if form == "int8" else torch.uint8, (count, k, _width(form, d))),
                 ("scales", torch.float16, (count, k))]
    out, pos = {}, 0
    for name, dt, shp in parts:
        n = math.prod(shp) * dt.itemsize
        out[name] = torch.frombuffer(bytearray(blob[pos : pos + n]), dtype=dt).reshape(shp) if n else \
            torch.empty(shp, dtype=dt)
        pos += n
    if pos != len(blob):
        raise ValueError(f"vectors section is {len(blob)} bytes, {pos} expected")
    return out


def decode(tensors: dict[str, torch.Tensor], form: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """The vectors pack verified, from the stored tensors; ValueError names what is wrong."""
    count, k, d = shape
    want = {"vectors"} if form in FLOAT else {"vectors", "scales"}
    if set(tensors) != want:
        raise ValueError(f"vectors section must hold exactly {sorted(want)}")
    t = tensors["vectors"]
    if form in FLOAT:
        if tuple(t.shape) != shape or t.dtype != FLOAT[form]:
            raise ValueError(f"vectors tensor is {t.dtype} {tuple(t.shape)}, header says {form} {shape}")
        return t
    level, scales = LEVELS[form], tensors["scales"]
    if scales.dtype != torch.float16 or tuple(scales.shape) != (count, k):
        raise ValueError(f"scales tensor must be float16 {(count, k)}")
    if not torch.isfinite(scales).all() or (scales < 0).any():
        raise ValueError("scales must be finite and not negative")
    if form == "int8":
        if t.dtype != torch.int8 or tuple(t.shape) != shape:
            raise ValueError(f"vectors tensor is {t.dtype} {tuple(t.shape)}, header says int8 {shape}")
        n = t
    else:
        if t.dtype != torch.uint8 or tuple(t.shape) != (count, k, _width(form, d)):
            raise ValueError(f"vectors tensor is {t.dtype} {tuple(t.shape)}, header says int4 {shape}")
        if d % 2 and t.numel() and (t[..., -1] >> 4 != 8).any():
            raise ValueError("int4 padding nibble is not 8")
        n = torch.stack([t & 15, t >> 4], -1).flatten(-2)[..., :d].to(torch.int8) - 8
    if (n.to(torch.int16).abs() > level).any():  # int8 -128 is its own abs
        raise ValueError(f"{form} values outside [-{level}, {level}]")
    s = scales.to(torch.float32)[..., None]
    if ((s == 0) & (n != 0)).any():
        raise ValueError("a vector with scale 0 must hold only zeros")
    # n * 1 where the scale is 0: n is all zeros there, and +0.0 is what the writer stored.
    return n.to(torch.float32) * torch.where(s > 0, s, torch.ones_like(s))
