"""The embedded default model (SmolLM2-135M, GGUF), end to end, on one short sentence.

Slow (about a minute on 2 CPU cores, plus a one-time conversion), and run in CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import vecarc
from vecarc import capacity
from vecarc.models import DEFAULT_NAME, DEFAULT_SOURCE

EXAMPLE = Path(__file__).parent.parent / "examples" / "hello.txt"


@pytest.mark.slow
def test_default_model_packs_a_sentence_into_one_vector(tmp_path):
    lm = vecarc.load_model(None, device="cpu")
    assert lm.name == DEFAULT_NAME and lm.hidden_size == 576
    config = vecarc.PackConfig(mode="vectors")
    found = capacity.load_entry(lm, capacity.profile_key(config.resolved(lm).search))
    assert found is not None, f"no built-in capacity profile matches the default model's fingerprint {lm.fingerprint}"
    out = tmp_path / "hello.vec"
    warnings: list[str] = []
    res = vecarc.pack([EXAMPLE], out, config, model=lm, warn=warnings.append)
    assert not warnings
    a = vecarc.read_archive(out)
    assert a.header.plan["method"] == "capacity"
    assert a.header.plan["budget_nats"] == pytest.approx(found[0]["budget_nats"], abs=1e-3)
    assert a.header.model.source == DEFAULT_SOURCE
    assert (a.header.vectors.dtype, a.header.vectors.rank) == ("int8", 256)  # the default representation
    assert a.header.model.fingerprint == lm.fingerprint
    assert [c.kind for c in a.chunks] == ["vector"], "the sentence must be held by a vector, not a literal"
    assert a.chunks[0].tokens >= 15
    assert a.chunks[0].margin >= a.header.cram["margin"]
    assert res.archive_bytes == out.stat().st_size
    written = vecarc.unpack(out, tmp_path / "out", model=lm)
    assert written[0].read_bytes() == EXAMPLE.read_bytes()


@pytest.mark.slow
def test_default_model_codes_a_sentence_smaller_than_zstd(tmp_path):
    import zstandard

    lm = vecarc.load_model(None, device="cpu")
    out = tmp_path / "hello.vec"
    res = vecarc.pack([EXAMPLE], out, model=lm)  # the default mode
    a = vecarc.read_archive(out)
    assert a.header.version == 6 and [c.kind for c in a.chunks] == ["coded"]
    assert res.archive_bytes == out.stat().st_size < len(zstandard.ZstdCompressor(level=19).compress(
        EXAMPLE.read_bytes()))
    assert res.archive_bytes - a.chunks[0].length - len(EXAMPLE.name) <= 48  # prefix, header and checks
    assert vecarc.verify(out, model=lm).ok
    written = vecarc.unpack(out, tmp_path / "out", model=lm)
    assert written[0].read_bytes() == EXAMPLE.read_bytes()


@pytest.mark.slow
def test_default_model_predicts_a_sentence_with_few_corrections(tmp_path):
    lm = vecarc.load_model(None, device="cpu")
    out = tmp_path / "hello.vec"
    res = vecarc.pack([EXAMPLE], out, vecarc.PackConfig(mode="predict"), model=lm)
    a = vecarc.read_archive(out)
    assert a.header.version == 4 and [c.kind for c in a.chunks] == ["predicted"]
    c = a.chunks[0]
    assert 0 < c.corrections < c.tokens  # the model guesses some tokens by itself
    assert a.header.corrections.section[1] < 2 * c.corrections  # a correction costs well under a token id
    assert res.archive_bytes == out.stat().st_size
    v = vecarc.verify(out, model=lm, strict=True)
    assert v.ok, v.problems
    assert [r.flips for r in v.stress if r.binding] == [0] * sum(r.binding for r in v.stress)
    written = vecarc.unpack(out, tmp_path / "out", model=lm)
    assert written[0].read_bytes() == EXAMPLE.read_bytes()


@pytest.mark.slow
def test_cached_conversion_is_reused_and_fingerprint_is_stable():
    a = vecarc.load_model(None, device="cpu")
    b = vecarc.load_model(None, device="cpu")
    assert a.fingerprint == b.fingerprint
