"""Round trips through the real pipeline (cram, greedy decode, archive) on the tiny model.

The tiny random model cannot hold many tokens per vector, so these tests use
short chunks; what they check is that every path gives back identical bytes.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TRAIN_TEXT

import vecarc
from vecarc import CramSettings, read_archive
from vecarc.api import summary

FAST = CramSettings(margin=0.05, max_steps=150, patience=50, batch_size=64)

TEXTS = {
    "plain.txt": b"The quick brown fox jumps over the lazy dog.",
    "unicode.md": "Caf\u00e9 na\u00efve \u2014 r\u00e9sum\u00e9 \U0001f389\n\tline two\r\nline three \u4e2d\u6587\n".encode(),
    "empty.txt": b"",
    "spaces.txt": b"   \n\n\t  \n",
}


def pack_and_unpack(tmp_path, tiny, files: dict[str, bytes], **kw):
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (src / name).write_bytes(data)
        paths.append(src / name)
    out = tmp_path / "a.vec"
    kw.setdefault("chunk_tokens", 2)
    kw.setdefault("min_chunk_tokens", 1)
    res = vecarc.pack(paths, out, model=tiny, settings=kw.pop("settings", FAST), **kw)
    dest = tmp_path / "out"
    written = vecarc.unpack(out, dest, model=tiny)
    assert sorted(p.name for p in written) == sorted(files)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
    return res, read_archive(out)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_single_document_round_trip(tmp_path, tiny, name):
    res, a = pack_and_unpack(tmp_path, tiny, {name: TEXTS[name]})
    assert a.documents[0]["encoding"] == "text"
    if TEXTS[name]:
        assert any(c["kind"] == "vector" for c in a.chunks)
    else:
        assert a.chunks == []


def test_several_documents_and_non_utf8(tmp_path, tiny):
    files = dict(TEXTS)
    files["binary.bin"] = bytes(range(256)) + b"\xff\xfe not utf-8"
    _, a = pack_and_unpack(tmp_path, tiny, files)
    enc = {d["name"]: d["encoding"] for d in a.documents}
    assert enc["binary.bin"] == "bytes"
    assert enc["plain.txt"] == "text"
    s = summary(a)
    assert s["chunks"]["bytes"] == 1
    assert s["original_bytes"] == sum(len(v) for v in files.values())


def test_chunks_that_never_converge_become_literal(tmp_path, tiny):
    hopeless = CramSettings(margin=1e9, max_steps=2, batch_size=64)
    res, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]}, settings=hopeless,
                             chunk_tokens=8, min_chunk_tokens=2)
    kinds = {c["kind"] for c in a.chunks}
    assert kinds == {"tokens"}
    assert res.retries > 0
    assert a.vectors is None
    assert len(a.chunks) == 1  # neighbouring literal chunks are stored as one block


def test_long_text_is_tokenized_in_pieces_and_round_trips(tmp_path, tiny, monkeypatch):
    from vecarc import api

    text = ("Café naïve résumé, the quick brown fox; 12345 jumps over the lazy dog.\n   indented line\n" * 40).encode()
    monkeypatch.setattr(api, "PIECE_CHARS", 300)
    monkeypatch.setattr(api, "DECODE_TOKENS", 100)
    assert len(api._pieces(text.decode())) > 5
    ids = api.tokenize_exact(tiny, text)
    assert len(ids) > 500 and api.detokenize(tiny, ids) == text
    hopeless = CramSettings(margin=1e9, max_steps=1, batch_size=64)  # the data path only
    _, a = pack_and_unpack(tmp_path, tiny, {"long.txt": text}, settings=hopeless, chunk_tokens=32,
                           min_chunk_tokens=16)
    assert sum(c["tokens"] for c in a.chunks) == len(ids)


def test_cram_draws_jobs_only_as_slots_free_up(tiny):
    from vecarc.cram import Job, cram

    drawn, seen = [], []

    def jobs():
        for i in range(40):
            drawn.append(i)
            yield Job([5, 6, 7, 8], i, i)

    def on_result(job, r):
        seen.append(len(drawn))
        return []

    out = cram(tiny, jobs(), CramSettings(margin=1e9, max_steps=1, batch_size=4), on_result=on_result, total=40)
    assert out == [] and len(seen) == 40  # handed over, not kept
    assert seen[0] <= 4  # the first result came before more than one batch was drawn


SOLVE = CramSettings(batch_size=8, max_steps=200)


def _spy_decode(monkeypatch, spoil_first: bool = False) -> list[int]:
    """Count the rows of each greedy check cram makes; optionally spoil the first row's tokens once."""
    from vecarc import cram as cram_mod

    real, calls = cram_mod.greedy_decode, []

    def spy(lm, vectors, lengths, model=None):
        rows, mins = real(lm, vectors, lengths, model)
        if spoil_first and not calls:
            rows[0] = [rows[0][0] + 1] + rows[0][1:]
        calls.append(len(lengths))
        return rows, mins

    monkeypatch.setattr(cram_mod, "greedy_decode", spy)
    return calls


