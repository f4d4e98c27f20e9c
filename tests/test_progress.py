"""Progress that moves: while one batch of chunks decodes, pack and unpack report the tokens decoded
every few greedy steps (not only finished chunks, which all finish together at the end)."""

from __future__ import annotations

from functools import partial

import vecarc
from vecarc.tiny import TRAIN_TEXT

PREDICT = partial(vecarc.PackConfig, mode="predict")  # predicted chunks, what these tests are about


def _spread(events: list[dict]) -> list[int]:
    done = [e["done"] for e in events if e["event"] == "tokens"]
    assert done == sorted(done), "tokens decoded never go back"
    return done


def test_a_one_batch_pack_and_unpack_report_tokens_as_they_decode(tmp_path, monkeypatch, trained_tiny):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text((TRAIN_TEXT * 2)[:2400])
    seen: list[dict] = []
    r = vecarc.pack(["a.txt"], "a.vec", PREDICT(chunk_tokens=128), model=trained_tiny, progress=seen.append)
    chunks = [c for c in r.archive.chunks if c.kind == "predicted"]
    total = sum(c.tokens for c in chunks)
    assert 1 < len(chunks) <= 64  # one greedy batch
    done = _spread(seen)
    assert len(done) >= 128 // 16 and done[0] < total / 4 and done[-1] >= total - chunks[-1].tokens
    assert [e["done"] for e in seen if e["event"] == "predict"] == [len(r.archive.chunks)]  # chunks: all at once
    seen.clear()
    vecarc.unpack("a.vec", "out", model=trained_tiny, progress=seen.append)
    done = _spread(seen)
    assert len(done) >= 128 // 16 and done[0] < total / 4 and done[-1] == total


def test_coded_pack_and_unpack_report_progress_as_they_go(tmp_path, monkeypatch, trained_tiny):
    """Coded chunks: pack reports each teacher-forced batch (8 chunks), unpack the tokens decoded every 16
    steps of one batch, in the whole decode's count even when the chunks read their context (waves)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text((TRAIN_TEXT * 3)[:4000])
    (tmp_path / "b.txt").write_text((TRAIN_TEXT * 2)[500:2500])
    for context in (0, 32):
        seen: list[dict] = []
        r = vecarc.pack(["a.txt", "b.txt"], "a.vec", vecarc.PackConfig(chunk_tokens=64, context_tokens=context),
                        model=trained_tiny, force=True, progress=seen.append)
        coded = [c for c in r.archive.chunks if c.kind == "coded"]
        batches = [e["done"] for e in seen if e["event"] == "predict"]
        assert len(coded) > 8 and len(batches) >= 2 and batches == sorted(batches)
        seen.clear()
        vecarc.unpack("a.vec", "out", model=trained_tiny, force=True, progress=seen.append)
        done = _spread(seen)
        total = sum(c.tokens for c in coded)
        assert len(done) >= 64 // 16 and done[0] < total / 4 and done[-1] == total
