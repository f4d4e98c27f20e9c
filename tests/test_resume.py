"""An interrupted pack keeps its work: resuming gives the archive an uninterrupted run gives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from helpers import TRAIN_TEXT

from vecarc import PackConfig, SearchSettings, api
from vecarc.errors import VecarcError, VerificationError
from vecarc.journal import HEADER, VERSION, _record, count_records, journal_path

TEXT = TRAIN_TEXT[:700] + " zebra quantum fjord, then a sentence the model has never seen."
CONFIG = PackConfig(mode="vectors", search=SearchSettings(batch_size=4, max_steps=150), chunk_tokens=24)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, trained_tiny):
    d = tmp_path_factory.mktemp("ref")
    (d / "a.txt").write_text(TEXT)
    r = api.pack([d / "a.txt"], d / "ref.vec", CONFIG, model=trained_tiny)
    assert r.retries > 0 and r.archive.header.vectors.count > 0  # splits and vectors both get resumed
    return (d / "ref.vec").read_bytes()


def _interrupt_at(step: int):
    def progress(e: dict) -> None:
        if e.get("event") == "step" and e["step"] == step:
            raise KeyboardInterrupt

    return progress


def _pack(src, out, model, checkpoint_every=None, **kw):
    cfg = CONFIG if checkpoint_every is None else replace(CONFIG, checkpoint_every=checkpoint_every)
    return api.pack([src], out, cfg, model=model, **kw)


@pytest.mark.parametrize("kill_step", [1, 10, 40])
def test_resume_after_interrupt_is_byte_identical(tmp_path, trained_tiny, reference, kill_step):
    src, out = tmp_path / "a.txt", tmp_path / "a.vec"
    src.write_text(TEXT)
    with pytest.raises(KeyboardInterrupt):
        _pack(src, out, trained_tiny, progress=_interrupt_at(kill_step), checkpoint_every=0)
    assert not out.exists()
    assert count_records(journal_path(out))["snapshots"] == kill_step
    _pack(src, out, trained_tiny, resume=True, checkpoint_every=0)
    assert out.read_bytes() == reference
    assert not journal_path(out).exists()


def test_torn_tail_and_work_after_the_last_snapshot_are_redone(tmp_path, trained_tiny, reference):
    src, out = tmp_path / "a.txt", tmp_path / "a.vec"
    src.write_text(TEXT)
    with pytest.raises(KeyboardInterrupt):
        _pack(src, out, trained_tiny, progress=_interrupt_at(12), checkpoint_every=0)
    j = journal_path(out)
    whole = j.read_bytes()
    j.write_bytes(whole[: len(whole) - 100])  # the last snapshot is torn, as a kill mid-write leaves it
    assert count_records(j)["snapshots"] == 11
    _pack(src, out, trained_tiny, resume=True, checkpoint_every=1e9)
    assert out.read_bytes() == reference


def test_no_snapshot_yet_means_start_over(tmp_path, trained_tiny, reference):
    src, out = tmp_path / "a.txt", tmp_path / "a.vec"
    src.write_text(TEXT)
    with pytest.raises(KeyboardInterrupt):
        _pack(src, out, trained_tiny, progress=_interrupt_at(8), checkpoint_every=1e9)
    counts = count_records(journal_path(out))
    assert counts["snapshots"] == 0 and counts["results"] > 0  # results without a snapshot are not trusted
    _pack(src, out, trained_tiny, resume=True)
    assert out.read_bytes() == reference


def test_journal_is_not_overwritten_or_misused(tmp_path, trained_tiny):
    src, out = tmp_path / "a.txt", tmp_path / "a.vec"
    src.write_text(TEXT)
    with pytest.raises(KeyboardInterrupt):
        _pack(src, out, trained_tiny, progress=_interrupt_at(2), checkpoint_every=0)
    with pytest.raises(VecarcError, match="--resume to continue it, or -f to start over"):
        _pack(src, out, trained_tiny)
    src.write_text(TEXT + " changed")
    with pytest.raises(VecarcError, match="belongs to another pack"):
        _pack(src, out, trained_tiny, resume=True)
    journal_path(out).write_bytes(b"garbage")
    with pytest.raises(VecarcError, match="not a readable pack journal"):
        _pack(src, out, trained_tiny, resume=True)
    # A journal from another journal version: well-formed records, refused before anything is read into them.
    journal_path(out).write_bytes(_record(HEADER, {"version": VERSION + 1, "identity": "x"}))
    with pytest.raises(VecarcError, match=f"is a version {VERSION + 1} pack journal and this vecarc reads version "
                                          f"{VERSION}; remove it"):
        _pack(src, out, trained_tiny, resume=True)
    _pack(src, out, trained_tiny, force=True)  # -f starts over
    assert out.exists() and not journal_path(out).exists()


def _cli(*args):
    return [sys.executable, "-m", "vecarc.cli", "pack", *map(str, args), "--mode", "vectors", "--chunk-tokens", "24",
            "--batch-size", "2",
            "--max-steps", "150", "--checkpoint-every", "0", "-q"]


def _kill_when(cmd, ready, timeout=120):
    """Start a real pack, SIGKILL it once ready() holds; fail if it finished first."""
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not ready():
        if p.poll() is not None:
            pytest.fail(f"pack ended (rc {p.returncode}) before the kill point: {p.stderr.read()[-1500:]}")
        if time.monotonic() - t0 > timeout:
            p.kill()
            pytest.fail("kill point not reached in time")
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL


def test_sigkill_at_three_points_then_resume_matches_uninterrupted(tmp_path, trained_dir):
    src = tmp_path / "long.txt"
    src.write_text(TEXT)
    ref, out = tmp_path / "ref.vec", tmp_path / "out.vec"
    j = journal_path(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every run: same bits
    subprocess.run(_cli(src, "-o", ref, "--model", trained_dir), check=True, env=env, timeout=600)

    def snapshots() -> int:
        try:
            return count_records(j)["snapshots"]
        except FileNotFoundError:
            return 0

    # 1: as soon as the process exists (during start-up: no journal yet, or only its header)
    p = subprocess.Popen(_cli(src, "-o", out, "--model", trained_dir), stderr=subprocess.DEVNULL, env=env)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert not out.exists() and (not j.exists() or count_records(j)["results"] == 0)
    # 2: after a few snapshots; 3: after more, on the resumed run
    _kill_when(_cli(src, "-o", out, "--model", trained_dir, "--resume"), lambda: snapshots() >= 3)
    first = snapshots()
    _kill_when(_cli(src, "-o", out, "--model", trained_dir, "--resume"), lambda: snapshots() >= first + 10)
    assert not out.exists()
    r = subprocess.run(_cli(src, "-o", out, "--model", trained_dir, "--resume"), env=env, timeout=600,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]
    assert out.read_bytes() == ref.read_bytes()
    assert not j.exists()


def _interrupted(tmp_path, model, step=40):
    src, out = tmp_path / "a.txt", tmp_path / "a.vec"
    src.write_text(TEXT)
    with pytest.raises(KeyboardInterrupt):
        _pack(src, out, model, progress=_interrupt_at(step), checkpoint_every=0)
    return src, out


def test_resume_decodes_journaled_chunks_again(tmp_path, trained_tiny):
    """A journal record altered and re-checksummed (or another pack's) must not reach an archive."""
    from vecarc.journal import RESULT, _record, _records

    src, out = _interrupted(tmp_path, trained_tiny)
    j = journal_path(out)
    recs, _ = _records(j.read_bytes())
    vectors = [i for i, r in enumerate(recs) if r[0] == RESULT and r[1]["outcome"] == "vector"]
    assert vectors, "the interrupted pack journaled no vector chunk"
    forged = b""
    for i, (kind, meta, tensors, _) in enumerate(recs):
        if i == vectors[0]:
            tensors = {k: -v for k, v in tensors.items()}
        forged += _record(kind, meta, tensors)
    j.write_bytes(forged)
    with pytest.raises(VerificationError, match="holds work that does not decode"):
        _pack(src, out, trained_tiny, resume=True, checkpoint_every=0)
    assert not out.exists() and j.exists()


@pytest.mark.parametrize("spoil, why", [
    (lambda meta, tensors: (dict(meta, info={"margin": meta["info"]["margin"]}), tensors), "lacks its margin or steps"),
    (lambda meta, tensors: (meta, {}), "lacks its vectors"),
    (lambda meta, tensors: (dict(meta, outcome="guessed"), tensors), "unknown outcome 'guessed'"),
])
def test_a_malformed_journal_record_is_refused_as_such(tmp_path, trained_tiny, spoil, why):
    """Journal records are read back as typed records: one of the wrong shape is named, not decoded."""
    from vecarc.journal import RESULT, _record, _records

    src, out = _interrupted(tmp_path, trained_tiny)
    j = journal_path(out)
    recs, _ = _records(j.read_bytes())
    first = next(i for i, r in enumerate(recs) if r[0] == RESULT and r[1]["outcome"] == "vector")
    forged = b""
    for i, (kind, meta, tensors, _) in enumerate(recs):
        if i == first:
            meta, tensors = spoil(meta, tensors)
        forged += _record(kind, meta, tensors)
    j.write_bytes(forged)
    with pytest.raises(VerificationError, match=rf"a journal record is malformed \(.*{why}.*\).*holds work that "
                                                r"does not decode"):
        _pack(src, out, trained_tiny, resume=True, checkpoint_every=0)
    assert not out.exists() and j.exists()


def _reseal(j, change) -> None:
    """The journal with change(records) applied, every record re-sealed with a valid checksum."""
    from vecarc.journal import _records

    recs, _ = _records(j.read_bytes())
    j.write_bytes(b"".join(_record(kind, meta, tensors) for kind, meta, tensors in change(
        [(kind, meta, tensors) for kind, meta, tensors, _ in recs])))


def _last_state(recs) -> int:
    from vecarc.journal import STATE

    return max(i for i, r in enumerate(recs) if r[0] == STATE)


def _vector(recs) -> int:
    from vecarc.journal import RESULT

    return next(i for i, r in enumerate(recs) if r[0] == RESULT and r[1]["outcome"] == "vector")


def _put(recs, i, meta=None, tensors=None):
    kind, m, t = recs[i]
    recs[i] = (kind, m if meta is None else meta, t if tensors is None else tensors)
    return recs


@pytest.mark.parametrize("change", [
    lambda r: _put(r, _last_state(r), meta={}),  # a mark without its step
    lambda r: _put(r, _vector(r), meta=[1, 2, 3]),  # not an object
    lambda r: _put(r, _last_state(r), meta={**r[_last_state(r)][1], "slots": [{"tag": [0, 0, 24]}]}),
    lambda r: _put(r, _last_state(r), meta={**r[_last_state(r)][1], "pending": [[7, 0, 24]]}),
    lambda r: _put(r, _last_state(r), tensors={}),
    lambda r: _put(r, _vector(r), meta={**r[_vector(r)][1], "tag": [0, 24, 24]}),
    lambda r: _put(r, _vector(r), meta={**r[_vector(r)][1], "tag": [5, 0, 24]}),
    lambda r: _put(r, _vector(r), meta={**r[_vector(r)][1], "info": None}),
    lambda r: _put(r, _vector(r), meta={**r[_vector(r)][1], "outcome": "predicted"}),
    lambda r: _put(r, _vector(r), tensors={"v": r[_vector(r)][2]["v"][:, :5]}),
    lambda r: _put(r, _vector(r), meta={**r[_vector(r)][1], "tag": [0, 0, 48]}),  # two planned chunks as one
    lambda r: _put(r, _last_state(r), tensors={k: t.int() for k, t in r[_last_state(r)][2].items()}),
], ids=["mark-without-step", "meta-a-list", "slot-fields", "pending-outside-plan", "state-tensors", "empty-tag",
        "document-outside-plan", "null-info", "vector-as-predicted", "narrow-vectors", "unplanned-span",
        "integer-state"])
def test_a_resealed_journal_is_one_line_exit_1(tmp_path, trained_tiny, change):
    """Whatever a re-sealed journal holds, resuming refuses it with the documented line, never an internal error."""
    src, out = _interrupted(tmp_path, trained_tiny)
    _reseal(journal_path(out), change)
    with pytest.raises(VerificationError, match="holds work that does not decode"):
        _pack(src, out, trained_tiny, resume=True, checkpoint_every=0)
    assert not out.exists()


def test_a_second_pack_on_the_same_output_is_refused(tmp_path, trained_tiny):
    from vecarc.journal import Journal

    src, out = tmp_path / "a.txt", tmp_path / "a.vec"
    src.write_text(TEXT)
    held = Journal.open(out, resume=False, force=False)
    try:
        for kw in ({}, {"resume": True}, {"force": True}):
            with pytest.raises(VecarcError, match="another pack is writing .*the journal is locked"):
                _pack(src, out, trained_tiny, **kw)
    finally:
        held.close()
    assert not journal_path(out).exists()  # an empty journal goes with its lock


def test_the_journal_never_follows_a_symlink(tmp_path, trained_tiny):
    src, out = tmp_path / "a.txt", tmp_path / "a.vec"
    src.write_text(TEXT)
    outside = tmp_path / "elsewhere" / "planted"
    outside.parent.mkdir()
    journal_path(out).symlink_to(outside)  # dangling: open(..., "wb") would create it
    for kw in ({}, {"resume": True}, {"force": True}):
        with pytest.raises(VecarcError, match="is a symlink; refusing"):
            _pack(src, out, trained_tiny, **kw)
    assert not outside.exists() and not out.exists()
    outside.write_bytes(b"precious")  # a link to an existing file is refused too, and the file left alone
    with pytest.raises(VecarcError, match="is a symlink; refusing"):
        _pack(src, out, trained_tiny, force=True)
    assert outside.read_bytes() == b"precious"