def test_chunks_at_the_margin_are_checked_by_greedy_decoding_together(trained_tiny, monkeypatch):
    from vecarc.cram import Job, cram
    from vecarc.decode import greedy_decode

    calls = _spy_decode(monkeypatch)
    tiny = trained_tiny
    ids = tiny.tokenizer(TRAIN_TEXT[:200], add_special_tokens=False)["input_ids"]
    chunks = [ids[i : i + 8] for i in range(0, 32, 8)]
    out = cram(tiny, [Job(c, i, i) for i, c in enumerate(chunks)], SOLVE)
    assert len(out) == 4 and all(r.ok and r.decodes == 1 for _, r in out)
    assert sum(calls) == 4 and max(calls) > 1  # fewer decodes than chunks
    for job, r in out:  # ok means the stored vectors decode to the chunk, with the margin
        got, mins = greedy_decode(tiny, r.vectors[None], [len(job.tokens)])
        assert got[0] == list(job.tokens) and r.decode_margin >= SOLVE.margin
        assert mins[0] == pytest.approx(r.decode_margin, abs=1e-3)  # batched vs alone: last bits differ


def test_a_failed_greedy_check_sends_the_chunk_back_to_float32(trained_tiny, monkeypatch):
    from vecarc.cram import Job, cram

    calls = _spy_decode(monkeypatch, spoil_first=True)
    ids = trained_tiny.tokenizer(TRAIN_TEXT[:100], add_special_tokens=False)["input_ids"]
    out = cram(trained_tiny, [Job(ids[:8], 0, 0)], SOLVE)
    (_, r), = out
    assert r.ok and r.decodes == 2 and len(calls) == 2
    assert r.steps > r.search_steps  # it went on optimising after the failed check


def test_vectors_are_stored_in_the_dtype_they_were_verified_in(tmp_path, tiny):
    import torch

    for dt, tdt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        s = CramSettings(margin=0.05, max_steps=150, patience=50, batch_size=64, vector_dtype=dt)
        _, a = pack_and_unpack(tmp_path / dt, tiny, {"plain.txt": TEXTS["plain.txt"]}, settings=s)
        assert a.vectors.dtype == tdt
        assert a.header["vectors"]["dtype"] == dt


@pytest.mark.parametrize("form", ["int8", "int4"])
def test_integer_vectors_round_trip_bit_identically(tmp_path, tiny, form):
    import torch

    from vecarc import quant
    from vecarc.archive import parse_archive, serialize

    s = CramSettings(margin=0.05, max_steps=150, patience=50, batch_size=64, vector_dtype=form)
    res, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]}, settings=s)
    assert a.header["vectors"]["dtype"] == form and a.vectors is not None
    # What was verified is what is stored: the in-memory vectors equal those read back, bit for bit.
    assert torch.equal(res.archive.vectors, a.vectors)
    assert torch.equal(parse_archive(serialize(a)).vectors, a.vectors)
    level = quant.LEVELS[form]
    scale = a.vectors.abs().amax(-1, keepdim=True) / level
    n = a.vectors / scale
    assert torch.equal(n, n.round()) and n.abs().max() <= level  # on the integer grid
    stored = quant.encode(a.vectors, form)
    count, k, d = a.vectors.shape
    assert stored["vectors"].numel() == count * k * (d if form == "int8" else d // 2)
    raw = count * quant.row_bytes(form, k, d)
    sec = a.header["vectors"]["section"][1]
    assert (a.header["vectors"]["compression"] == "zstd") == (sec < raw) and sec <= raw  # zstd only where it pays


def test_quantised_sections_are_checked(tmp_path, tiny):
    import torch

    from vecarc import quant

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


def test_split_and_retry_still_round_trips(tmp_path, tiny):
    # Chunks of 8 rarely converge on the tiny model: they are split down to size 1.
    res, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]}, chunk_tokens=8)
    assert res.retries > 0
    assert any(c["kind"] == "vector" for c in a.chunks)
    assert sum(c["tokens"] for c in a.chunks) == sum(d["tokens"] for d in summary(a)["documents"])


