"""Hostile archives: random bytes, truncations, byte mutations and re-sealed header
mutations (valid checksum, so only validation stands between them and the decoder).

Every case must end in VecarcError — never another exception — within a time bound,
and unpack must write nothing. CI runs a bounded number of cases;
`VECARC_FUZZ_CASES=5000 pytest tests/test_fuzz.py` runs a longer campaign.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tracemalloc

import pytest
from helpers import TRAIN_TEXT, json_paths, mutate_json, reseal, resealed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vecarc
from vecarc import VecarcError
from vecarc.api import summary
from vecarc.format import parse_archive
from vecarc.inputs import read_inputs

CASES = int(os.environ.get("VECARC_FUZZ_CASES", "300"))
SLOW_CASES = max(10, CASES // 10)  # cases that may load the model and decode
RAN = {"parse": 0, "resealed": 0, "structured": 0, "unpack": 0}


@pytest.fixture(scope="module", params=["vectors", "predicted"])
def base(request, two_docs, tiny, trained_tiny, tmp_path_factory):
    """A good archive of each chunk kind the packer writes, with the model that decodes it."""
    if request.param == "vectors":
        return two_docs, tiny
    d = tmp_path_factory.mktemp("pred")
    (d / "a.txt").write_text(TRAIN_TEXT[:200])
    (d / "b.bin").write_bytes(bytes(range(256)))
    vecarc.pack([d / "a.txt", d / "b.bin"], d / "p.vec", vecarc.PackConfig(mode="predict", chunk_tokens=16),
                model=trained_tiny)
    data = (d / "p.vec").read_bytes()
    kinds = {c.kind for c in parse_archive(data).chunks}
    assert {"predicted", "bytes"} <= kinds, kinds
    return data, trained_tiny


@pytest.fixture(scope="module")
def good(base) -> bytes:
    return base[0]


def _parse_only(data: bytes) -> None:
    """parse + info's summary: VecarcError or success, bounded Python allocation."""
    tracemalloc.start()
    try:
        a = parse_archive(data)
        summary(a)
    except VecarcError as e:
        assert "\n" not in str(e)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 << 20, f"parsing allocated {peak} bytes"


BOUND = settings(max_examples=CASES, deadline=2000, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW_BOUND = settings(max_examples=SLOW_CASES, deadline=20000, suppress_health_check=list(HealthCheck),
                      derandomize=True)


@BOUND
@given(data=st.binary(max_size=4096))
def test_random_bytes(data):
    RAN["parse"] += 1
    _parse_only(data)
    _parse_only(b"\x89VEC\r\n\x1a\n" + data)  # past the magic number


@BOUND
@given(st.data())
def test_truncated_and_mutated(good, data):
    RAN["parse"] += 1
    raw = bytearray(good)
    op = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete", "splice"]))
    pos = data.draw(st.integers(0, len(raw) - 1))
    if op == "truncate":
        raw = raw[:pos]
    elif op == "flip":
        raw[pos] ^= data.draw(st.integers(1, 255))
    elif op == "insert":
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=64))
    elif op == "delete":
        del raw[pos : pos + data.draw(st.integers(1, 64))]
    else:
        raw[pos : pos + 8] = data.draw(st.binary(min_size=8, max_size=8))
    if bytes(raw) == good:
        return
    with pytest.raises(VecarcError):
        parse_archive(bytes(raw))


def _resealed(good: bytes, data) -> bytes:
    return resealed(good, lambda h: mutate_json(h, data))


HOSTILE_INTS = st.sampled_from([0, 1, 2, 7, 255, 256, 4095, 65535, 65536, 2**20, 2**31 - 1, 2**32 - 1, 2**32,
                                 2**62, 2**63 - 1])


def _structured(good: bytes, data) -> bytes:
    """A header of the right shape with hostile numbers: counts, sizes, offsets, ranks, repeated entries, aliases."""
    def mutate(h: dict) -> None:
        for _ in range(data.draw(st.integers(1, 4))):
            op = data.draw(st.sampled_from(["number", "repeat", "alias", "widen"]))
            if op == "number":
                paths = [p for p in json_paths(h) if p and type(_at(h, p)) is int]
                path = data.draw(st.sampled_from(paths))
                _at(h, path[:-1])[path[-1]] = data.draw(HOSTILE_INTS)
            elif op == "repeat":
                key = data.draw(st.sampled_from(["chunks", "documents"]))
                if h[key]:
                    entry = data.draw(st.sampled_from(h[key]))
                    h[key] += [copy.deepcopy(entry) for _ in range(data.draw(st.integers(1, 3000)))]
            elif op == "alias":
                blocks = [c for c in h["chunks"] if c.get("kind") in ("tokens", "bytes")]
                for c in blocks[1:]:
                    c.update(offset=blocks[0]["offset"], length=blocks[0]["length"])
            else:
                rank, width = data.draw(HOSTILE_INTS), data.draw(HOSTILE_INTS)
                h["vectors"].update(rank=rank, basis={"kind": "rademacher-sha256", "seed": 0}, hidden_size=width)
                h["model"]["hidden_size"] = width

    return resealed(good, mutate)


