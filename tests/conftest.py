"""Shared fixtures: a tiny Llama with a byte-level BPE tokenizer, built and saved
locally, then loaded through vecarc's real loading code; archives packed with it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import CLI_FAST, FAST, TEXT, TRAIN_TEXT, TWO_DOCS, run_cli

from vecarc.tiny import build_tiny_model


@pytest.fixture(scope="session")
def two_docs(tmp_path_factory, tiny) -> bytes:
    """An archive of TWO_DOCS (a text, held by vectors and literals; a bytes document) packed with the tiny model."""
    import vecarc

    d = tmp_path_factory.mktemp("two")
    for name, data in TWO_DOCS.items():
        (d / name).write_bytes(data)
    out = d / "two.vec"
    vecarc.pack([d / n for n in TWO_DOCS], out, replace(FAST, chunk_tokens=2, min_chunk_tokens=1), model=tiny)
    return out.read_bytes()


@pytest.fixture()
def packed(tmp_path, tiny_dir):
    """hello.txt (TEXT) packed by the CLI into tmp_path / "hello.txt.vec".

    test_volumes.py overrides it with a `packed` of its own (a pack cut into volumes)."""
    src = tmp_path / "hello.txt"
    src.write_bytes(TEXT)
    code, out = run_cli("pack", src, "--model", tiny_dir, *CLI_FAST, "-q")
    assert code == 0, out
    return tmp_path / "hello.txt.vec"


@pytest.fixture(scope="session")
def predicted(trained_tiny, tmp_path_factory):
    """A text the trained model partly knows and a bytes document, packed in predicted mode with the trained
    tiny model: (folder, archive path, pack result)."""
    import vecarc

    d = tmp_path_factory.mktemp("pred")
    (d / "a.txt").write_text(TRAIN_TEXT[:300] + " Something the model has never read: zq 42 xv.\n")
    (d / "b.bin").write_bytes(bytes(range(200)))
    out = d / "p.vec"
    r = vecarc.pack([d / "a.txt", d / "b.bin"], out, vecarc.PackConfig(mode="predict", chunk_tokens=40),
                    model=trained_tiny)
    return d, out, r


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def other_tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny2"), seed=1)


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("trained"), seed=2, train_steps=150)


@pytest.fixture(scope="session")
def trained_tiny(trained_dir):
    from vecarc.models import load_model

    return load_model(str(trained_dir), device="cpu")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from vecarc.models import load_model

    return load_model(str(tiny_dir), device="cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Real-model tests share one conversion; everything else must not touch ~/.cache.
    import os

    if "VECARC_CACHE" not in os.environ:
        monkeypatch.setenv("VECARC_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
