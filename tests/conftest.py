"""Shared fixtures: a tiny Llama with a byte-level BPE tokenizer, built and saved
locally, then loaded through vecarc's real loading code."""

from __future__ import annotations

from pathlib import Path

import pytest

from vecarc.search import CramSettings
from vecarc.tiny import TRAIN_TEXT, build_tiny_model  # noqa: F401 - tests import TRAIN_TEXT from here

# Vector mode, tuned to solve tiny-model chunks in seconds.
FAST = CramSettings(mode="vectors", margin=0.05, max_steps=150, patience=50, batch_size=64)


def run_cli(*args) -> tuple[int, str]:
    """vecarc's CLI in-process: (exit code, output)."""
    from click.testing import CliRunner

    from vecarc.cli import main

    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.output


def resealed(good: bytes, mutate) -> bytes:
    """The good archive with mutate() applied to its header JSON, re-sealed with a valid checksum."""
    from vecarc.format import parse_archive

    header = parse_archive(good).header.to_json()
    mutate(header)
    return reseal(good, header)


def reseal(good: bytes, header) -> bytes:
    """The good archive's body, byte for byte, under another header, with a valid checksum:
    only header validation can stop it."""
    import hashlib
    import json

    from vecarc.format import CHECKSUM_LEN, MAGIC, PREFIX, compress_header

    _, version, flags, zlen, _, reserved, body_len = PREFIX.unpack(good[: PREFIX.size])
    body = good[PREFIX.size + zlen : len(good) - CHECKSUM_LEN]
    header = json.loads(json.dumps(header, allow_nan=True))
    for ch in header.get("chunks", []) if isinstance(header, dict) and isinstance(header.get("chunks"), list) else []:
        if isinstance(ch, dict) and ch.get("kind") == "vector":
            ch.pop("index", None)  # the reader's annotation, not stored
    text = json.dumps(header, allow_nan=True).encode()
    z = compress_header(text, version)
    head = PREFIX.pack(MAGIC, version, flags, len(z), len(text), reserved, body_len)
    return head + z + body + hashlib.sha256(head + z + body).digest()


TWO_DOCS = {"a.txt": b"The quick brown fox.", "b.bin": bytes(range(256))}


@pytest.fixture(scope="session")
def two_docs(tmp_path_factory, tiny) -> bytes:
    """An archive of TWO_DOCS (a text, held by vectors and literals; a bytes document) packed with the tiny model."""
    import vecarc

    d = tmp_path_factory.mktemp("two")
    for name, data in TWO_DOCS.items():
        (d / name).write_bytes(data)
    out = d / "two.vec"
    vecarc.pack([d / n for n in TWO_DOCS], out, model=tiny, settings=FAST, chunk_tokens=2, min_chunk_tokens=1)
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
