"""Packs cut into volumes and an index: documents split across volumes come back byte for byte,
a damaged or missing volume is refused before anything is written, a resumed pack keeps the
volumes already written, and a crafted index is refused with one line."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace

import pytest
from helpers import run_cli

import vecarc
from vecarc import PackConfig
from vecarc.errors import VecarcError
from vecarc.format.index import MAGIC, PREFIX, read_index
from vecarc.tiny import TRAIN_TEXT
from vecarc.volumes import plan_volumes

VOLUMES = PackConfig(mode="predict", chunk_tokens=64, volume_size=700)  # predicted chunks, volumes of 700 input bytes
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
    r = vecarc.pack(_inputs(tmp_path), "v.vec", VOLUMES, model=trained_tiny)
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
    assert not (d / "out").exists()  # volume 1 was decoded and staged: its files and folders are gone
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
        vecarc.pack(list(DOCS), "v.vec", VOLUMES, model=trained_tiny)
    r2 = vecarc.pack(list(DOCS), "v.vec", VOLUMES, model=trained_tiny, resume=True)
    assert r2.index == r.index
    assert {k: (d / f"v.vec.{k:04d}").stat().st_mtime_ns for k in range(1, n)} == kept


def test_a_resumed_pack_in_another_mode_or_margin_packs_the_volumes_again(packed, trained_tiny):
    """A volume left by a pack with other settings is not the one this pack would write: it is replaced."""
    d, r = packed
    n = len(r.index.volumes)
    for other in (replace(VOLUMES, margin=0.25), replace(VOLUMES, mode="vectors", margin=0.05)):
        (d / "v.vec").unlink()  # as if killed after the last volume, before the index
        r2 = vecarc.pack(list(DOCS), "v.vec", other, model=trained_tiny, resume=True)
        assert len(r2.index.volumes) == n
        for k in range(n):
            h = vecarc.read_archive(d / f"v.vec.{k + 1:04d}", load_vectors=False).header
            assert (h.cram["mode"], h.required_margin) == (other.mode, other.margin)
        assert vecarc.verify(d / "v.vec", model=trained_tiny).ok


def test_a_resumed_pack_with_another_model_packs_the_volumes_again(packed, trained_tiny, other_tiny_dir):
    d, r = packed
    other = vecarc.load_model(str(other_tiny_dir), "cpu")
    (d / "v.vec").unlink()
    vecarc.pack(list(DOCS), "v.vec", VOLUMES, model=other, resume=True)
    for k in range(len(r.index.volumes)):
        h = vecarc.read_archive(d / f"v.vec.{k + 1:04d}", load_vectors=False).header
        assert h.model.fingerprint == other.fingerprint != trained_tiny.fingerprint
    assert vecarc.verify(d / "v.vec", model=other).ok


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "same-mtime"])
def test_an_input_rewritten_during_a_volume_pack_fails_it(tmp_path, monkeypatch, trained_tiny, keep_mtime):
    """A part read after the file changed would make a document that never existed (tar: "file changed as
    we read it"): the pack fails with one line and writes no index, whether or not the mtime moved."""
    import os

    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path)
    a = tmp_path / "a.txt"
    before = a.stat()

    def on(e: dict) -> None:
        if e["event"] == "note" and e["message"].startswith("volume 1 of"):
            a.write_bytes(a.read_bytes().upper())  # same size, other bytes
            if keep_mtime:
                os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))

    with pytest.raises(VecarcError, match="a.txt changed while it was packed"):
        vecarc.pack(list(DOCS), "v.vec", VOLUMES, model=trained_tiny, progress=on)
    assert not (tmp_path / "v.vec").exists()


