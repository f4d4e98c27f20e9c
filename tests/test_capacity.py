"""Capacity planning: calibration stores a per-model profile that pack then plans by.

Uses a tiny model trained briefly on TRAIN_TEXT, so its cross-entropy is low on
that text and high on shuffled words, as a real model's is on easy and hard text.
"""

from __future__ import annotations

import json
import random
import statistics
from dataclasses import replace

import pytest
from helpers import FAST, TRAIN_TEXT, run_cli

import vecarc
from vecarc import PackConfig, SearchSettings, VecarcError, capacity
from vecarc.api import summary
from vecarc.capacity import capacity_budget
from vecarc.entropy import token_nll
from vecarc.plan import Budget, cut_by_budget, plan_by_budget, plan_chunks

EASY = TRAIN_TEXT[:700]
# FAST's search settings at FAST's margin (a pack's margin lives on its PackConfig).
FAST_SEARCH = replace(FAST.search, margin=FAST.margin)


def _hard() -> str:
    words = TRAIN_TEXT.split()[:120]
    random.Random(0).shuffle(words)
    return " ".join(words)


def test_cut_by_budget_stops_at_budget():
    b = Budget(nats=10, max_tokens=100, fill=1.0, min_tokens=2)
    assert cut_by_budget([3, 3, 3, 3], b) == 3  # 9 fits, 12 does not
    assert cut_by_budget([20, 1, 1], b) == 2  # never fewer than min_tokens
    assert cut_by_budget([0.1] * 500, b) == 100  # never more than max_tokens
    assert cut_by_budget([3, 3, 3, 3], Budget(nats=10, max_tokens=100, fill=0.5, min_tokens=1)) == 1


def test_plan_chunks_balanced():
    assert plan_chunks(0, 32) == []
    assert plan_chunks(10, 32) == [(0, 10)]
    spans = plan_chunks(65, 32)
    assert [b - a for a, b in spans] == [22, 22, 21]
    assert spans[0][0] == 0 and spans[-1][1] == 65


def test_plan_follows_cross_entropy(trained_tiny):
    lm = trained_tiny
    easy = lm.tokenizer(EASY, add_special_tokens=False)["input_ids"]
    hard = lm.tokenizer(_hard(), add_special_tokens=False)["input_ids"]
    budget = Budget(nats=30, max_tokens=120, fill=1.0)
    spans, nats = plan_by_budget([easy, hard], budget, lambda w: token_nll(lm, w))
    for ids, sp, nt in zip((easy, hard), spans, nats):
        assert sp[0][0] == 0 and sp[-1][1] == len(ids)  # covers the document without gaps
        assert all(a < b and b == c for (a, b), (c, _) in zip(sp, sp[1:]))
        assert len(nt) == len(ids)
        assert all(sum(nt[a:b]) <= 30 or b - a <= budget.min_tokens for a, b in sp[:-1])
    easy_len = statistics.median(b - a for a, b in spans[0])
    hard_len = statistics.median(b - a for a, b in spans[1])
    assert easy_len > 3 * hard_len, (easy_len, hard_len)


def test_calibrate_then_pack_uses_profile(trained_tiny, tmp_path):
    lm = trained_tiny
    entry = capacity.calibrate(lm, FAST_SEARCH, texts=[("easy", EASY), ("hard", _hard())], samples=2, first_tokens=4,
                               sample_tokens=48)
    assert entry["representation"] == capacity.profile_key(FAST_SEARCH)
    assert entry["budget_nats"] > 0 and len(entry["samples"]) == 2
    for smp in entry["samples"]:
        assert smp["tries"], smp
        if smp["tokens"]:
            assert any(t["ok"] and t["tokens"] == smp["tokens"] for t in smp["tries"])
            assert smp["gain"] == pytest.approx(smp["nats_without"] - smp["nats_with"])
    path = capacity.save_entry(lm, entry)
    assert capacity.load_entry(lm, entry["representation"])[1] == path
    rows = capacity.list_profiles()
    assert any(r["fingerprint"] == lm.fingerprint and r["representation"] == entry["representation"] for r in rows)

    src = tmp_path / "easy.txt"
    src.write_text(EASY[:300] + "\n" + _hard()[:200])
    warnings: list[str] = []
    res = vecarc.pack([src], tmp_path / "a.vec", FAST, model=lm, warn=warnings.append)
    assert not warnings  # the stored profile was found: no recalibration
    plan = res.archive.header.plan
    assert plan["method"] == "capacity"
    assert plan["budget_nats"] == pytest.approx(entry["budget_nats"], abs=1e-3)
    s = summary(res.archive)
    assert s["chunks"]["planned_nats_per_vector"] is not None
    vecarc.unpack(tmp_path / "a.vec", tmp_path / "out", model=lm)
    assert (tmp_path / "out" / "easy.txt").read_bytes() == src.read_bytes()


