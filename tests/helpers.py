"""What many tests share: settings that solve tiny-model chunks fast, the CLI in-process, re-sealed archives."""

from __future__ import annotations

from hypothesis import strategies as st

from vecarc import PackConfig, SearchSettings
from vecarc.tiny import TRAIN_TEXT  # noqa: F401 - tests import it from here

# Vector mode, tuned to solve tiny-model chunks in seconds.
FAST = PackConfig(mode="vectors", margin=0.05, search=SearchSettings(max_steps=150, patience=50, batch_size=64))
TWO_DOCS = {"a.txt": b"The quick brown fox.", "b.bin": bytes(range(256))}
# The CLI's counterpart of FAST (and two-token chunks), and the text of the `packed` fixture's hello.txt.
CLI_FAST = ["--mode", "vectors", "--margin", "0.05", "--max-steps", "150", "--batch-size", "64", "--chunk-tokens", "2"]
TEXT = b"Hello there, general Kenobi.\n"


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



# Any JSON value a hostile writer could put in a record, NaN and huge integers included.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=8,
)


def json_paths(obj, prefix=()):
    """Every path into a JSON value (the empty path, the value itself, first)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from json_paths(v, prefix + (i,))


def mutate_json(obj, data, times: int = 3) -> None:
    """Replace or delete up to `times` values somewhere inside obj (in place), drawn from `data`."""
    paths = [p for p in json_paths(obj) if p]
    if not paths:
        return
    for _ in range(data.draw(st.integers(1, times))):
        path = data.draw(st.sampled_from(paths))
        parent = obj
        try:
            for k in path[:-1]:
                parent = parent[k]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(JSON)
        except (KeyError, IndexError, TypeError):
            pass
