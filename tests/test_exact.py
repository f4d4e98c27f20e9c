"""The integer model gives the same integers however it is run, and coded chunks round-trip on every family
it covers; damaged coded sections are refused, and models it does not cover fall back to predicted chunks."""

from __future__ import annotations

import copy
import hashlib
import types
from dataclasses import replace
from fractions import Fraction

import pytest
import torch
from helpers import TRAIN_TEXT, run_cli

import vecarc
from vecarc.chunks.coded import integer_model
from vecarc.exact import fast, ops, tables
from vecarc.exact.model import FREQ_TOTAL, IntegerModel, Linear
from vecarc.format import parse_archive, serialize
from vecarc.tiny import FAMILIES, build_tiny_model

TEXT = (TRAIN_TEXT[:200] + " and then something it has not read: zq 42 xv.\n").encode()


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.cpu().numpy().astype("<i8").tobytes()).hexdigest()[:16]


def test_tables_are_the_pinned_ones():
    """The tables docs/format.md defines, by the first 64 bits of the SHA-256 of their little-endian int64s."""
    assert digest(tables.exp_table(20)) == "e9eeec2be87c4e50"
    assert digest(tables.exp_table(30)) == "6549157924a7e63b"
    assert digest(tables.sigmoid_table()) == "033ab49eff841e2a"
    cos, sin = tables.rope_tables(Fraction(100000), 64, 512)
    assert (digest(cos), digest(sin)) == ("dc37f7c4053691f6", "018881f4feaa85c6")
    assert tables.LOG2E_Q24 == 24204406
    assert digest(tables.eps_table(1e-5, 16, 8)) == "0d75052fcb6144b4"


def test_int_matmul_paths_agree():
    """torch._int_mm and the binary64 fallback compute the same integers, at the activation bounds."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-ops.A_MAX, ops.A_MAX + 1, (5, 96), generator=g)
    a[0] = ops.A_MAX
    a[1] = -ops.A_MAX
    w = torch.randint(-127, 128, (24, 96), generator=g, dtype=torch.int8)
    exact = a @ w.to(torch.int64).t()
    assert torch.equal(ops.int_matmul(a, w), exact)
    assert torch.equal((a.double() @ w.double().t()).to(torch.int64), exact)


def test_isqrt_and_bit_length_are_exact():
    n = torch.tensor([0, 1, 2, 3, 4, 15, 16, 17, (1 << 52) - 1, 1 << 52, (1 << 61) + 12345, (1 << 62) - 1])
    r = ops.isqrt(n)
    assert torch.all(r * r <= n) and torch.all((r + 1) * (r + 1) > n)
    x = torch.tensor([0, 1, 2, 255, 256, (1 << 53) - 1, (1 << 53) + 1, (1 << 62) - 1])
    assert ops.bit_length(x).tolist() == [int(v).bit_length() for v in x.tolist()]


def same_however_computed(im: IntegerModel, seq: torch.Tensor, vocab: int) -> torch.Tensor:
    """The whole pass's tables for seq (1, T), asserted equal to KV-cached steps, to row 37 of a batch of 64
    and to a pass on one thread."""
    whole = im.forward(seq)
    caches = [[] for _ in im.layers]
    steps = torch.cat([im.forward(seq[:, i : i + 1], caches, start=i) for i in range(seq.shape[1])], 1)
    assert torch.equal(steps, whole)
    others = torch.randint(0, vocab, (63, seq.shape[1]), generator=torch.Generator().manual_seed(1))
    batch = im.forward(torch.cat([others[:37], seq, others[37:]]))
    assert torch.equal(batch[37:38], whole)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = im.forward(seq)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, whole)
    return whole


def reference(im: IntegerModel) -> IntegerModel:
    """The same quantised model on model.py's tensor code."""
    ref = copy.copy(im)
    ref.native = None
    return ref


