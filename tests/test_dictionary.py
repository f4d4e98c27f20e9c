"""Dictionaries: trained memory vectors that coded chunks are coded after (vecarc.dictionary)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import TRAIN_TEXT, run_cli

import vecarc
from vecarc import dictionary as D
from vecarc.chunks import coded
from vecarc.errors import VecarcError
from vecarc.format import parse_archive, read_archive
from vecarc.format.compact import varint

TEXT = (TRAIN_TEXT[:300] + " then a line it has not read: zq 42 xv.\n").encode()
CORPUS = TRAIN_TEXT.encode() * 2


@pytest.fixture(scope="module")
def trained(trained_tiny, tmp_path_factory):
    """A dictionary of 2 vectors trained for a few steps on the tiny model's own training text."""
    t = D.train(trained_tiny, [CORPUS], D.TrainConfig(vectors=2, steps=12, lr=0.05, chunk_tokens=48, held_out=3))
    path = tmp_path_factory.mktemp("dict") / "tiny.vecdict"
    D.write(path, t.data)
    return t, path


def test_a_dictionary_file_reads_back_as_written(trained, trained_tiny):
    t, path = trained
    d = D.read(path)
    assert d.id == t.dictionary.id == d.digest[:8].hex()
    assert torch.equal(d.vectors, t.dictionary.vectors) and d.vectors.shape == (2, trained_tiny.hidden_size)
    assert d.fingerprint == trained_tiny.fingerprint
    assert d.info["vectors"] == 2 and d.info["held_chunks"] == t.held_chunks == 3


def test_training_lowers_the_held_out_cost(trained):
    """Held-out chunks are not trained on; the tiny model's text repeats, so the vectors carry over."""
    t, _ = trained
    assert t.train_chunks > 0 and t.bits_with < t.bits_without


def test_round_trip_with_a_dictionary(trained, trained_tiny, tmp_path):
    _, path = trained
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT * 2)
    out = tmp_path / "a.vec"
    r = vecarc.pack([src], out, vecarc.PackConfig(chunk_tokens=40), model=trained_tiny, dictionary=path)
    assert r.archive.header.cram["dictionary"] == D.read(path).id
    assert "coded" in {c.kind for c in r.archive.chunks}
    assert read_archive(out).header.cram["dictionary"] == D.read(path).id
    written = vecarc.unpack(out, tmp_path / "out", model=trained_tiny, dictionary=path)
    assert [p.read_bytes() for p in written] == [TEXT * 2]
    assert vecarc.verify(out, model=trained_tiny, dictionary=D.read(path)).ok
    # The same text without the dictionary: other streams (the vectors change every frequency).
    plain = vecarc.pack([src], tmp_path / "b.vec", vecarc.PackConfig(chunk_tokens=40), model=trained_tiny)
    assert "dictionary" not in plain.archive.header.cram
    assert plain.data != r.data


def test_a_missing_wrong_or_damaged_dictionary_is_refused(trained, trained_tiny, tiny, tmp_path):
    _, path = trained
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    out = tmp_path / "a.vec"
    vecarc.pack([src], out, vecarc.PackConfig(chunk_tokens=40), model=trained_tiny, dictionary=path)
    with pytest.raises(VecarcError, match="packed with dictionary .*pass it with --dict"):
        vecarc.unpack(out, tmp_path / "o1", model=trained_tiny)
    other = D.train(trained_tiny, [CORPUS], D.TrainConfig(vectors=1, steps=1, chunk_tokens=48, held_out=1, seed=4))
    with pytest.raises(VecarcError, match="not .* \\(the --dict given\\)"):
        vecarc.unpack(out, tmp_path / "o2", model=trained_tiny, dictionary=other.dictionary)
    damaged = bytearray(path.read_bytes())
    damaged[60] ^= 1
    (tmp_path / "bad.vecdict").write_bytes(bytes(damaged))
    with pytest.raises(VecarcError, match="SHA-256 mismatch"):
        vecarc.unpack(out, tmp_path / "o3", model=trained_tiny, dictionary=tmp_path / "bad.vecdict")
    with pytest.raises(VecarcError, match="trained for another model"):
        vecarc.pack([src], tmp_path / "c.vec", model=tiny, dictionary=path)
    with pytest.raises(VecarcError, match="--dict needs coded chunks"):
        vecarc.pack([src], tmp_path / "d.vec", vecarc.PackConfig(mode="predict"), model=trained_tiny, dictionary=path)
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3", "c.vec", "d.vec"))


