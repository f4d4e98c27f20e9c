"""vecarc bench on the tiny model: every field present, numbers consistent with zstd itself."""

from __future__ import annotations

import json
import lzma

import zstandard
from helpers import run_cli

TEXT = b"The quick brown fox jumps over the lazy dog. " * 3
BENCH_FAST = ["--chunk-tokens", "2", "--reps", "1"]


run = run_cli


def test_bench_json_fields_and_consistency(tmp_path, tiny_dir, monkeypatch):
    import vecarc.cli as cli
    from vecarc import PackConfig, SearchSettings

    # The tiny random model needs a small margin to converge at all.
    monkeypatch.setattr(cli, "SearchSettings", lambda **kw: SearchSettings(max_steps=150, patience=50, batch_size=64,
                                                                           **kw))
    monkeypatch.setattr(cli, "PackConfig", lambda **kw: PackConfig(margin=0.05, **kw))
    src = tmp_path / "t.txt"
    src.write_bytes(TEXT)
    out = tmp_path / "r.json"
    code, text = run("bench", src, "--model", tiny_dir, "--json", out, "--zstd-levels", "3,19",
                     "--vector-dtypes", "fp16,fp32,int8r16,predict,coded", "--archive", tmp_path / "arch", *BENCH_FAST)
    assert code == 0, text
    res = json.loads(out.read_text())[0]
    assert res["bytes"] == len(TEXT)
    for key in ("model", "machine", "model_limit", "methods", "chunks"):
        assert key in res
    assert res["model"]["fingerprint"].startswith("fp2:")
    for key in ("device", "torch_threads", "torch", "transformers", "vecarc"):
        assert key in res["machine"]
    by = {m["method"]: m for m in res["methods"]}
    assert set(by) >= {"zstd -3", "zstd -19", "zstd --ultra -22", "xz -9", "vecarc fp16", "vecarc fp32",
                       "model limit (ideal coder)"}
    for m in res["methods"]:
        assert abs(m["ratio"] - len(TEXT) / m["bytes"]) < 1e-9
    for level in (3, 19, 22):
        name = f"zstd --ultra -{level}" if level == 22 else f"zstd -{level}"
        assert by[name]["bytes"] == len(zstandard.ZstdCompressor(level=level).compress(TEXT))
    assert by["xz -9"]["bytes"] == len(lzma.compress(TEXT, preset=9))
    for dt in ("fp16", "fp32"):
        v = by[f"vecarc {dt}"]
        assert v["verify_ok"] is True
        assert v["vector_bytes"] + v["literal_bytes"] + v["header_bytes"] == v["bytes"]
        for key in ("tokens_per_vector", "vectors_per_kb", "compress_s", "decompress_s", "steps_median",
                    "bits_stored_per_vector", "gain_bits_per_vector_median", "utilisation"):
            assert key in v
        assert v["bits_stored_per_vector"] == round(v["vector_bytes"] * 8 / v["vectors"])
        assert v["bits_stored_per_vector"] <= 64 * (32 if dt == "fp32" else 16)  # zstd only where it pays
        for c in res["chunks"][dt]:
            assert abs(c["gain_bits"] - (c["ce_without_bits"] - c["ce_with_bits"])) < 1e-6
    pred = by["vecarc predicted"]
    assert pred["verify_ok"] is True and pred["vectors"] == 0 and pred["bits_stored_per_vector"] is None
    assert pred["corrections_bytes"] + pred["literal_bytes"] + pred["header_bytes"] == pred["bytes"]
    coded = by["vecarc coded"]
    assert coded["verify_ok"] is True and coded["coded_bytes"] + coded["literal_bytes"] + coded["header_bytes"] == \
        coded["bytes"]
    own = by["integer model limit"]  # the integer model's cross-entropy is close to the float model's
    assert abs(own["ce_bits"] - res["model_limit"]["ce_bits"]) < 0.05 * res["model_limit"]["ce_bits"]
    low = by["vecarc int8 rank 16"]  # 16 stored numbers per vector instead of 64
    assert low["verify_ok"] is True and low["bits_stored_per_vector"] <= (16 + 2) * 8
    assert res["model_limit"]["ce_bits"] > 0
    # A second run reuses the packed archives instead of packing again.
    code, text = run("bench", src, "--model", tiny_dir, "--json", out, "--vector-dtypes", "fp16,fp32",
                     "--archive", tmp_path / "arch", *BENCH_FAST)
    assert code == 0, text
    again = {m["method"]: m for m in json.loads(out.read_text())[0]["methods"]}
    assert again["vecarc fp16"]["reused_archive"] is True
    assert again["vecarc fp16"]["bytes"] == by["vecarc fp16"]["bytes"]


def test_bench_bad_inputs(tmp_path, tiny_dir):
    code, text = run("bench", tmp_path / "missing.txt", "--model", tiny_dir)
    assert code == 2 and "no such file" in text
    code, text = run("bench", tmp_path, "--model", tiny_dir)
    assert code == 2 and "not a regular file" in text
    (tmp_path / "x.txt").write_text("hi")
    code, text = run("bench", tmp_path / "x.txt", "--model", tiny_dir, "--zstd-levels", "3,abc")
    assert code == 2 and "integers" in text


def test_bench_plot_writes_png(tmp_path, tiny_dir):
    src = tmp_path / "t.txt"
    src.write_bytes(b"\xff\xfe binary, stored literally")
    png = tmp_path / "p.png"
    code, text = run("bench", src, "--model", tiny_dir, "--plot", png, "-q", *BENCH_FAST)
    assert code == 0, text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_representation_names():
    import pytest

    from vecarc.bench import parse_form
    from vecarc.errors import VecarcError

    assert parse_form("fp16") == ("fp16", 0)
    assert parse_form("int8r256") == ("int8", 256)
    for bad in ("int3", "int8r0", "int8r", "fp16r-4", "int8 r64"):
        with pytest.raises(VecarcError, match="unknown vector representation"):
            parse_form(bad)
