"""What many tests share: settings that solve tiny-model chunks fast, the CLI in-process, re-sealed archives."""

from __future__ import annotations

from vecarc import PackConfig, SearchSettings
from vecarc.tiny import TRAIN_TEXT  # noqa: F401 - tests import it from here

# Vector mode, tuned to solve tiny-model chunks in seconds.
FAST = PackConfig(mode="vectors", margin=0.05, search=SearchSettings(max_steps=150, patience=50, batch_size=64))
TWO_DOCS = {"a.txt": b"The quick brown fox.", "b.bin": bytes(range(256))}


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