def test_profile_of_another_model_is_never_used(trained_tiny, tiny, monkeypatch):
    entry = {"representation": capacity.profile_key(FAST_SEARCH), "budget_nats": 123.0,
             "tokens": {"min": 1, "median": 2, "max": 3}}
    capacity.save_entry(trained_tiny, entry)
    # The same content under the other model's file name: its fingerprint inside does not match.
    src = capacity.profile_path(trained_tiny.fingerprint)
    dst = capacity.profile_path(tiny.fingerprint)
    dst.write_text(src.read_text())
    assert capacity.load_entry(tiny, entry["representation"]) is None
    assert capacity.load_entry(trained_tiny, entry["representation"])[0]["budget_nats"] == 123.0
    dst.unlink()


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": "vecarc-profile", "version": 99}),
                                     json.dumps({"format": "vecarc-profile", "version": 1, "model": {},
                                                 "entries": {"k1-fp16-m0.05": {"budget_nats": "lots"}}})])
def test_corrupt_profile_warns_and_recalibrates(trained_tiny, content, monkeypatch):
    lm = trained_tiny
    path = capacity.profile_path(lm.fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    calls = []
    real = capacity.calibrate

    def small(lm_, s, **kw):
        calls.append(1)
        return real(lm_, s, texts=[("easy", EASY)], samples=2, first_tokens=4, sample_tokens=32)

    monkeypatch.setattr("vecarc.capacity.calibrate", small)
    warnings: list[str] = []
    budget = capacity_budget(lm, FAST_SEARCH, warn=warnings.append)
    assert calls == [1]
    assert any("ignoring it" in w for w in warnings) and any("calibrating first" in w for w in warnings)
    assert budget.nats > 0
    data = json.loads(path.read_text())  # replaced by a valid profile
    assert data["model"]["fingerprint"] == lm.fingerprint
    assert capacity.load_entry(lm, capacity.profile_key(FAST_SEARCH)) is not None


def test_cli_calibrate_models_pack_info(tmp_path, trained_dir):
    run = run_cli
    text = tmp_path / "cal.txt"
    text.write_text(EASY)
    fast = ["--margin", "0.05", "--max-steps", "100", "--batch-size", "64"]
    code, out = run("calibrate", "--model", trained_dir, "--samples", "2", "--text", text, "--first-tokens", "4", *fast,
                    "--json")
    assert code == 0, out
    entry = json.loads(out)
    assert entry["representation"] == "k1-int8-m0.05" and entry["budget_nats"] > 0  # int8; narrow: whole vectors
    code, out = run("models", "--json")
    assert code == 0
    assert any(r["representation"] == "k1-int8-m0.05" and r["fingerprint"] == entry["fingerprint"]
               for r in json.loads(out))
    src = tmp_path / "t.txt"
    src.write_text(EASY[:200])
    code, out = run("pack", src, "--model", trained_dir, "--mode", "vectors", *fast)
    assert code == 0, out
    assert "calibrating first" not in out
    code, out = run("info", tmp_path / "t.txt.vec", "--json")
    info = json.loads(out)
    assert info["plan"]["method"] == "capacity"
    assert info["plan"]["budget_nats"] == pytest.approx(entry["budget_nats"], abs=1e-3)
    assert info["chunks"]["vector"] >= 1 and info["chunks"]["tokens_per_vector"]["max"] >= 1
    code, out = run("calibrate", "--model", trained_dir, "--text", tmp_path / "missing.txt")
    assert code == 2 and "missing.txt" in out


def test_a_failed_calibration_stops_the_pack_and_says_what_to_do(tiny, tmp_path):
    """A model that holds nothing at the calibration settings: one clear error, and --chunk-tokens still packs."""
    src = tmp_path / "t.txt"
    src.write_bytes(b"Hello there.")
    s = PackConfig(mode="vectors", margin=1e9, search=SearchSettings(max_steps=5, patience=5, batch_size=64),
                   min_chunk_tokens=1)
    with pytest.raises(VecarcError, match="calibration failed.*pack with --chunk-tokens N .*--text FILE"):
        vecarc.pack([src], tmp_path / "t.vec", s, model=tiny)
    assert not (tmp_path / "t.vec").exists() and not (tmp_path / "t.vec.journal").exists()
    res = vecarc.pack([src], tmp_path / "t.vec", replace(s, chunk_tokens=4), model=tiny)
    assert res.archive.header.plan["method"] == "fixed"
    vecarc.unpack(tmp_path / "t.vec", tmp_path / "out", model=tiny)
    assert (tmp_path / "out" / "t.txt").read_bytes() == b"Hello there."
