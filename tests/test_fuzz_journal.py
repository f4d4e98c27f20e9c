"""Hostile journals and volume indexes: re-sealed records with random JSON put in or taken out.

A resumed pack reads its journal as typed records; every case must end in the documented
refusal (VerificationError, "holds work that does not decode") or in a journal that is
accepted, never in another exception. The search is stopped right after it restored its
snapshot, so each case costs milliseconds. An index is read like the archive header: strict
JSON, typed fields, one line. CI runs a bounded number of cases; VECARC_FUZZ_CASES=1000
runs the campaign the reliability page reports.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest
from helpers import TRAIN_TEXT, mutate_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vecarc
from vecarc import PackConfig, SearchSettings, VecarcError
from vecarc.errors import VerificationError
from vecarc.format.index import MAGIC, PREFIX, read_index
from vecarc.journal import _record, _records, journal_path

CASES = int(os.environ.get("VECARC_FUZZ_CASES", "100"))
BOUND = settings(max_examples=CASES, deadline=5000, suppress_health_check=list(HealthCheck), derandomize=True)
VECTORS = PackConfig(mode="vectors", search=SearchSettings(batch_size=4, max_steps=150), chunk_tokens=24,
                     checkpoint_every=0)
PREDICTED = PackConfig(mode="predict", chunk_tokens=8)


SEEN = {"accepted": 0, "refused": 0, "index read": 0, "index refused": 0}


class _Stop(Exception):
    """Raised where the resumed pack would start computing: everything read back was accepted."""


def _stop_at(step: int, event: str):
    def progress(e: dict) -> None:
        if e.get("event") == event and e.get("step", step) == step:
            raise KeyboardInterrupt

    return progress


@pytest.fixture(scope="module", params=["vectors", "predicted"])
def journal(request, trained_tiny, tmp_path_factory):
    """An interrupted pack's journal (vector records and snapshots, or predicted records and marks)."""
    d = tmp_path_factory.mktemp("j")
    src = d / "a.txt"
    src.write_text((TRAIN_TEXT * 3)[:2400] if request.param == "predicted" else
                   TRAIN_TEXT[:700] + " zebra quantum fjord, then a sentence the model has never seen.")
    cfg = VECTORS if request.param == "vectors" else PREDICTED
    stop = _stop_at(10, "step") if request.param == "vectors" else _stop_at(0, "predict")
    with pytest.raises(KeyboardInterrupt):
        vecarc.pack([src], d / "a.vec", cfg, model=trained_tiny, progress=stop)
    recs, _ = _records(journal_path(d / "a.vec").read_bytes())
    assert len(recs) > 2
    return src, d / "a.vec", cfg, [(k, m, t) for k, m, t, _ in recs]


@BOUND
@given(data=st.data())
def test_resealed_journal_records_are_accepted_or_refused_in_one_line(journal, trained_tiny, monkeypatch, data):
    from vecarc.chunks import predicted
    from vecarc.search import loop

    src, out, cfg, recs = journal
    monkeypatch.setattr(loop.Search, "run", lambda self, *a: (_ for _ in ()).throw(_Stop()))
    monkeypatch.setattr(predicted, "compute", lambda *a, **k: (_ for _ in ()).throw(_Stop()))
    recs = copy.deepcopy(recs)
    i = data.draw(st.integers(1, len(recs) - 1))
    kind, meta, tensors = recs[i]
    if data.draw(st.booleans()) or not tensors:
        box = [meta]
        mutate_json(box, data)
        meta = box[0]
    else:
        name = data.draw(st.sampled_from(sorted(tensors)))
        t = tensors[name]
        tensors = {**tensors, name: t[: data.draw(st.integers(0, max(0, t.shape[0] - 1)))] if t.dim() else t}
    recs[i] = (kind, meta, tensors)
    journal_path(out).write_bytes(b"".join(_record(k, m, t) for k, m, t in recs))
    try:
        vecarc.pack([src], out, cfg, model=trained_tiny, resume=True, force=True)
    except _Stop:
        SEEN["accepted"] += 1
        return
    except VerificationError as e:
        assert "\n" not in str(e) and "does not decode" in str(e), str(e)
    except VecarcError as e:  # a refusal of the journal's own framing (version, identity)
        assert "\n" not in str(e)
    SEEN["refused"] += 1


GOOD_INDEX = {"format": "vecarc-index",
              "volumes": [{"file": "x.vec.0001", "size": 10, "sha256": "0" * 64},
                          {"file": "x.vec.0002", "size": 20, "sha256": "1" * 64}],
              "documents": [{"name": "a.txt", "size": 5, "sha256": "0" * 64, "parts": [[0, 2], [1, 3]]},
                            {"name": "b/c.txt", "size": 0, "sha256": "2" * 64, "parts": [[1, 0]]}]}


@BOUND
@given(data=st.data())
def test_resealed_indexes_read_or_are_refused_in_one_line(tmp_path_factory, data):
    raw = copy.deepcopy(GOOD_INDEX)
    mutate_json(raw, data, times=4)
    text = json.dumps(raw, allow_nan=True).encode()
    head = PREFIX.pack(MAGIC, 1, 0, len(text)) + text
    path = tmp_path_factory.mktemp("i") / "x.vec"
    path.write_bytes(head + hashlib.sha256(head).digest())
    try:
        index = read_index(path)
    except VecarcError as e:
        assert "\n" not in str(e)
        SEEN["index refused"] += 1
        return
    SEEN["index read"] += 1
    assert index.volumes and all(sum(p.size for p in d.parts) == d.size for d in index.documents)


def test_report_counts():
    # Runs last in this file: how many cases each way (both ways must have happened).
    print(f"journal and index fuzz cases: {SEEN}")
    assert SEEN["accepted"] and SEEN["refused"] and SEEN["index refused"]