def test_same_seed_same_archive(tmp_path, tiny):
    (tmp_path / "t.txt").write_bytes(TEXTS["plain.txt"])
    a = vecarc.pack([tmp_path / "t.txt"], tmp_path / "1.vec", model=tiny, settings=FAST, chunk_tokens=2)
    b = vecarc.pack([tmp_path / "t.txt"], tmp_path / "2.vec", model=tiny, settings=FAST, chunk_tokens=2)
    assert a.archive_bytes == b.archive_bytes
    h1, h2 = read_archive(tmp_path / "1.vec").header, read_archive(tmp_path / "2.vec").header
    assert h1["chunks"] == h2["chunks"]


@pytest.mark.parametrize("form,rank", [("fp16", 32), ("int8", 32), ("int4", 16)])
def test_low_rank_vectors_round_trip_and_store_only_coordinates(tmp_path, tiny, form, rank):
    import torch

    from vecarc import basis, quant
    from vecarc.archive import parse_archive, serialize

    s = CramSettings(margin=0.05, max_steps=150, patience=50, batch_size=64, vector_dtype=form, rank=rank)
    res, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]}, settings=s)
    v = a.header["vectors"]
    assert v["rank"] == rank and v["basis"] == {"kind": basis.KIND, "seed": 0}
    count, k, _ = a.vectors.shape
    assert tuple(a.coords.shape) == (count, k, rank)
    raw = count * quant.row_bytes(form, k, rank)  # r numbers per vector, not d
    assert v["section"][1] == raw if v["compression"] == "none" else v["section"][1] < raw
    # Bit for bit: what pack verified, what is read back, and P @ z recomputed from the stored z.
    assert torch.equal(res.archive.vectors, a.vectors)
    assert torch.equal(parse_archive(serialize(a)).coords, a.coords)
    assert torch.equal(basis.expand(a.coords, tiny.hidden_size, 0), a.vectors)


def test_basis_is_the_specified_sha256_stream_and_expansion_is_exact():
    import hashlib

    import torch

    from vecarc import basis

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


def test_rank_larger_than_the_model_is_refused(tmp_path, tiny):
    from vecarc.errors import VecarcError

    (tmp_path / "t.txt").write_bytes(TEXTS["plain.txt"])
    with pytest.raises(VecarcError, match="--rank 65 is larger than the model dimension 64"):
        vecarc.pack([tmp_path / "t.txt"], tmp_path / "a.vec", model=tiny, settings=CramSettings(rank=65),
                    chunk_tokens=2)
    assert not (tmp_path / "a.vec").exists()


def test_search_dtype_auto_follows_the_hardware_and_is_recorded(tmp_path, tiny):
    from vecarc.errors import VecarcError

    assert CramSettings().resolved(64, fast_bf16=True).search_dtype == "bf16"
    assert CramSettings().resolved(64, fast_bf16=False).search_dtype == "fp32"
    assert CramSettings(search_dtype="fp32").resolved(64, fast_bf16=True).search_dtype == "fp32"
    with pytest.raises(VecarcError, match="unknown search dtype 'fp8'"):
        CramSettings(search_dtype="fp8").resolved(64)
    _, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]})
    assert a.header["cram"]["search_dtype"] == ("bf16" if tiny.fast_bf16() else "fp32")
    # Compile is decided by the job alone (its chunk count and device) and recorded as decided.
    assert a.header["cram"]["compile"] == "off"
    from vecarc.cram import COMPILE_MIN_CHUNKS, wants_compile

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert wants_compile(CramSettings(), cpu, COMPILE_MIN_CHUNKS)
    assert not wants_compile(CramSettings(), cpu, COMPILE_MIN_CHUNKS - 1)
    assert not wants_compile(CramSettings(), gpu, 10**6)
    assert wants_compile(CramSettings(compile="on"), cpu, 1) and not wants_compile(CramSettings(compile="off"), cpu, 10**6)


