"""The file format's parts that need no model: vector forms and the basis (header strictness: test_reader.py)."""

from __future__ import annotations

import pytest


def test_quantised_sections_are_checked():
    import torch

    from vecarc.format import quant

    v = quant.quantize(torch.randn(3, 1, 7) * 5, "int4")
    enc = quant.encode(v, "int4")
    assert torch.equal(quant.decode(enc, "int4", (3, 1, 7)), v)  # odd dimension: padded nibble
    bad = dict(enc, vectors=enc["vectors"] & 0xF0)  # nibble 0 would be -8, outside [-7, 7]
    with pytest.raises(ValueError, match="outside"):
        quant.decode(bad, "int4", (3, 1, 7))
    with pytest.raises(ValueError, match="scales"):
        quant.decode(dict(enc, scales=-enc["scales"].abs() - 1), "int4", (3, 1, 7))
    e8 = quant.encode(quant.quantize(torch.randn(2, 1, 4), "int8"), "int8")
    e8["vectors"][0, 0, 0] = -128
    with pytest.raises(ValueError, match="outside"):
        quant.decode(e8, "int8", (2, 1, 4))
    with pytest.raises(ValueError, match="exactly"):
        quant.decode({"vectors": e8["vectors"]}, "int8", (2, 1, 4))


def test_basis_is_the_specified_sha256_stream_and_expansion_is_exact():
    import hashlib

    import torch

    from vecarc.format import basis

    d, r, seed = 10, 7, 3
    stream = hashlib.sha256(b"vecarc basis v1" + seed.to_bytes(8, "little") + (0).to_bytes(8, "little")).digest()
    bits = [(stream[i // 8] >> (i % 8)) & 1 for i in range(d * r)]
    want = torch.tensor(bits, dtype=torch.float64).reshape(d, r) * 2 - 1
    assert torch.equal(basis.signs(d, r, seed), want)
    with pytest.raises(ValueError, match="between 1 and the model dimension"):
        basis.signs(4, 5, 0)
    # fp16 coordinates: sums are exact in float64, so the batch shape cannot change a single bit.
    z = (torch.randn(5, 2, 48) * 30).to(torch.float16)
    whole = basis.expand(z, 576, 0)
    assert torch.equal(whole[3], basis.expand(z[3], 576, 0))
    assert torch.equal(whole[:, 1], basis.expand(z[:, 1].flip(0), 576, 0).flip(0))


def test_int4_padding_and_zero_scales_are_as_specified():
    import torch

    from vecarc.format import quant

    v = quant.quantize(torch.randn(2, 1, 5) * 3, "int4")
    enc = quant.encode(v, "int4")
    assert (enc["vectors"][..., -1] >> 4 == 8).all()  # the odd last byte's high nibble
    with pytest.raises(ValueError, match="padding nibble"):
        quant.decode(dict(enc, vectors=enc["vectors"] ^ torch.tensor(0x10, dtype=torch.uint8)), "int4", (2, 1, 5))
    zero = quant.encode(torch.zeros(1, 1, 4), "int8")
    assert torch.equal(quant.decode(zero, "int8", (1, 1, 4)), torch.zeros(1, 1, 4))
    lying = dict(zero, vectors=torch.ones_like(zero["vectors"]))  # scale 0 but values that are not
    with pytest.raises(ValueError, match="scale 0 must hold only zeros"):
        quant.decode(lying, "int8", (1, 1, 4))

