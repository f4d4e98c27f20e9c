"""Packing on a Ray cluster (a local one of 2 CPUs) with the tiny model: the archive unpacks
byte-identically and verifies strictly; a worker that dies is replaced and its shard retried;
a driver killed mid-pack resumes from its journal without redoing a journaled shard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from functools import partial

import pytest
from helpers import FAST

import vecarc
from vecarc import PackConfig, SearchSettings
from vecarc.errors import VecarcError
from vecarc.tiny import TRAIN_TEXT

ray = pytest.importorskip("ray")

DOCS = {"fox.txt": TRAIN_TEXT[:1500].encode(), "notes/step.txt": TRAIN_TEXT[700:1900].encode(), "raw.bin": b"\xff" * 50}


PREDICT = partial(vecarc.PackConfig, mode="predict")  # predicted chunks, what these tests are about


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cache = tmp_path_factory.mktemp("raycache")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VECARC_CACHE": str(cache)}})
    yield
    ray.shutdown()


def _inputs(d, docs=DOCS):
    """The documents as files under d, named relative to d (the tests run there)."""
    (d / "notes").mkdir(exist_ok=True)
    for name, data in docs.items():
        (d / name).write_bytes(data)
    return list(docs)


def _round_trip(archive, lm, tmp_path, docs=DOCS):
    r = vecarc.verify(archive, model=lm, strict=True)
    assert r.ok, r.problems
    written = vecarc.unpack(archive, tmp_path / "out", model=lm)
    assert {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in written} == docs


@pytest.mark.parametrize("mode", ["predict", "coded"])
def test_a_ray_pack_unpacks_byte_identically_and_matches_the_local_plan(cluster, trained_tiny, tmp_path,
                                                                         monkeypatch, mode):
    monkeypatch.chdir(tmp_path)
    inputs = _inputs(tmp_path)
    events = []
    s = PackConfig(mode=mode, margin=0.5, chunk_tokens=64)
    r = vecarc.pack(inputs, "ray.vec", replace(s, engine=vecarc.RayEngine(workers=2, shard_chunks=2)),
                    model=trained_tiny, progress=events.append)
    local = vecarc.pack(inputs, "local.vec", s, model=trained_tiny)
    assert [(c.doc, c.kind, c.tokens) for c in r.archive.chunks] == [(c.doc, c.kind, c.tokens)
                                                                      for c in local.archive.chunks]
    assert {"predict": "predicted", "coded": "coded"}[mode] in {c.kind for c in r.archive.chunks}
    if mode == "coded":  # the same integers on a worker as here: the same bytes
        assert (tmp_path / "ray.vec").read_bytes() == (tmp_path / "local.vec").read_bytes()
    planned = r.archive.header.plan["chunks_planned"] if mode == "predict" else sum(  # format 5 records no plan
        c.kind != "bytes" for c in r.archive.chunks)
    assert max(e["done"] for e in events if e["event"] == "predict") == planned
    _round_trip(tmp_path / "ray.vec", trained_tiny, tmp_path)


def test_vector_chunks_on_ray_split_and_verify(cluster, tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    docs = {"a.txt": b"The quick brown fox jumps.", "notes/b.txt": b"To be or not to be, that is the question."}
    r = vecarc.pack(_inputs(tmp_path, docs), "v.vec", replace(FAST, chunk_tokens=4, min_chunk_tokens=1,
                                                               engine=vecarc.RayEngine(workers=2, shard_chunks=2)),
                    model=tiny)
    assert r.archive.header.vectors.count > 0
    _round_trip(tmp_path / "v.vec", tiny, tmp_path, docs)


def test_a_worker_that_dies_is_replaced_and_its_shard_retried(cluster, trained_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "die-once"
    marker.touch()
    notes = []
    vecarc.pack(_inputs(tmp_path), "f.vec",
                PREDICT(chunk_tokens=64, engine=vecarc.RayEngine(workers=1, shard_chunks=2,
                                                                    fault_marker=str(marker))),
                model=trained_tiny, progress=lambda e: notes.append(e["message"]) if e["event"] == "note" else None)
    assert not marker.exists() and any("a worker died on shard 0" in n for n in notes)
    _round_trip(tmp_path / "f.vec", trained_tiny, tmp_path)


def test_a_shard_that_keeps_failing_fails_the_pack_cleanly(cluster, trained_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "die-once"
    marker.touch()
    with pytest.raises(VecarcError, match="shard 0 lost its worker 1 times .*nothing written"):
        vecarc.pack(_inputs(tmp_path), "x.vec",
                    PREDICT(chunk_tokens=64, engine=vecarc.RayEngine(workers=1, retries=0,
                                                                        fault_marker=str(marker))),
                    model=trained_tiny)
    assert not (tmp_path / "x.vec").exists()


def test_a_model_the_workers_cannot_load_is_one_line(cluster, trained_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lm = replace(trained_tiny, source=f"path:{tmp_path / 'gone'}")
    with pytest.raises(VecarcError, match="a worker failed on shard 0: VecarcError: cannot load model"):
        vecarc.pack(_inputs(tmp_path), "x.vec", PREDICT(chunk_tokens=64, engine=vecarc.RayEngine(workers=1)),
                    model=lm)


def test_records_from_workers_are_decoded_again_on_the_driver(trained_tiny, tmp_path, monkeypatch):
    """A worker is another process, maybe another machine: its records are read as a journal's are
    (typed, checked), and decoded again by the driver before anything is written. An engine whose
    worker sends well-formed records with corrections taken away must not reach an archive."""
    from vecarc.chunks import ChunkRecord
    from vecarc.engine import work_shard
    from vecarc.errors import VerificationError

    sent = []

    class Lying:  # the RayEngine.run contract, computed here, one record spoiled in transit
        def run(self, lm, cfg, items, on_shard, progress=None):
            records = work_shard(lm, replace(cfg, engine=None), items)
            k = next(i for i, (meta, _) in enumerate(records) if meta["info"] and meta["info"].get("corrections"))
            records[k] = ({**records[k][0], "info": {"corrections": []}}, records[k][1])
            sent.append(k)
            on_shard(items, [ChunkRecord.from_journal(meta, tensors) for meta, tensors in records])

    monkeypatch.chdir(tmp_path)
    inputs = _inputs(tmp_path)
    with pytest.raises(VerificationError, match="nothing written"):
        vecarc.pack(inputs, "w.vec", PREDICT(chunk_tokens=64, engine=Lying()), model=trained_tiny)
    assert sent and not (tmp_path / "w.vec").exists()

    class Forgetful:  # a reply that leaves a chunk of its shard out
        def run(self, lm, cfg, items, on_shard, progress=None):
            records = work_shard(lm, replace(cfg, engine=None), items)
            on_shard(items, [ChunkRecord.from_journal(meta, tensors) for meta, tensors in records[1:]])

    with pytest.raises(VerificationError, match="leaves 1 chunk"):
        vecarc.pack(inputs, "f.vec", PREDICT(chunk_tokens=64, engine=Forgetful()), model=trained_tiny)
    assert not (tmp_path / "f.vec").exists()
    honest = vecarc.pack(inputs, "h.vec", PREDICT(chunk_tokens=64), model=trained_tiny)
    assert "predicted" in {c.kind for c in honest.archive.chunks}  # the spoiled record was a predicted chunk's


def test_coded_records_from_workers_are_confirmed_on_the_driver(trained_tiny, tmp_path, monkeypatch):
    """Coded chunks from a worker are checked without decoding them: one teacher-forced pass on the driver
    gives the intervals any decoder computes, and each stream must read them back. A stream spoiled in
    transit (well-formed, another chunk's) is refused; honest records give a local pack's bytes, with or
    without context."""
    from vecarc.chunks import ChunkRecord
    from vecarc.engine import work_shard
    from vecarc.errors import VerificationError

    class Worker:  # the RayEngine.run contract, computed here; `spoil` swaps two coded streams
        def __init__(self, spoil: bool) -> None:
            self.spoil = spoil

        def run(self, lm, cfg, items, on_shard, progress=None):
            records = work_shard(lm, replace(cfg, engine=None), items)
            if self.spoil:
                a, b = [i for i, (meta, _) in enumerate(records) if meta["outcome"] == "coded"][:2]
                records[a][0]["info"], records[b][0]["info"] = records[b][0]["info"], records[a][0]["info"]
            on_shard(items, [ChunkRecord.from_journal(meta, tensors) for meta, tensors in records])

    monkeypatch.chdir(tmp_path)
    inputs = _inputs(tmp_path)
    with pytest.raises(VerificationError, match="does not decode to its tokens; nothing written"):
        vecarc.pack(inputs, "w.vec", vecarc.PackConfig(chunk_tokens=32, engine=Worker(True)), model=trained_tiny)
    assert not (tmp_path / "w.vec").exists()
    for context in (0, 16):
        cfg = vecarc.PackConfig(chunk_tokens=32, context_tokens=context)
        local = vecarc.pack(inputs, "l.vec", cfg, model=trained_tiny, force=True)
        remote = vecarc.pack(inputs, "r.vec", replace(cfg, engine=Worker(False)), model=trained_tiny, force=True)
        assert local.data == remote.data


DRIVER = textwrap.dedent("""
    import os, sys, ray, vecarc
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    mode, shards = sys.argv[2], 0
    def on(e):
        global shards
        if e["event"] in ("predict", "shard"):
            shards += 1
            if shards == 2:  # two shards journaled: the driver dies as a kill -9 would
                os._exit(9)
    lm = vecarc.load_model(sys.argv[1], "cpu")
    s = vecarc.PackConfig(mode=mode, margin=0.05,
                          search=vecarc.SearchSettings(max_steps=150, patience=50, batch_size=64),
                          chunk_tokens=16, min_chunk_tokens=8, engine=vecarc.RayEngine(workers=1, shard_chunks=3))
    vecarc.pack(sys.argv[3:], "k.vec", s, model=lm, progress=on)
""")


def _killed_driver(trained_dir, tmp_path, mode: str, inputs) -> None:
    p = subprocess.run([sys.executable, "-c", DRIVER, str(trained_dir), mode, *inputs], cwd=tmp_path,
                       capture_output=True, timeout=300)
    assert p.returncode == 9, p.stderr.decode()[-2000:]


def test_a_killed_driver_resumes_without_redoing_journaled_shards(cluster, trained_tiny, trained_dir, tmp_path,
                                                                  monkeypatch):
    from vecarc.journal import count_records

    monkeypatch.chdir(tmp_path)
    inputs = _inputs(tmp_path)
    _killed_driver(trained_dir, tmp_path, "predict", inputs)
    assert count_records(tmp_path / "k.vec.journal") == {"header": 1, "results": 6, "snapshots": 2}
    events = []
    s = PackConfig(mode="predict", margin=0.05, search=SearchSettings(max_steps=150, patience=50, batch_size=64),
                   chunk_tokens=16, min_chunk_tokens=8, engine=vecarc.RayEngine(workers=1, shard_chunks=3))
    r = vecarc.pack(inputs, "k.vec", s, model=trained_tiny, resume=True, progress=events.append)
    planned = r.archive.header.plan["chunks_planned"]
    assert {e["total"] for e in events if e["event"] == "predict"} == {planned - 6}  # only what was not journaled
    assert not (tmp_path / "k.vec.journal").exists()
    _round_trip(tmp_path / "k.vec", trained_tiny, tmp_path)


def test_vector_chunks_journaled_on_ray_resume_in_this_process(cluster, trained_tiny, trained_dir, tmp_path,
                                                               monkeypatch):
    # Marks of shards, not an optimiser snapshot: a local resume crams what the records do not cover.
    monkeypatch.chdir(tmp_path)
    docs = {"a.txt": TRAIN_TEXT[:400].encode(), "notes/b.txt": TRAIN_TEXT[500:800].encode()}
    inputs = _inputs(tmp_path, docs)
    _killed_driver(trained_dir, tmp_path, "vectors", inputs)
    s = PackConfig(mode="vectors", margin=0.05, search=SearchSettings(max_steps=150, patience=50, batch_size=64),
                   chunk_tokens=16, min_chunk_tokens=8)
    r = vecarc.pack(inputs, "k.vec", s, model=trained_tiny, resume=True)
    assert r.archive.header.vectors.count > 0
    _round_trip(tmp_path / "k.vec", trained_tiny, tmp_path, docs)


def test_the_cli_packs_on_ray_and_refuses_ray_flags_without_it(cluster, trained_dir, tmp_path, monkeypatch):
    from helpers import run_cli

    monkeypatch.chdir(tmp_path)
    inputs = _inputs(tmp_path)
    code, out = run_cli("pack", *inputs, "-o", "c.vec", "--model", trained_dir, "--engine", "ray", "--workers", "1",
                        "-q")
    assert code == 0, out
    code, out = run_cli("pack", *inputs, "-o", "d.vec", "--model", trained_dir, "--workers", "2")
    assert code == 2 and "--address and --workers need --engine ray" in out


def test_calibration_on_ray_searches_each_sample_on_a_worker(cluster, trained_tiny):
    from vecarc import capacity
    from vecarc.tiny import TRAIN_TEXT as T

    texts = [("easy", T[:700]), ("other", T[300:1000])]
    events = []
    fast = replace(FAST.search, margin=FAST.margin)  # FAST's search at FAST's margin
    entry = capacity.calibrate(trained_tiny, fast, texts=texts, samples=2, first_tokens=4, sample_tokens=48,
                               progress=events.append, engine=vecarc.RayEngine(workers=2))
    assert entry["budget_nats"] > 0 and len(entry["samples"]) == 2
    assert all(smp["tries"] for smp in entry["samples"]) and any(smp["gain"] > 0 for smp in entry["samples"])
    assert {e["sample"] for e in events if e["event"] == "calibrate"} == {0, 1}


def test_a_local_pack_never_imports_ray(tiny_dir, tmp_path):
    (tmp_path / "a.txt").write_bytes(b"The quick brown fox.")
    code = ("import sys, vecarc; from vecarc.cli import main; "
            "vecarc.pack(['a.txt'], 'a.vec', vecarc.PackConfig(chunk_tokens=8), "
            "model=vecarc.load_model(sys.argv[1], 'cpu')); "
            "print('ray' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr[-2000:]


def test_a_malformed_or_unreachable_address_is_one_line_at_once(tmp_path, trained_dir, monkeypatch):
    import time

    from helpers import run_cli

    from vecarc.engine import CONNECT_TIMEOUT, _reachable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("Some words.")
    code, out = run_cli("pack", "a.txt", "--engine", "ray", "--address", "nonsense", "--model", trained_dir)
    assert code == 2 and "--address 'nonsense' is not auto, local, HOST:PORT or ray://HOST:PORT" in out
    assert not (tmp_path / "a.txt.vec").exists()
    t0 = time.monotonic()
    with pytest.raises(vecarc.VecarcError, match="nothing answers at the Ray address 127.0.0.1:1"):
        _reachable("127.0.0.1:1")  # what a pack on that address checks before Ray's own minutes of retries
    assert time.monotonic() - t0 <= CONNECT_TIMEOUT + 1


def test_unpack_and_verify_on_ray_with_a_worker_killed(cluster, trained_tiny, tmp_path, monkeypatch):
    """Decoding spreads over the pool a batch a shard; a worker that dies is replaced and its shard decoded
    again; the driver checks every hash, and writes all documents or none, as a local unpack does."""
    monkeypatch.chdir(tmp_path)
    docs = {**DOCS, "more.txt": (TRAIN_TEXT * 4).encode()[:6000]}
    vecarc.pack(_inputs(tmp_path, docs), "u.vec", PREDICT(chunk_tokens=16), model=trained_tiny)
    chunks = sum(c.kind == "predicted" for c in vecarc.read_archive("u.vec").chunks)
    assert chunks > 64  # more than one shard
    marker = tmp_path / "die-once"
    marker.touch()
    notes, decoded = [], []
    engine = vecarc.RayEngine(workers=2, fault_marker=str(marker))

    def on(e):
        if e["event"] == "note":
            notes.append(e["message"])
        elif e["event"] == "decode":
            decoded.append(e["done"])

    written = vecarc.unpack("u.vec", "out", model=trained_tiny, engine=engine, progress=on)
    assert {p.relative_to("out").as_posix(): p.read_bytes() for p in written} == docs
    assert not marker.exists() and any("a worker died on shard" in n for n in notes) and decoded[-1] == chunks
    r = vecarc.verify("u.vec", model=trained_tiny, engine=vecarc.RayEngine(workers=2))
    assert r.ok and r.min_margin >= 0.5
    notes.clear()
    strict = vecarc.verify("u.vec", ["fox.txt"], model=trained_tiny, engine=vecarc.RayEngine(workers=2), strict=True,
                           progress=on)
    assert strict.ok and strict.stress and any(n.startswith("stress shard 1 of") for n in notes)
    code, out = __import__("helpers").run_cli("verify", "u.vec", "more.txt", "--engine", "ray", "--workers", "2",
                                              "--model", trained_tiny.folder)
    assert code == 0 and "OK (1 document" in out


def test_coded_chunks_unpack_on_ray_with_a_worker_killed(cluster, trained_tiny, tmp_path, monkeypatch):
    """Coded chunks spread over the pool a decode batch (16 chunks) a shard; a dead worker's shard is decoded
    again; the documents are the packed bytes, checked on the driver."""
    monkeypatch.chdir(tmp_path)
    docs = {**DOCS, "more.txt": (TRAIN_TEXT * 2).encode()[:3000]}
    vecarc.pack(_inputs(tmp_path, docs), "c.vec", vecarc.PackConfig(chunk_tokens=16), model=trained_tiny)
    chunks = sum(c.kind == "coded" for c in vecarc.read_archive("c.vec").chunks)
    assert chunks > 16  # more than one shard
    marker = tmp_path / "die-once"
    marker.touch()
    notes, decoded = [], []

    def on(e):
        if e["event"] == "note":
            notes.append(e["message"])
        elif e["event"] == "decode":
            decoded.append(e["done"])

    written = vecarc.unpack("c.vec", "out", model=trained_tiny, progress=on,
                            engine=vecarc.RayEngine(workers=2, fault_marker=str(marker)))
    assert {p.relative_to("out").as_posix(): p.read_bytes() for p in written} == docs
    assert not marker.exists() and any("a worker died on shard" in n for n in notes) and decoded[-1] == chunks
    assert vecarc.verify("c.vec", model=trained_tiny, engine=vecarc.RayEngine(workers=2)).ok
    # chunks that read their context go in waves, each wave over the same workers
    vecarc.pack(_inputs(tmp_path, docs), "x.vec", vecarc.PackConfig(chunk_tokens=16, context_tokens=8),
                model=trained_tiny)
    written = vecarc.unpack("x.vec", "out2", model=trained_tiny, engine=vecarc.RayEngine(workers=2))
    assert {p.relative_to("out2").as_posix(): p.read_bytes() for p in written} == docs


def test_a_dictionary_reaches_the_workers(cluster, trained_tiny, tmp_path, monkeypatch):
    """Coded chunks read the driver's dictionary on every worker: a Ray pack's bytes are a local one's, and
    a Ray unpack gives the documents back."""
    from vecarc import dictionary as D

    monkeypatch.chdir(tmp_path)
    d = D.train(trained_tiny, [TRAIN_TEXT.encode()], D.TrainConfig(vectors=1, steps=2, chunk_tokens=32, held_out=0))
    cfg = vecarc.PackConfig(chunk_tokens=16)
    local = vecarc.pack(_inputs(tmp_path, DOCS), "l.vec", cfg, model=trained_tiny, dictionary=d.dictionary)
    ray = vecarc.pack(_inputs(tmp_path, DOCS), "r.vec", replace(cfg, engine=vecarc.RayEngine(workers=2)),
                      model=trained_tiny, dictionary=d.dictionary)
    assert ray.data == local.data and local.archive.header.cram["dictionary"] == d.dictionary.id
    written = vecarc.unpack("r.vec", "out", model=trained_tiny, engine=vecarc.RayEngine(workers=2),
                            dictionary=d.dictionary)
    assert {p.relative_to("out").as_posix(): p.read_bytes() for p in written} == DOCS
