"""The search loop: continuous batching, the greedy check, snapshot and restore, compile."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import TRAIN_TEXT

from vecarc import SearchSettings


def test_cram_draws_jobs_only_as_slots_free_up(tiny):
    from vecarc.search import Job, cram

    drawn, seen = [], []

    def jobs():
        for i in range(40):
            drawn.append(i)
            yield Job([5, 6, 7, 8], i, i)

    def on_result(job, r):
        seen.append(len(drawn))
        return []

    out = cram(tiny, jobs(), SearchSettings(margin=1e9, max_steps=1, batch_size=4), on_result=on_result, total=40)
    assert out == [] and len(seen) == 40  # handed over, not kept
    assert seen[0] <= 4  # the first result came before more than one batch was drawn


SOLVE = SearchSettings(batch_size=8, max_steps=200)


def _spy_decode(monkeypatch, spoil_first: bool = False) -> list[int]:
    """Count the rows of each greedy check cram makes; optionally spoil the first row's tokens once."""
    from vecarc.search import loop as cram_mod

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
    from vecarc.decode import greedy_decode
    from vecarc.search import Job, cram

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
    from vecarc.search import Job, cram

    calls = _spy_decode(monkeypatch, spoil_first=True)
    ids = trained_tiny.tokenizer(TRAIN_TEXT[:100], add_special_tokens=False)["input_ids"]
    out = cram(trained_tiny, [Job(ids[:8], 0, 0)], SOLVE)
    (_, r), = out
    assert r.ok and r.decodes == 2 and len(calls) == 2
    assert r.steps > r.search_steps  # it went on optimising after the failed check


def test_resuming_with_rows_awaiting_their_check_gives_the_same_results(trained_tiny):
    from vecarc.search import Job, cram

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
    from vecarc.search import Job, cram

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
        SearchSettings(compile="yes").resolved(64)


def test_compiled_search_gives_verified_chunks(trained_tiny, tmp_path, monkeypatch):
    # A real torch.compile (cold, in its own cache): the search's rounding changes, what is kept does not.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    solved, notes = _cram_compiled(trained_tiny)
    assert notes == []  # compiled, not fallen back
    assert solved == [0, 1, 2]


def test_rows_of_very_different_lengths_run_as_separate_groups():
    from vecarc.search import by_length

    rows, lengths = [7, 3, 9, 4, 1], [40, 100, 42, 105, 41]
    groups = by_length(rows, lengths, fixed=96)
    assert sorted(r for g in groups for r in g) == sorted(rows)  # a partition
    assert groups == [[1, 7, 9], [3, 4]]  # 5 x 105 padded costs more than a second pass
    assert by_length(rows, lengths, fixed=10_000) == [sorted(rows)]  # a costly pass: one padded batch
    assert by_length([], []) == []


def test_a_compiler_failing_without_a_message_falls_back_to_eager(tiny, monkeypatch):
    """An exception whose message is empty still becomes a note, and the search goes on uncompiled."""
    import torch

    from vecarc.models import LoadedModel
    from vecarc.search import Job, cram

    class Broken:
        dtype = torch.bfloat16

        def __call__(self, **kw):
            raise RuntimeError()

    monkeypatch.setattr(LoadedModel, "compiled", lambda self, model: Broken())
    notes = []
    s = SearchSettings(margin=1e9, max_steps=2, batch_size=4, search_dtype="bf16", compile="on")
    jobs = [Job([5, 6, 7, 8], i, i) for i in range(4)]
    out = cram(tiny, jobs, s, progress=lambda e: notes.append(e.get("message")) if e["event"] == "note" else None)
    assert len(out) == 4
    assert notes == ["torch.compile failed (RuntimeError); going on without it"]


def test_a_pack_takes_its_margin_from_the_pack_config_only():
    from vecarc import PackConfig, VecarcError

    assert PackConfig(margin=0.7).checked().margin == 0.7
    with pytest.raises(VecarcError, match="set margin= on the PackConfig"):
        PackConfig(mode="vectors", search=SearchSettings(margin=2.0)).checked()
    cfg = PackConfig(mode="vectors", margin=0.25).with_overrides(["search.lr=1", "fill=0.8"])
    assert (cfg.search.lr, cfg.fill, cfg.margin) == (1.0, 0.8, 0.25)
    with pytest.raises(VecarcError, match="unknown setting"):
        PackConfig().with_overrides(["search.nope=1"])