def test_malformed_dictionary_files_are_refused_before_use(trained, tmp_path):
    t, _ = trained
    good = t.data
    cases = {
        "no dictionary magic": b"hello" + good[5:],
        "version 9": good[:4] + b"\x09" + good[5:],
        "SHA-256 mismatch": good[:-1] + bytes([good[-1] ^ 1]),
        "truncated": good[:50],
    }
    for why, data in cases.items():
        with pytest.raises(VecarcError, match=f"not a usable vecarc dictionary \\({why}"):
            D.parse(data)
    body = bytearray(good[:-32])
    body[5] = 3  # an unknown storage form, re-sealed
    with pytest.raises(VecarcError, match="unknown storage form"):
        D.parse(bytes(body) + hashlib.sha256(body).digest())
    small = D.serialize(torch.zeros(1, 4, dtype=torch.int64), t.dictionary.fingerprint, {})
    assert D.parse(small).vectors.shape == (1, 4)
    with pytest.raises(VecarcError, match="values below 2\\^24"):
        D.serialize(torch.full((1, 4), 1 << 24), t.dictionary.fingerprint, {})


def test_cli_train_pack_and_read_with_a_dictionary(trained_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS)
    d = tmp_path / "c.vecdict"
    code, out = run_cli("train", corpus, "-o", d, "--vectors", "1", "--steps", "2", "--held-out", "2",
                        "--model", trained_dir, "--json")
    assert code == 0 and d.exists(), out
    code, out = run_cli("train", corpus, "-o", d, "--steps", "1", "--model", trained_dir)
    assert code == 2 and "exists" in out
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    arc = tmp_path / "a.vec"
    code, out = run_cli("pack", src, "-o", arc, "--dict", d, "--model", trained_dir, "-q")
    assert code == 0, out
    code, out = run_cli("unpack", arc, "-o", tmp_path / "x", "--model", trained_dir, "-q")
    assert code == 2 and "--dict" in out and "Traceback" not in out
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
    code, out = run_cli("verify", arc, "--dict", d, "--model", trained_dir, "-q")
    assert code == 0, out
    code, out = run_cli("unpack", arc, "-o", tmp_path / "y", "--dict", d, "--model", trained_dir, "-q")
    assert code == 0 and (tmp_path / "y" / "a.txt").read_bytes() == TEXT
    code, out = run_cli("info", arc, "--json")
    assert code == 0 and D.read(d).id in out
    plain = tmp_path / "p.vec"
    assert run_cli("pack", src, "-o", plain, "--model", trained_dir, "-q")[0] == 0
    code, out = run_cli("verify", plain, "--dict", d, "--model", trained_dir)
    assert code == 0 and "ignored: the archive was packed without a dictionary" in out


def test_format_5_records_the_dictionary(trained, trained_tiny, tmp_path):
    """Flag bit 2 and the dictionary's 8-byte id: an archive without one keeps its bytes."""
    _, path = trained
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    data = vecarc.pack([src], tmp_path / "a.vec", model=trained_tiny, dictionary=path).data
    assert data[4] & 4 and bytes.fromhex(D.read(path).id) in data
    assert parse_archive(data).header.cram["dictionary"] == D.read(path).id
    plain = vecarc.pack([src], tmp_path / "b.vec", model=trained_tiny).data
    assert not plain[4] & 4


def test_a_prefix_that_cannot_pay_is_not_learnt(trained_tiny, tmp_path):
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    notes = []
    r = vecarc.pack([src], tmp_path / "a.vec", vecarc.PackConfig(learn_prefix=4), model=trained_tiny,
                    progress=lambda e: notes.append(e.get("message", "")))
    plain = vecarc.pack([src], tmp_path / "b.vec", model=trained_tiny)
    assert r.data == plain.data and r.archive.header.prefix is None
    assert any("cannot repay 4 vectors" in n for n in notes)
    with pytest.raises(VecarcError, match="--learn-prefix needs coded chunks"):
        vecarc.PackConfig(mode="predict", learn_prefix=2).checked()


def test_a_learnt_prefix_is_kept_only_where_smaller(trained_tiny, tmp_path, monkeypatch):
    """With the pays test off, pack learns the vectors and packs again: the smaller archive is kept, and it
    decodes to the input whichever it is."""
    from vecarc import prefix

    monkeypatch.setattr(prefix, "PAYS", 1e9)
    monkeypatch.setattr(prefix, "STEPS", 20)
    src = tmp_path / "a.txt"
    src.write_bytes(CORPUS)
    cfg = vecarc.PackConfig(chunk_tokens=48)
    plain = vecarc.pack([src], tmp_path / "b.vec", cfg, model=trained_tiny)
    notes = []
    r = vecarc.pack([src], tmp_path / "a.vec", replace(cfg, learn_prefix=2), model=trained_tiny,
                    progress=lambda e: notes.append(e.get("message", "")))
    assert len(r.data) <= len(plain.data) and any("learning 2 vectors" in n for n in notes)
    if r.archive.header.prefix is not None:
        assert r.archive.header.prefix.plain_bytes == len(plain.data)
    written = vecarc.unpack(tmp_path / "a.vec", tmp_path / "out", model=trained_tiny)
    assert written[0].read_bytes() == CORPUS


