"""The archive reader refusing bad input: truncated, flipped and foreign files, hostile
headers (re-sealed with a valid checksum), header JSON and sizes outside the format's rules, literal blocks
that alias, corrections sections that lie, and fingerprints of another version's scheme.

The cost bounds of resource bombs are in test_hostile.py, random hostile archives in test_fuzz.py, and
vectors that parse but do not decode to their documents (refused by verify and unpack) in test_unpacking.py."""

from __future__ import annotations

import struct

import pytest
from helpers import reseal, resealed
from helpers import run_cli as run

import vecarc
from vecarc import VecarcError, read_archive
from vecarc.format import MAGIC, PREFIX, VERSION, parse_archive, serialize


def _error_line(path) -> str:
    code, out = run("info", path)
    assert code == 2
    assert out.count("\n") == 1 and "Traceback" not in out
    return out


def test_truncated_archive(tmp_path, packed):
    data = packed.read_bytes()
    for cut in (3, 20, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.vec"
        bad.write_bytes(data[:cut])
        assert "truncated" in _error_line(bad)


def test_flipped_byte(tmp_path, packed):
    data = bytearray(packed.read_bytes())
    for pos in (40, len(data) // 2, len(data) - 5):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad = tmp_path / "flip.vec"
        bad.write_bytes(bytes(flipped))
        assert "checksum mismatch" in _error_line(bad)


def test_wrong_magic_and_version(tmp_path, packed):
    data = packed.read_bytes()
    bad = tmp_path / "magic.vec"
    bad.write_bytes(b"")
    assert "not a vecarc archive" in _error_line(bad)
    bad.write_bytes(b"PK\x03\x04" + data[4:])
    assert "not a vecarc archive" in _error_line(bad)
    bad.write_bytes(data[:8] + struct.pack("<H", 9) + data[10:])
    assert "unsupported archive version 9" in _error_line(bad)


def _resealed(archive, mutate) -> bytes:
    """A hostile archive with a valid checksum: only header validation can stop it."""
    return resealed(serialize(archive), mutate)


def test_hostile_headers_are_refused(tmp_path, packed):
    cases = {
        "unsafe document name": lambda h: h["documents"][0].update(name="../evil.txt"),
        "more vector chunks than vectors": lambda h: h["chunks"].append(
            dict(next(c for c in h["chunks"] if c["kind"] == "vector"), doc=len(h["documents"]) - 1)),
        "rank 65 is larger than the model dimension 64": lambda h: h["vectors"].update(
            rank=65, basis={"kind": "rademacher-sha256", "seed": 0}),
        "unknown vector basis": lambda h: h["vectors"].update(rank=8, basis={"kind": "gaussian", "seed": 0}),
        "compressed vectors section claims": lambda h: h["vectors"].update(compression="zstd",
                                                                         count=h["vectors"]["section"][1]),
        "unknown vectors compression": lambda h: h["vectors"].update(compression="lz4"),
        "bad chunk hash": lambda h: next(c for c in h["chunks"] if c["kind"] == "vector").update(hash="xyz"),
        "sink_token_id": lambda h: h["model"].update(sink_token_id=10**9),
        "per_chunk out of range": lambda h: h["vectors"].update(per_chunk=1000),
        "unknown vector dtype 'int3'": lambda h: h["vectors"].update(dtype="int3"),
        "vectors section is": lambda h: h["vectors"].update(dtype="fp32", compression="none"),  # a lie about the data
    }
    for want, mutate in cases.items():
        data = _resealed(read_archive(packed), mutate)
        with pytest.raises(VecarcError, match=want):
            parse_archive(data)


def test_header_size_checked_before_allocation():
    prefix = PREFIX.pack(MAGIC, VERSION, 0, 1 << 30, 1 << 30, 0, 0)
    with pytest.raises(VecarcError, match="header size out of range"):
        parse_archive(prefix + b"\0" * 32)
    prefix = PREFIX.pack(MAGIC, VERSION, 0, 10, 10, 0, 1 << 60)
    with pytest.raises(VecarcError, match="truncated"):
        parse_archive(prefix + b"\0" * 42)


def test_header_json_is_strict():
    from vecarc.format.strict import parse_json

    assert parse_json('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    with pytest.raises(ValueError, match="key 'a' appears twice"):
        parse_json('{"a": 1, "b": {}, "a": 2}')
    for constant in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError, match="is not a JSON number"):
            parse_json(f'{{"margin": {constant}}}')
    with pytest.raises(RecursionError):
        parse_json("[" * 100_000 + "]" * 100_000)  # the reader turns this into "header does not decode"


def test_literal_blocks_must_not_alias(tmp_path, tiny):
    """Two chunks pointing at one block would each be copied: blocks are disjoint and in order."""
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(f"{name} holds a sentence the search is not allowed to solve.")
    hopeless = vecarc.PackConfig(mode="vectors", margin=1e9, search=vecarc.SearchSettings(max_steps=1, batch_size=8),
                                 chunk_tokens=8)
    vecarc.pack([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "l.vec", hopeless, model=tiny)
    good = (tmp_path / "l.vec").read_bytes()
    blocks = [c for c in parse_archive(good).chunks if c.is_literal]
    assert len(blocks) == 2

    def alias(h):
        first, second = (c for c in h["chunks"] if c["kind"] != "vector")
        second.update(offset=first["offset"], length=first["length"])

    with pytest.raises(VecarcError, match="literal blocks overlap or are out of order"):
        parse_archive(resealed(good, alias))


def test_reader_refuses_lies_about_the_corrections(predicted):
    _, out, _ = predicted
    good = out.read_bytes()
    a = parse_archive(good)
    assert a.header.corrections.count > 0

    def more(h):
        h["corrections"]["count"] += 1

    def chunk(h):
        next(c for c in h["chunks"] if c["kind"] == "predicted")["corrections"] += 1

    def gone(h):
        del h["corrections"]

    def short(h):
        h["corrections"]["section"][1] -= 1

    for mutate, message in ((more, "chunks hold"), (chunk, "chunks hold"),
                            (gone, "'corrections' missing"), (short, "corrupt")):
        with pytest.raises(VecarcError, match=message):
            parse_archive(resealed(good, mutate))


def test_a_format_2_header_cannot_hold_predicted_chunks(predicted):
    _, out, _ = predicted
    good = out.read_bytes()
    h = parse_archive(good).header.to_json()
    del h["corrections"]
    h["model"]["fingerprint"] = "sha256:" + "0" * 64  # format 2's scheme
    v2 = PREFIX.pack(MAGIC, 2, *PREFIX.unpack(good[: PREFIX.size])[2:]) + good[PREFIX.size :]
    with pytest.raises(VecarcError, match="format 2 has no predicted chunks"):
        parse_archive(reseal(v2, h))


@pytest.mark.parametrize("version, fingerprint", [(4, "sha256:" + "0" * 64), (3, "fp2:" + "0" * 64),
                                                  (4, "fp2:" + "0" * 63), (4, "fp2:" + "A" * 64)])
def test_the_fingerprint_must_be_of_the_versions_scheme(predicted, version, fingerprint):
    _, out, _ = predicted
    good = out.read_bytes()
    h = parse_archive(good).header.to_json()
    h["model"]["fingerprint"] = fingerprint
    other = PREFIX.pack(MAGIC, version, *PREFIX.unpack(good[: PREFIX.size])[2:]) + good[PREFIX.size :]
    with pytest.raises(VecarcError, match=f"model.fingerprint is not a format-{version} fingerprint"):
        parse_archive(reseal(other, h))

