"""verify --strict: the recorded margin, and the same tokens under other decoding conditions."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import TRAIN_TEXT

from vecarc import PackConfig, SearchSettings, api, robust, unpacking
from vecarc.cli import main
from vecarc.format import read_archive, serialize


@pytest.fixture(scope="module")
def archive_path(tmp_path_factory, trained_tiny):
    d = tmp_path_factory.mktemp("strict")
    (d / "a.txt").write_text(TRAIN_TEXT[:400])
    api.pack([d / "a.txt"], d / "a.vec",
             PackConfig(mode="vectors", search=SearchSettings(batch_size=8, max_steps=200), chunk_tokens=24),
             model=trained_tiny)
    return d / "a.vec"


def test_pack_records_the_margin_and_every_chunk_decodes_above_it(archive_path, trained_tiny):
    a = read_archive(archive_path)
    assert a.header.decode.margin == PackConfig.margin == a.header.required_margin == unpacking.required_margin(a)
    r = api.verify(a, model=trained_tiny)
    assert r.ok and len(r.margins) == a.header.vectors.count > 0
    assert min(r.margins.values()) >= a.header.decode.margin


def test_strict_passes_and_reports_every_condition(archive_path, trained_tiny):
    r = api.verify(archive_path, model=trained_tiny, strict=True)
    assert r.ok, r.problems
    names = [c.name for c in r.stress]
    assert len(names) == 4 and any("attention" in n for n in names) and "bf16 model" in names
    for c in r.stress:
        assert c.chunks == len(r.margins) and len(c.drift) == c.chunks
        if c.binding:
            assert c.flips == 0 and c.max_drift < 0.05  # fp32 conditions move margins by rounding only
    bf16 = next(c for c in r.stress if c.name == "bf16 model")
    assert bf16.max_drift > max(c.max_drift for c in r.stress if c.binding)  # a coarser dtype moves more


def test_strict_fails_below_the_recorded_margin(tmp_path, archive_path, trained_tiny):
    a = read_archive(archive_path)
    a.header.decode.margin = 1e6
    bad = tmp_path / "high.vec"
    bad.write_bytes(serialize(a))
    assert api.verify(bad, model=trained_tiny).ok  # the tokens are still right
    r = api.verify(bad, model=trained_tiny, strict=True)
    assert not r.ok and "below the recorded 1e+06" in r.problems[0]
    res = CliRunner().invoke(main, ["verify", str(bad), "--strict", "--json"], catch_exceptions=False)
    assert res.exit_code == 1
    out = json.loads(res.output)
    assert out["required_margin"] == 1e6 and len(out["conditions"]) == 4


def test_a_flip_under_a_binding_condition_fails(monkeypatch, archive_path, trained_tiny):
    noisy = {}

    def model_for(lm, c):  # a "machine" whose arithmetic is far off: its decodes must flip
        if c.attention is None and c.dtype == torch.float32:
            return lm.model
        if "m" not in noisy:
            m = lm.variant(torch.float32, "eager")
            import copy

            noisy["m"] = m = copy.deepcopy(m)
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.5)
        return noisy["m"]

    monkeypatch.setattr(robust, "_variant", model_for)
    r = api.verify(archive_path, model=trained_tiny, strict=True)
    attn = next(c for c in r.stress if c.name.startswith("attention"))
    assert attn.flips > 0 and attn.max_drift > 0.5
    assert not r.ok and any(p.startswith("under attention") for p in r.problems)


def test_a_condition_the_model_cannot_run_is_reported_as_skipped(archive_path, trained_tiny, monkeypatch):
    from vecarc.models import LoadedModel

    real = LoadedModel.variant

    def no_other_attention(self, dtype, attention=None):
        if attention is not None and attention != self.attention:
            raise ValueError("MambaForCausalLM does not support an attention implementation through eager")
        return real(self, dtype, attention)

    monkeypatch.setattr(LoadedModel, "variant", no_other_attention)
    r = api.verify(archive_path, model=trained_tiny, strict=True)
    assert r.ok, r.problems
    (attn,) = [c for c in r.stress if c.name.startswith("attention")]
    assert attn.skipped.startswith("MambaForCausalLM does not support") and attn.chunks == 0
    assert all(c.skipped is None and c.chunks == len(r.margins) for c in r.stress if c is not attn)


def test_an_archive_decodes_with_the_sink_it_recorded(archive_path, trained_tiny):
    """A later rule (or tokenizer) that would pick another sink must not change how old archives decode."""
    import dataclasses

    moved = dataclasses.replace(trained_tiny, sink_id=trained_tiny.sink_id + 1)
    assert read_archive(archive_path).header.model.sink_token_id == trained_tiny.sink_id
    r = api.verify(archive_path, model=moved)
    assert r.ok, r.problems
