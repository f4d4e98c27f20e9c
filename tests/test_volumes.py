"""Packs cut into volumes and an index: documents split across volumes come back byte for byte,
a damaged or missing volume is refused before anything is written, a resumed pack keeps the
volumes already written, and a crafted index is refused with one line."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import run_cli

import vecarc
from vecarc.errors import VecarcError
from vecarc.format.index import MAGIC, PREFIX, read_index
from vecarc.tiny import TRAIN_TEXT
from vecarc.volumes import plan_volumes

DOCS = {"a.txt": TRAIN_TEXT[:1900].encode(), "b/c.txt": "naïve café — 🎉\n".encode() * 30, "d.txt": b""}


def _inputs(d, docs=DOCS):
    (d / "b").mkdir(exist_ok=True)
    for name, data in docs.items():
        (d / name).write_bytes(data)
    return list(docs)


def test_volumes_are_cut_at_line_ends_and_character_starts(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"line one\nline two\n" * 10)
    (tmp_path / "y.txt").write_bytes("é".encode() * 100)  # no line end: cut between characters
    ins = [(tmp_path / n, n, (tmp_path / n).stat().st_size) for n in ("x.txt", "y.txt")]
    vols = plan_volumes(ins, 64)
    assert all(v.size <= 64 for v in vols) and len(vols) > 4
    for name, size in (("x.txt", 180), ("y.txt", 200)):
        pieces = [p for v in vols for p in v.pieces if p.name == name]
        assert sum(p.size for p in pieces) == size and [p.offset for p in pieces] == sorted(p.offset for p in pieces)
        data = (tmp_path / name).read_bytes()
        for p in pieces:
            piece = data[p.offset : p.offset + p.size]
            piece.decode("utf-8")  # whole characters
            if name == "x.txt" and p.offset + p.size < size:
                assert piece.endswith(b"\n")


@pytest.fixture()
def packed(tmp_path, monkeypatch, trained_tiny):
    monkeypatch.chdir(tmp_path)
    r = vecarc.pack(_inputs(tmp_path), "v.vec", model=trained_tiny, chunk_tokens=64, volume_size=700)
    return tmp_path, r


def test_a_pack_larger_than_a_volume_round_trips(packed, trained_tiny):
    d, r = packed
    index = read_index(d / "v.vec")
    assert r.index == index and len(index.volumes) >= 3 and (d / "v.vec.0001").is_file()
    split = next(doc for doc in index.documents if doc.name == "a.txt")
    assert len(split.parts) >= 2  # one document across volumes
    assert vecarc.verify(d / "v.vec", model=trained_tiny, strict=True).ok
    written = vecarc.unpack(d / "v.vec", d / "out", model=trained_tiny)
    assert {p.relative_to(d / "out").as_posix(): p.read_bytes() for p in written} == DOCS
    code, out = run_cli("info", d / "v.vec", "--json")
    s = json.loads(out)
    assert code == 0 and s["original_bytes"] == sum(map(len, DOCS.values())) and len(s["volumes"]) == len(index.volumes)
    code, out = run_cli("verify", d / "v.vec", "--model", trained_tiny.folder)
    assert code == 0 and "OK (3 documents)" in out


def test_a_damaged_or_missing_volume_is_refused_before_writing(packed, trained_tiny):
    d, _ = packed
    second = d / "v.vec.0002"
    good = second.read_bytes()
    second.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(VecarcError, match="volume v.vec.0002 is not the one v.vec names"):
        vecarc.unpack(d / "v.vec", d / "out", model=trained_tiny)
    assert not (d / "out").exists() or not any((d / "out").rglob("*.txt"))
    second.unlink()
    code, out = run_cli("unpack", d / "v.vec", "-o", d / "out", "--model", trained_tiny.folder)
    assert code == 2 and "volume v.vec.0002 of v.vec is missing" in out
    assert not any((d / "out").rglob("*.txt")) if (d / "out").exists() else True
    code, out = run_cli("verify", d / "v.vec", "--model", trained_tiny.folder)
    assert code == 1 and "is missing" in out


def test_a_resumed_pack_keeps_the_volumes_already_written(packed, trained_tiny):
    d, r = packed
    n = len(r.index.volumes)
    kept = {k: (d / f"v.vec.{k:04d}").stat().st_mtime_ns for k in range(1, n)}
    (d / "v.vec").unlink()
    (d / f"v.vec.{n:04d}").unlink()  # as if killed while packing the last volume
    with pytest.raises(VecarcError, match="v.vec.0001 exists"):
        vecarc.pack(list(DOCS), "v.vec", model=trained_tiny, chunk_tokens=64, volume_size=700)
    r2 = vecarc.pack(list(DOCS), "v.vec", model=trained_tiny, chunk_tokens=64, volume_size=700, resume=True)
    assert r2.index == r.index
    assert {k: (d / f"v.vec.{k:04d}").stat().st_mtime_ns for k in range(1, n)} == kept


def _index(raw: dict) -> bytes:
    text = json.dumps(raw).encode()
    head = PREFIX.pack(MAGIC, 1, 0, len(text)) + text
    return head + hashlib.sha256(head).digest()


GOOD = {"format": "vecarc-index", "volumes": [{"file": "x.vec.0001", "size": 10, "sha256": "0" * 64}],
        "documents": [{"name": "a.txt", "size": 5, "sha256": "0" * 64, "parts": [[0, 5]]}]}


@pytest.mark.parametrize("change, message", [
    (lambda r: r["volumes"][0].update(file="../x"), "is not a plain name"),
    (lambda r: r["documents"][0].update(size=6), "the parts do not add up"),
    (lambda r: r["documents"][0].update(parts=[[1, 5]]), "bad document part"),
    (lambda r: r["documents"][0].update(name="../a"), "corrupt archive"),
    (lambda r: r["volumes"].append({"file": "x.vec.0002", "size": 1, "sha256": "0" * 64}), "holds no document"),
])
def test_a_crafted_index_is_refused(tmp_path, change, message):
    raw = json.loads(json.dumps(GOOD))
    assert read_index(_write(tmp_path, _index(raw))).volumes
    change(raw)
    with pytest.raises(VecarcError, match=message):
        read_index(_write(tmp_path, _index(raw)))


def test_a_damaged_index_is_refused(tmp_path):
    data = bytearray(_index(GOOD))
    data[20] ^= 1
    with pytest.raises(VecarcError, match="corrupt volume index: checksum mismatch"):
        read_index(_write(tmp_path, bytes(data)))
    with pytest.raises(VecarcError, match="bad flags or length"):
        read_index(_write(tmp_path, bytes(data[:-1])))


def _write(d, data: bytes):
    p = d / "i.vec"
    p.write_bytes(data)
    return p


def _peak_rss_mib(args, cwd) -> float:
    import os
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "vecarc.cli", *map(str, args)], cwd=cwd,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, err.decode()[-2000:]
    return usage.ru_maxrss / 1024


def test_peak_memory_follows_the_volume_not_the_input(tmp_path, trained_dir):
    # Vector chunks tried for one step and kept as literal tokens: the data path (reading, tokenizing,
    # planning, the journal, the archive), as benchmarks/large_input.py measures it at 1 and 8 MiB.
    from importlib import resources

    text = resources.files("vecarc").joinpath("calibration.txt").read_bytes()
    rss = {}
    for size in (256 << 10, 2 << 20):
        src = tmp_path / f"in-{size}.txt"
        src.write_bytes((text * (size // len(text) + 1))[:size])
        rss[size] = _peak_rss_mib(["pack", src.name, "-o", f"{src.name}.vec", "--model", trained_dir, "--mode",
                                   "vectors", "--chunk-tokens", "64", "--min-chunk-tokens", "64", "--max-steps", "1",
                                   "--volume-size", "128K", "-q"], tmp_path)
        assert read_index(tmp_path / f"{src.name}.vec").volumes
    assert rss[2 << 20] - rss[256 << 10] < 24, rss  # 8x the input, the same volumes: within noise