def test_an_archive_with_its_own_vectors_round_trips(trained, trained_tiny, tmp_path):
    """Vectors stored in the archive (format 5, flag bit 3), after a dictionary's: decoded from the archive
    alone (with the dictionary), shown by info, and refused when the section lies."""
    from vecarc import prefix
    from vecarc.packing import pack_documents

    t, path = trained
    q16 = D.fit(trained_tiny, D.chunks_of(trained_tiny, [CORPUS], 48), D.TrainConfig(vectors=2, steps=3))
    own = prefix.quantise(q16, 12345)
    lm = D.attach(trained_tiny, t.dictionary, own)
    assert len(coded.prefix(lm)) == 1 + 2 + 2
    data = pack_documents([("a.txt", TEXT)], lm, vecarc.PackConfig(chunk_tokens=40)).data
    h = parse_archive(data).header
    assert h.prefix == own and data[4] & 8 and h.cram["dictionary"] == t.dictionary.id
    arc = tmp_path / "a.vec"
    arc.write_bytes(data)
    written = vecarc.unpack(arc, tmp_path / "out", model=trained_tiny, dictionary=path)
    assert written[0].read_bytes() == TEXT
    code, out = run_cli("info", arc, "--json")
    assert code == 0 and '"bytes_without": 12345' in out
    # a count past the bound, a multiplier of 0: written with a valid CRC, refused by the reader
    from vecarc.format import compact

    blocks = parse_archive(data).literals
    for bad, why in ((replace(own, mults=(1,) * 65, q=own.q * 33), "prefix vectors out of range"),
                     (replace(own, mults=(0, 1)), "a prefix multiplier out of range")):
        with pytest.raises(VecarcError, match=why):
            compact.parse(compact.serialize(replace(h, prefix=bad), blocks))


def test_hostile_dictionary_files_are_one_line_errors(trained, tmp_path):
    """A training record nested past Python's recursion limit, and a file with no end (a device)."""
    t, _ = trained
    k, d = t.dictionary.vectors.shape
    at = 6 + D.FP_BYTES + len(varint(d)) + len(varint(k)) + 4 * k * d  # where the record's length starts
    deep = b"[" * 30000 + b"]" * 30000
    body = t.data[:at] + varint(len(deep)) + deep
    with pytest.raises(VecarcError, match="training record is not JSON"):
        D.parse(body + hashlib.sha256(body).digest())
    if Path("/dev/zero").exists():
        with pytest.raises(VecarcError, match="no dictionary magic|too large"):
            D.read("/dev/zero")


def test_a_chunk_size_at_the_models_context_leaves_room_for_the_vectors(trained, trained_tiny, tmp_path):
    """Chunks are cut so that the sink, the dictionary's vectors and the chunk fit the model's context."""
    _, path = trained
    src = tmp_path / "a.txt"
    src.write_bytes(CORPUS * 2)
    r = vecarc.pack([src], tmp_path / "a.vec", vecarc.PackConfig(chunk_tokens=100_000), model=trained_tiny,
                    dictionary=path)
    assert max(c.tokens for c in r.archive.chunks) <= trained_tiny.chunk_limit(2)
    written = vecarc.unpack(tmp_path / "a.vec", tmp_path / "out", model=trained_tiny, dictionary=path)
    assert written[0].read_bytes() == CORPUS * 2


def test_bench_measures_coded_archives_with_a_dictionary(trained, trained_dir, tmp_path):
    """bench --dict packs and decodes its coded archive after the dictionary; predicted chunks ignore it."""
    import json

    _, path = trained
    src = tmp_path / "a.txt"
    src.write_bytes(TEXT)
    out = tmp_path / "b.json"
    kept = tmp_path / "kept"
    code, text = run_cli("bench", src, "--dict", path, "--model", trained_dir, "--vector-dtypes", "coded,predict",
                         "--reps", "1", "--json", out, "--archive", kept, "-q")
    assert code == 0, text
    made = {read_archive(p).header.cram["mode"]: read_archive(p).header.cram for p in kept.iterdir()}
    assert made["coded"]["dictionary"] == D.read(path).id and "dictionary" not in made["predict"]
    rows = json.loads(out.read_text())[0]["methods"]
    kinds = {r["method"]: r for r in rows if r["method"].startswith("vecarc")}
    assert {"vecarc coded", "vecarc predicted"} <= set(kinds), kinds
    assert all(r["verify_ok"] for r in kinds.values()), kinds