@pytest.mark.parametrize("victim", ["v.vec.0001", "v.vec.0002.journal", "v.vec.journal", "link", "temp"])
def test_an_input_that_pack_would_write_is_refused(tmp_path, monkeypatch, trained_tiny, victim):
    """Volumes, journals and temporaries of the output are never inputs: by path, or by inode (a hard link)."""
    import os

    monkeypatch.chdir(tmp_path)
    names = _inputs(tmp_path)
    if victim == "link":
        (tmp_path / "notes").write_bytes(b"my notes\n")
        os.link(tmp_path / "notes", tmp_path / "v.vec.0002")  # the user's file, under a volume's name too
        path = "notes"
    elif victim == "temp":
        path = ".v.vec.1234.abcd.vecarc-tmp"
        (tmp_path / path).write_bytes(b"my notes\n")
    else:
        path = victim
        (tmp_path / path).write_bytes(b"my notes\n")
    with pytest.raises(VecarcError, match=f"the input {re.escape(path)} is .*which this pack writes"):
        vecarc.pack([*names, path], "v.vec", VOLUMES, model=trained_tiny, force=True)
    assert (tmp_path / path).read_bytes() == b"my notes\n"
    code, out = run_cli("pack", *names, path, "-o", "v.vec", "--volume-size", "700", "--chunk-tokens", "64", "-f",
                        "--model", trained_tiny.folder)
    assert code == 2 and "which this pack writes" in out and (tmp_path / path).read_bytes() == b"my notes\n"


def test_the_journal_of_a_single_archive_is_not_an_input(tmp_path, monkeypatch, trained_tiny):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "one.vec.journal").write_bytes(b"my notes\n")
    with pytest.raises(VecarcError, match="the input one.vec.journal is one.vec.journal, which this pack writes"):
        vecarc.pack(["one.vec.journal"], "one.vec", model=trained_tiny, force=True)
    assert (tmp_path / "one.vec.journal").read_bytes() == b"my notes\n"


def _rewrite_index(path, change) -> None:
    """The index at path with change(index) applied: well-formed, so only what verify compares can tell."""
    index = read_index(path)
    change(index)
    path.write_bytes(index.to_bytes())


@pytest.mark.parametrize("change, message", [
    (lambda ix: ix.documents[0].__setattr__("sha256", "0" * 64), "a.txt: its parts do not match its SHA-256"),
    (lambda ix: (ix.documents[0].parts[0].__setattr__("size", ix.documents[0].parts[0].size - 1),
                 ix.documents[0].parts[1].__setattr__("size", ix.documents[0].parts[1].size + 1)),
     r"a.txt: volume v.vec.0001 holds \d+ bytes of it, the index says \d+"),
])
def test_verify_checks_the_index_documents_parts_and_hashes(packed, trained_tiny, change, message):
    d, _ = packed
    _rewrite_index(d / "v.vec", change)
    r = vecarc.verify(d / "v.vec", model=trained_tiny)
    assert not r.ok and any(re.search(message, p) for p in r.problems), r.problems
    with pytest.raises(VecarcError, match=message):
        vecarc.unpack(d / "v.vec", d / "out", model=trained_tiny)
    assert not (d / "out").exists() or not any((d / "out").rglob("*.txt"))


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


@pytest.mark.parametrize("text", [b"[" * 200_000 + b"]" * 200_000, b'{"format": "vecarc-index", "volumes": '
                                  + b"1" * 5000 + b"}"], ids=["deep-nesting", "5000-digit-number"])
def test_index_json_the_parser_cannot_hold_is_one_line(tmp_path, text):
    head = PREFIX.pack(MAGIC, 1, 0, len(text)) + text
    path = _write(tmp_path, head + hashlib.sha256(head).digest())
    for verb in (("info",), ("verify", "--model", "x"), ("unpack", "-o", tmp_path / "out")):
        code, out = run_cli(verb[0], path, *verb[1:])
        assert code == 2 and "corrupt volume index: not strict UTF-8 JSON" in out and "internal error" not in out
    assert not (tmp_path / "out").exists()


def test_a_full_disk_during_an_index_unpack_is_one_line_and_leaves_nothing(packed, trained_tiny, monkeypatch):
    import errno

    from vecarc import writer

    d, _ = packed
    real = writer.write_temp

    def full(target, data):
        if target.name == "c.txt":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(target, data)

    monkeypatch.setattr(writer, "write_temp", full)
    code, out = run_cli("unpack", d / "v.vec", "-o", d / "out", "--model", trained_tiny.folder)
    assert code == 2 and "cannot write" in out and "No space left on device" in out and "internal error" not in out
    assert not (d / "out").exists()