def test_resuming_with_rows_awaiting_their_check_gives_the_same_results(trained_tiny):
    from vecarc.cram import Job, cram

    ids = trained_tiny.tokenizer(TRAIN_TEXT[:300], add_special_tokens=False)["input_ids"]
    chunks = {i: ids[i : i + 8] for i in range(0, 48, 8)}
    jobs = [Job(c, i, i) for i, c in chunks.items()]
    ref = {j.tag: r for j, r in cram(trained_tiny, jobs, SOLVE)}
    states: list[dict] = []
    cram(trained_tiny, jobs, SOLVE, snapshot=states.append, snapshot_every=0)
    state = next(x for x in states if any(rec["cand"] for rec in x["slots"]))
    awaiting = {rec["tag"] for rec in state["slots"] if rec["cand"]}
    out = cram(trained_tiny, jobs, SOLVE, resume=state, rebuild=lambda t: Job(chunks[t], t, t))
    assert awaiting <= {j.tag for j, _ in out}
    for j, r in out:
        assert r.ok and r.steps == ref[j.tag].steps and r.decodes == ref[j.tag].decodes
        assert r.vectors.equal(ref[j.tag].vectors)


def _cram_compiled(lm) -> tuple[list, list[str]]:
    """Three chunks crammed with the search compiled: the tags solved, and cram's notes."""
    from vecarc.cram import Job, cram

    ids = lm.tokenizer(TRAIN_TEXT[:300], add_special_tokens=False)["input_ids"]
    chunks = [ids[i : i + 8] for i in range(0, 24, 8)]
    notes: list[str] = []
    s = dataclasses.replace(SOLVE, compile="on", search_dtype="bf16")
    out = cram(lm, [Job(c, i, i) for i, c in enumerate(chunks)], s,
               progress=lambda e: notes.append(e["message"]) if e["event"] == "note" else None)
    return sorted(j.tag for j, r in out if r.ok), notes


def test_a_failing_torch_compile_costs_speed_not_the_pack(trained_tiny, monkeypatch):
    from vecarc.errors import VecarcError
    from vecarc.models import LoadedModel

    class Broken:  # what torch.compile returns where no C++ compiler works: fails on the first call
        def __init__(self, model):
            self.dtype = model.dtype

        def __call__(self, *a, **k):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

    monkeypatch.setattr(LoadedModel, "compiled", lambda self, model: Broken(model))
    solved, notes = _cram_compiled(trained_tiny)
    assert solved == [0, 1, 2]
    assert notes == ["torch.compile failed (RuntimeError: InvalidCxxCompiler: no working C++ compiler found); "
                     "going on without it"]
    with pytest.raises(VecarcError, match="unknown compile setting 'yes'"):
        CramSettings(compile="yes").resolved(64)


def test_compiled_search_gives_verified_chunks(trained_tiny, tmp_path, monkeypatch):
    # A real torch.compile (cold, in its own cache): the search's rounding changes, what is kept does not.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    solved, notes = _cram_compiled(trained_tiny)
    assert notes == []  # compiled, not fallen back
    assert solved == [0, 1, 2]


def test_rows_of_very_different_lengths_run_as_separate_groups():
    from vecarc.cram import by_length

    rows, lengths = [7, 3, 9, 4, 1], [40, 100, 42, 105, 41]
    groups = by_length(rows, lengths, fixed=96)
    assert sorted(r for g in groups for r in g) == sorted(rows)  # a partition
    assert groups == [[1, 7, 9], [3, 4]]  # 5 x 105 padded costs more than a second pass
    assert by_length(rows, lengths, fixed=10_000) == [sorted(rows)]  # a costly pass: one padded batch
    assert by_length([], []) == []