def _at(obj, path):
    for k in path:
        obj = obj[k]
    return obj


@BOUND
@given(st.data())
def test_structured_hostile_headers_parse(good, data):
    RAN["structured"] += 1
    _parse_only(_structured(good, data))


@BOUND
@given(st.data())
def test_resealed_header_mutations_parse(good, data):
    RAN["resealed"] += 1
    _parse_only(_resealed(good, data))


@SLOW_BOUND
@given(st.data())
def test_resealed_mutations_never_crash_unpack(base, tmp_path_factory, data):
    """Verify and unpack a re-sealed mutant: VecarcError / VerificationError or an exact result, nothing written."""
    RAN["unpack"] += 1
    good, model = base
    raw = _resealed(good, data) if data.draw(st.booleans()) else _structured(good, data)
    d = tmp_path_factory.mktemp("u")
    path = d / "m.vec"
    path.write_bytes(raw)
    out = d / "out"
    try:
        written = vecarc.unpack(path, out, model=model)
    except VecarcError as e:
        assert "\n" not in str(e)
        assert not out.exists() or not any(out.rglob("*")), "unpack wrote something before failing"
        return
    # A mutation that unpack accepted: every file inside the output folder, each matching its hash.
    for doc, p in zip(parse_archive(raw).documents, written):
        assert p.resolve().is_relative_to(out.resolve())
        assert hashlib.sha256(p.read_bytes()).hexdigest() == doc.sha256


def test_report_counts():
    # Runs last in this file (pytest keeps file order): says how many cases ran.
    print(f"fuzz cases: {RAN}")
    assert RAN["parse"] >= 1 and RAN["resealed"] >= 1 and RAN["structured"] >= 1


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape.txt", "a/../../b.txt", "C:/x.txt", "a//b.txt", "./a.txt",
                                  "a\\..\\b.txt", "nul\x00.txt", "esc\x1b[2J.txt", "two\nlines.txt", "bad\udcff.txt",
                                  "x" * 300 + ".txt", "line\u2028sep.txt"])
def test_unsafe_names_are_refused(good, tmp_path, name):
    h = parse_archive(good).header.to_json()
    h["documents"][0]["name"] = name
    bad = tmp_path / "bad.vec"
    bad.write_bytes(reseal(good, h))
    with pytest.raises(VecarcError, match="unsafe document name"):
        vecarc.unpack(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_duplicate_names_are_refused(good, tmp_path):
    h = parse_archive(good).header.to_json()
    h["documents"][1]["name"] = h["documents"][0]["name"]
    bad = tmp_path / "dup.vec"
    bad.write_bytes(reseal(good, h))
    with pytest.raises(VecarcError, match="duplicate document name"):
        vecarc.unpack(bad, tmp_path / "out")


@pytest.mark.parametrize("first,second,why", [
    ("Notes.txt", "notes.txt", "differ only in case"),
    ("caf\u00e9.txt", "cafe\u0301.txt", "Unicode normalisation"),
    ("a", "a/b.txt", "is also a folder of"),
    ("A", "a/b.txt", "is also a folder of"),
])
def test_names_that_would_overwrite_each_other_are_refused(good, tmp_path, first, second, why):
    def rename(h):
        h["documents"][0]["name"], h["documents"][1]["name"] = first, second

    with pytest.raises(VecarcError, match=why):
        parse_archive(resealed(good, rename))


def test_pack_refuses_inputs_whose_names_collide_elsewhere(tmp_path):
    for name in ("Notes.txt", "notes.txt"):
        (tmp_path / name).write_text(name)
    with pytest.raises(VecarcError, match="cannot store these inputs: document names 'Notes.txt' and 'notes.txt' "
                                          "differ only in case"):
        read_inputs([tmp_path / "Notes.txt", tmp_path / "notes.txt"])


def test_symlink_in_target_path_is_refused(good, tiny, tmp_path):
    h = parse_archive(good).header.to_json()
    h["documents"][0]["name"] = "sub/a.txt"
    arc = tmp_path / "sub.vec"
    arc.write_bytes(reseal(good, h))
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(VecarcError, match="symlink"):
        vecarc.unpack(arc, out, model=tiny)
    assert not any(outside.iterdir()) and not (out / "b.bin").exists()