def in_pieces(im: IntegerModel, seq: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Tables for seq fed through one KV cache in pieces of these sizes (then one token at a time)."""
    caches, out, at = [[] for _ in im.layers], [], 0
    while at < seq.shape[1]:
        k = sizes[len(out)] if len(out) < len(sizes) else 1
        out.append(im.forward(seq[:, at : at + k], caches, start=at))
        at += k
    return torch.cat(out, 1)


def same_as_reference(im: IntegerModel, seq: torch.Tensor) -> None:
    """The compiled loops against the tensor code: a whole pass, steps of one token, three tokens (a small
    block's attention) and twenty (the batched attention, after a cached prefix), the encoder's intervals."""
    ref = reference(im)
    assert im.native is not None
    assert torch.equal(im.forward(seq), ref.forward(seq))
    sizes = [1, 3, 20]
    assert torch.equal(in_pieces(im, seq, sizes), in_pieces(ref, seq, sizes))
    targets = torch.roll(seq, -1, 1)
    assert torch.equal(im.symbols(seq, targets), ref.symbols(seq, targets))


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp(request.param), seed=3, train_steps=40, family=request.param)
    return vecarc.load_model(str(folder), device="cpu")


def test_frequencies_are_identical_however_they_are_computed(family):
    """Whole sequence against KV-cached steps, alone against in a batch of others, 1 against 2 threads."""
    im = IntegerModel(family.model)
    ids = family.tokenizer(TEXT.decode(), add_special_tokens=False)["input_ids"][:40]
    seq = torch.tensor([[family.sink_id] + ids])
    whole = same_however_computed(im, seq, family.vocab_size)
    assert whole.dtype == torch.int64 and int(whole.min()) >= 1
    assert int(whole.sum(-1).max()) <= FREQ_TOTAL
    assert digest(whole) == digest(IntegerModel(family.model).forward(seq))  # quantising again changes nothing


def compiled(family, folder) -> tuple[IntegerModel, torch.Tensor]:
    """The family's integer model on the compiled loops (skipped without a compiler), and two rows to run."""
    lib = fast.library(folder / "native")
    if lib is None:
        pytest.skip("no C++ compiler here: the tensor code runs alone")
    im = IntegerModel(family.model)
    im.native = lib
    ids = family.tokenizer(TEXT.decode(), add_special_tokens=False)["input_ids"][:40]
    return im, torch.tensor([[family.sink_id] + ids, [family.sink_id] + ids[::-1]])


def test_compiled_loops_compute_the_reference_integers(family, tmp_path):
    same_as_reference(*compiled(family, tmp_path))


def with_biases(folder, hidden: int):
    """A tiny Llama whose every linear layer has a bias, none of them zero."""
    lm = vecarc.load_model(str(build_tiny_model(folder / "m", seed=3, hidden=hidden, attention_bias=True,
                                                mlp_bias=True)), device="cpu")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in lm.model.model.layers:
            at, mlp = layer.self_attn, layer.mlp
            for p in (at.q_proj, at.k_proj, at.v_proj, at.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                p.bias.copy_(torch.randn(p.bias.shape, generator=gen) * 0.1)
    return lm


def test_biases_are_the_specifications(tmp_path):
    """docs/format.md: q, k, v, o and down biases enter the integer model (the compiled loops' as the tensor
    code's); gate and up biases are not part of specification 1, so a model's own changes nothing."""
    lm = with_biases(tmp_path, hidden=64)
    ids = lm.tokenizer(TEXT.decode(), add_special_tokens=False)["input_ids"][:30]
    seq = torch.tensor([[lm.sink_id] + ids])
    whole = IntegerModel(lm.model).forward(seq)
    lib = fast.library(tmp_path / "native")
    if lib is not None:
        im = IntegerModel(lm.model)
        im.native = lib
        same_as_reference(im, seq)
    with torch.no_grad():
        for layer in lm.model.model.layers:
            layer.mlp.gate_proj.bias.zero_()
            layer.mlp.up_proj.bias.zero_()
    assert torch.equal(IntegerModel(lm.model).forward(seq), whole)
    for name in ("o_proj", "down_proj"):
        changed = copy.deepcopy(lm.model)
        layer = changed.model.layers[0]
        with torch.no_grad():
            (layer.self_attn.o_proj if name == "o_proj" else layer.mlp.down_proj).bias.zero_()
        assert not torch.equal(IntegerModel(changed).forward(seq), whole), name


@pytest.mark.parametrize("hidden", [128, 192])
def test_token_steps_in_one_call_where_the_families_do_not_reach(tmp_path_factory, hidden):
    """A decoder's steps (all layers in one compiled call) against the tensor code with 10 rows, heads of 32
    (attention's AVX-512 kernel) and of 48 (not whole blocks of 32: the plain loops), o and down biases, more
    than 64 keys (a second block of value sums), and three queries after 30 (their first key block partly
    past them)."""
    lm = with_biases(tmp_path_factory.mktemp(f"m{hidden}"), hidden=hidden)
    im = IntegerModel(lm.model)
    im.native = fast.library(tmp_path_factory.getbasetemp() / "native-steps")
    if im.native is None or not im.native.vnni:
        pytest.skip("no compiled gemv on this CPU: token steps are called stage by stage")
    assert im.shape.head_dim == hidden // 4
    seq = torch.randint(0, lm.vocab_size, (10, 80), generator=torch.Generator().manual_seed(6))
    with fast.stepping(im, 10):
        stepped = in_pieces(im, seq, [30, 3])
        assert im.packed.get("plan") is not None
    assert torch.equal(stepped, reference(im).forward(seq))


@pytest.mark.parametrize("threads", [2, 4])
def test_one_rows_attention_split_over_threads(tmp_path_factory, threads):
    """One row of three key heads on 2 or 4 threads, past 256 keys: each head's keys are shared among the
    threads (scores and tops, then weights and sums, in two passes), and the steps give the reference's integers."""
    folder = build_tiny_model(tmp_path_factory.mktemp("split"), seed=7, hidden=192, num_attention_heads=6,
                              num_key_value_heads=3, max_position_embeddings=512)
    lm = vecarc.load_model(str(folder), device="cpu")
    im = IntegerModel(lm.model)
    im.native = fast.library(tmp_path_factory.getbasetemp() / "native-split")
    if im.native is None or not im.native.vnni:
        pytest.skip("no compiled gemv on this CPU: token steps are called stage by stage")
    seq = torch.randint(0, lm.vocab_size, (1, 330), generator=torch.Generator().manual_seed(8))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with fast.stepping(im, 1):
            stepped = in_pieces(im, seq, [250])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(stepped, reference(im).forward(seq))


def test_token_steps_products_compute_torch_integers(tmp_path):
    """gemv (token steps' products, AVX-512 VNNI) against torch._int_mm: every row count it takes, outputs
    that are not whole blocks of 16, the extreme int8 values."""
    lib = fast.library(tmp_path / "native")
    if lib is None or not lib.vnni:
        pytest.skip("no compiled gemv on this CPU: token steps use torch's products")
    gen = torch.Generator().manual_seed(5)
    for N, K in [(37, 20), (64, 64), (130, 96)]:
        w = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=gen)
        w[0], w[-1] = 127, -127
        lin = Linear(w, torch.ones(N, dtype=torch.int64), 16, None)
        im = types.SimpleNamespace(native=lib, packed={})
        for M in range(1, fast.STEP_PRODUCT_ROWS + 1):
            a = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=gen)
            a[0] = -128
            lib.step_threads = 2
            try:
                got = fast._product(im, a, lin)
            finally:
                lib.step_threads = 0
            assert torch.equal(got, torch._int_mm(a, w.t())), (N, K, M)


def test_token_steps_give_the_reference_integers(family, tmp_path):
    """Decoding's token steps (all layers in one compiled call: products in gemv, small stages on the pool's
    threads) against the tensor code, and torch's threads as they were afterwards."""
    im, seq = compiled(family, tmp_path)
    lib = im.native
    threads = torch.get_num_threads()
    with fast.stepping(im, 2):
        stepped = in_pieces(im, seq, [])
        assert lib.vnni == (len(im.packed) > 0)
    assert torch.get_num_threads() == threads and lib.step_threads == 0
    assert torch.equal(stepped, reference(im).forward(seq))


def test_without_a_compiler_the_tensor_code_runs(tmp_path, monkeypatch):
    fast.library.cache_clear()
    monkeypatch.setenv("VECARC_NATIVE", "0")
    try:
        assert fast.library(tmp_path / "native") is None
    finally:
        fast.library.cache_clear()


def test_coded_round_trip_on_every_family(family, tmp_path):
    src = tmp_path / "t.txt"
    src.write_bytes(TEXT * 3)
    out = tmp_path / "t.vec"
    r = vecarc.pack([src], out, vecarc.PackConfig(chunk_tokens=48), model=family)
    kinds = {c.kind for c in r.archive.chunks}
    assert "coded" in kinds and kinds <= {"coded", "tokens"}
    assert r.archive.header.version == 6 and r.archive.header.cram["mode"] == "coded"
    written = vecarc.unpack(out, tmp_path / "out", model=family)
    assert [p.read_bytes() for p in written] == [TEXT * 3]


@pytest.fixture(scope="module")
def coded(trained_tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("coded")
    (d / "a.txt").write_bytes(TEXT * 2)
    out = d / "a.vec"
    vecarc.pack([d / "a.txt"], out, vecarc.PackConfig(chunk_tokens=32), model=trained_tiny)
    return out


def test_damaged_coded_stream_is_refused(coded, tmp_path, trained_dir):
    """A stream changed under a valid checksum decodes to other tokens: refused, one line, nothing written."""
    a = parse_archive(coded.read_bytes())
    i = next(i for i, c in enumerate(a.chunks) if c.kind == "coded" and c.length > 4)
    a.literals[i] = bytes(b ^ 0x5A for b in a.literals[i])
    bad = tmp_path / "bad.vec"
    bad.write_bytes(serialize(a))
    code, out = run_cli("unpack", bad, "-o", tmp_path / "o", "--model", trained_dir)
    assert code != 0 and "Traceback" not in out
    assert "decoded to other tokens" in out or "names no token" in out or "sha256" in out
    assert not (tmp_path / "o" / "a.txt").exists()


def test_lying_coded_header_is_refused(coded):
    """A coded chunk cannot claim more tokens than its stream's bytes allow; a reader refuses it from the header."""
    a = parse_archive(coded.read_bytes())
    i = next(i for i, c in enumerate(a.chunks) if c.kind == "coded")
    stream = a.literals[i]
    a.header.chunks = [replace(a.chunks[i], tokens=1024 * (len(stream) + 1) + 1)]
    a.literals = {0: stream}
    a.header.cram["chunk_tokens"] = a.chunks[0].tokens
    with pytest.raises(vecarc.VecarcError, match="declares .* tokens for a stream"):
        parse_archive(serialize(a))


def test_damaged_compact_archives_are_refused_in_one_line(coded):
    """Every truncation and every single-byte change of a coded archive is refused (CRC-32 or a rule)."""
    good = coded.read_bytes()
    for cut in range(len(good)):
        with pytest.raises(vecarc.VecarcError):
            parse_archive(good[:cut])
    for at in range(len(good)):
        bad = bytearray(good)
        bad[at] ^= 0x01
        with pytest.raises(vecarc.VecarcError):
            parse_archive(bytes(bad))


def test_uncovered_model_falls_back_to_predicted_chunks(tmp_path):
    folder = build_tiny_model(tmp_path / "m", seed=4, rope_scaling={"rope_type": "linear", "factor": 2.0})
    src = tmp_path / "t.txt"
    src.write_bytes(TEXT)
    notes = []
    r = vecarc.pack([src], tmp_path / "t.vec", vecarc.PackConfig(chunk_tokens=32),
                    model=vecarc.load_model(str(folder), device="cpu"), warn=notes.append)
    assert len(notes) == 1 and "packing predicted chunks" in notes[0] and "RoPE scaling 'linear'" in notes[0]
    assert r.archive.header.cram["mode"] == "predict"
    assert {c.kind for c in r.archive.chunks} <= {"predicted", "tokens"}


def test_weights_too_large_for_the_multipliers_fall_back(tmp_path):
    lm = vecarc.load_model(str(build_tiny_model(tmp_path / "m", seed=5)), device="cpu")
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight[0, 0] = 20000.0
    (tmp_path / "t.txt").write_bytes(TEXT)
    notes = []
    r = vecarc.pack([tmp_path / "t.txt"], tmp_path / "t.vec", vecarc.PackConfig(chunk_tokens=32), model=lm,
                    warn=notes.append)
    assert len(notes) == 1 and "weights of 16256 or more" in notes[0] and r.archive.header.cram["mode"] == "predict"


@pytest.mark.slow
def test_default_model_frequencies_are_identical_however_they_are_computed():
    lm = vecarc.load_model(None, device="cpu")
    im = integer_model(lm)
    ids = lm.tokenizer("The integer model gives every machine the same frequencies, on any CPU, with any "
                       "number of threads.", add_special_tokens=False)
    seq = torch.tensor([[lm.sink_id] + ids["input_ids"]])
    whole = same_however_computed(im, seq, lm.vocab_size)
    if im.native is not None:
        same_as_reference(im, seq)
        with fast.stepping(im, 1):  # a decoder's steps: all layers in one compiled call where gemv runs
            assert torch.equal(in_pieces(im, seq, []), whole)


def test_coded_volumes_and_members_unpack(trained_tiny, tmp_path, monkeypatch):
    """Coded archives cut into volumes, one member out of many: only what it needs is decoded."""
    monkeypatch.chdir(tmp_path)
    docs = {"a.txt": TEXT, "b.txt": TEXT[::-1], "c.bin": bytes(range(256))}
    for name, data in docs.items():
        (tmp_path / name).write_bytes(data)
    vecarc.pack(list(docs), "v.vec", vecarc.PackConfig(chunk_tokens=32, volume_size=300), model=trained_tiny)
    assert (tmp_path / "v.vec.0002").exists()
    assert vecarc.read_archive("v.vec.0001").header.version == 6
    written = vecarc.unpack("v.vec", "all", model=trained_tiny)
    assert {p.name: p.read_bytes() for p in written} == docs
    one = vecarc.unpack("v.vec", "one", ["b.txt"], model=trained_tiny)
    assert [p.read_bytes() for p in one] == [docs["b.txt"]]


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a//b.txt", "nul\x00.txt"])
def test_unsafe_names_in_a_coded_archive_are_refused(coded, name):
    a = parse_archive(coded.read_bytes())
    a.header.documents[0].name = name
    with pytest.raises(vecarc.VecarcError):
        parse_archive(serialize(a))


def test_chunks_read_their_context(trained_tiny, tmp_path, monkeypatch):
    """--context: each chunk coded after the tokens before it in its document. Smaller on repeated text,
    byte-identical back, side by side across documents, one member alone, and said by info."""
    monkeypatch.chdir(tmp_path)
    docs = {"a.txt": TEXT * 3, "b.txt": TEXT[:150] + b"qz7 Xv9 Kp2 wj4 Rm8 " * 12 + TEXT[150:], "c.txt": TEXT[:60]}
    for name, data in docs.items():
        (tmp_path / name).write_bytes(data)
    plain = vecarc.pack(list(docs), "p.vec", vecarc.PackConfig(chunk_tokens=32), model=trained_tiny)
    r = vecarc.pack(list(docs), "c.vec", vecarc.PackConfig(chunk_tokens=32, context_tokens=24), model=trained_tiny)
    assert r.archive.header.cram == {"mode": "coded", "chunk_tokens": 32, "context_tokens": 24}
    assert r.archive.size < plain.archive.size
    again = vecarc.read_archive("c.vec")
    assert again.header.cram["context_tokens"] == 24 and again.header.version == 6
    events = []
    written = vecarc.unpack("c.vec", "out", model=trained_tiny, progress=events.append)
    assert {p.name: p.read_bytes() for p in written} == docs
    done = [e["done"] for e in events if e["event"] == "decode"]
    assert done == sorted(done) and done[-1] == sum(c.kind == "coded" for c in again.chunks)
    assert [p.read_bytes() for p in vecarc.unpack("c.vec", "one", ["b.txt"], model=trained_tiny)] == [docs["b.txt"]]
    code, out = run_cli("info", "c.vec")
    assert code == 0 and "each after the 24 tokens before it" in out


def test_context_needs_coded_chunks(trained_dir, tmp_path):
    (tmp_path / "t.txt").write_bytes(TEXT)
    code, out = run_cli("pack", tmp_path / "t.txt", "--mode", "predict", "--context", "8", "--model", trained_dir)
    assert code == 2 and "--context needs coded chunks" in out and "Traceback" not in out
    assert not (tmp_path / "t.txt.vec").exists()
