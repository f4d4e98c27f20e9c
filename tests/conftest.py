"""Shared fixtures: a tiny Llama with a byte-level BPE tokenizer, built and saved
locally, then loaded through vecarc's real loading code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import FAST, TWO_DOCS

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
