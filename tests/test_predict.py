"""Predicted chunks and their corrections: the codec, packing and round trips (the reader's refusals of
damaged or lying corrections sections: test_reader.py)."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import TRAIN_TEXT
from hypothesis import given, settings
from hypothesis import strategies as st

import vecarc
from vecarc import PackConfig
from vecarc.chunks.predicted import class_bits, teacher_corrections
from vecarc.decode import greedy_decode
from vecarc.format import corrections as codec
from vecarc.format import header as header_mod
from vecarc.text import tokenize_exact

VOCAB = 49152


def _random_corrections(rng: random.Random, chunks: int, length: int) -> list[list[codec.Correction]]:
    out = []
    for _ in range(chunks):
        pos = sorted(rng.sample(range(length), rng.randint(1, length // 2)))
        out.append([(p, b := rng.randint(1, 16), rng.randrange(min(1 << b, VOCAB))) for p in pos])
    return out


def test_codec_round_trip():
    rng = random.Random(0)
    for _ in range(50):
        corrections = _random_corrections(rng, rng.randint(1, 4), rng.randint(2, 600))
        data = codec.encode(corrections)
        assert codec.parse(data, [len(f) for f in corrections], [600] * len(corrections), VOCAB) == corrections
    assert codec.full_bits(VOCAB) == 16 and codec.full_bits(1 << 16) == 16
    assert codec.full_bits((1 << 16) + 1) == 17


def test_codec_is_smaller_than_token_ids_when_few_bits_do():
    rng = random.Random(1)
    corrections = [[(p, b := rng.choice((1, 2, 3, 4, 6)), rng.randrange(1 << b)) for p in range(0, 1000, 2)]]
    assert len(codec.encode(corrections)) < len(corrections[0])  # ~7 bits each, where a token id takes 16


def _valid():
    return [[(0, 3, 5), (2, 4, 9), (7, 1, 1), (9, 16, 40000)]]


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-1], "ends early"),
    (lambda d: d + b"\0", "left over"),
    (lambda d: b"\1" + d[1:], "bad start"),
    (lambda d: d[:3], "bad start"),
])
def test_codec_refuses_damaged_streams(damage, message):
    data = codec.encode(_valid())
    with pytest.raises(ValueError, match=message):
        codec.parse(damage(data), [4], [10], VOCAB)


def test_codec_refuses_what_no_writer_makes():
    data = codec.encode(_valid())
    with pytest.raises(ValueError, match="past a chunk of 9 tokens"):
        codec.parse(data, [4], [9], VOCAB)
    with pytest.raises(ValueError, match="ends in value 40000"):
        codec.parse(data, [4], [10], 40000)  # no token 40000 in a vocabulary of 40,000
    with pytest.raises(ValueError, match="bit count outside 1..15"):
        codec.parse(data, [4], [10], 1 << 15)  # 16 bits name more tokens than 32,768
    with pytest.raises(ValueError, match="left over|ends early"):
        codec.parse(data, [3], [10], VOCAB)  # a count that lies


def test_class_bits_is_the_fewest_that_single_the_token_out():
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0, 4.9, 0.0, 0.0, 0.0]])  # token 2 is third
    bits = class_bits(logits, torch.tensor([2]), 0.5, 3)
    # 1 bit: class {0, 2, 4, 6} holds 0 and 4 above 2; 2 bits: {2, 6}, 2 leads 6 by 3.0.
    assert bits.tolist() == [2]
    assert class_bits(logits, torch.tensor([4]), 0.5, 3).tolist() == [3]  # 4.9 vs 5.0 in {0, 4}: only alone


def test_predicted_round_trip_on_the_tiny_model(trained_tiny, predicted):
    d, out, r = predicted
    a = vecarc.read_archive(out)
    kinds = [c.kind for c in a.chunks]
    assert "predicted" in kinds and a.header.version == 4
    corrections = [f for v in a.corrections.values() for f in v]
    assert corrections and min(b for _, b, _ in corrections) < codec.full_bits(trained_tiny.vocab_size)
    v = vecarc.verify(out, model=trained_tiny, strict=True)
    assert v.ok, v.problems
    assert all(rep.flips == 0 for rep in v.stress if rep.skipped is None)
    written = vecarc.unpack(out, d / "out", model=trained_tiny)
    assert [p.read_bytes() for p in written] == [(d / "a.txt").read_bytes(), (d / "b.bin").read_bytes()]


def test_a_correction_names_the_best_token_of_its_class(trained_tiny):
    ids = list(tokenize_exact(trained_tiny, b"the cat sat on the mat"))
    corrections = teacher_corrections(trained_tiny, [ids], margin=0.5)[0]
    empty = torch.zeros(1, 0, trained_tiny.hidden_size)
    got, mins = greedy_decode(trained_tiny, empty, [len(ids)], corrections=[corrections])
    assert got[0] == ids and mins[0] >= 0.5
    plain, _ = greedy_decode(trained_tiny, empty, [len(ids)])
    assert plain[0] != ids  # without them the model says something else


def test_a_text_known_by_heart_stays_within_the_decoding_cap(trained_tiny, tmp_path, monkeypatch):
    # Tighten the cap so that the tiny model's few corrections cannot pay for all its tokens.
    monkeypatch.setattr(header_mod, "GREEDY_TOKEN_ALLOWANCE", 30)
    monkeypatch.setattr(header_mod, "GREEDY_TOKENS_PER_BYTE", 1)
    src = tmp_path / "t.txt"
    src.write_text(TRAIN_TEXT[:400])
    out = tmp_path / "t.vec"
    vecarc.pack([src], out, PackConfig(mode="predict", chunk_tokens=20), model=trained_tiny)
    a = vecarc.read_archive(out)
    greedy = sum(c.tokens for c in a.chunks if c.is_greedy)
    assert greedy <= header_mod.greedy_cap(a.header.corrections.section[1])
    assert any(c.kind == "tokens" for c in a.chunks)
    assert vecarc.unpack(out, tmp_path / "o", model=trained_tiny)[0].read_bytes() == src.read_bytes()


def test_an_interrupted_predicted_pack_resumes_byte_identically(trained_tiny, tmp_path):
    from vecarc.journal import journal_path

    src = tmp_path / "a.txt"
    src.write_text((TRAIN_TEXT * 3)[:2400])
    ref = vecarc.pack([src], tmp_path / "ref.vec", PackConfig(mode="predict", chunk_tokens=8), model=trained_tiny)
    assert ref.archive.header.plan["chunks_planned"] > 64  # more than one greedy batch

    def stop(e):
        if e.get("event") == "predict":
            raise KeyboardInterrupt

    out = tmp_path / "a.vec"
    with pytest.raises(KeyboardInterrupt):
        vecarc.pack([src], out, PackConfig(mode="predict", chunk_tokens=8), model=trained_tiny, progress=stop)
    assert not out.exists() and journal_path(out).exists()
    seen = []
    vecarc.pack([src], out, PackConfig(mode="predict", chunk_tokens=8), model=trained_tiny, resume=True,
                progress=seen.append)
    done = [e for e in seen if e.get("event") == "predict"]
    assert done[-1]["done"] == ref.archive.header.plan["chunks_planned"] - 64  # journaled chunks are not redone
    assert out.read_bytes() == (tmp_path / "ref.vec").read_bytes()
    assert not journal_path(out).exists()


def _with_corrections(meta, change):
    fixed = [list(c) for c in meta["info"]["corrections"]]
    return {**meta, "info": {"corrections": change(fixed)}}


@pytest.mark.parametrize("change", [
    lambda c: [[c[0][0], 0, 0]] + c[1:],  # no bits
    lambda c: [c[1], c[0]] + c[2:],  # out of order
    lambda c: [c[0][:2]] + c[1:],  # two fields
    lambda c: [[c[0][0], 30, 0]] + c[1:],  # more bits than any token id needs
    lambda c: [[c[0][0], None, 0]] + c[1:],
    lambda c: [[10**6, 1, 0]],  # past the chunk
], ids=["no-bits", "out-of-order", "two-fields", "too-many-bits", "null", "past-the-chunk"])
def test_a_resealed_predicted_journal_is_refused_with_one_line(trained_tiny, tmp_path, change):
    from vecarc.errors import VerificationError
    from vecarc.journal import RESULT, _record, _records, journal_path

    src, out = tmp_path / "a.txt", tmp_path / "a.vec"
    src.write_text((TRAIN_TEXT * 3)[:2400])

    def stop(e):
        if e.get("event") == "predict":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vecarc.pack([src], out, PackConfig(mode="predict", chunk_tokens=8), model=trained_tiny, progress=stop)
    recs, _ = _records(journal_path(out).read_bytes())
    i = next(i for i, r in enumerate(recs) if r[0] == RESULT and r[1]["outcome"] == "predicted"
             and len(r[1]["info"]["corrections"]) >= 2)
    journal_path(out).write_bytes(b"".join(_record(k, _with_corrections(m, change) if n == i else m, t)
                                           for n, (k, m, t, _) in enumerate(recs)))
    with pytest.raises(VerificationError, match="holds work that does not decode"):
        vecarc.pack([src], out, PackConfig(mode="predict", chunk_tokens=8), model=trained_tiny, resume=True)
    assert not out.exists()


@settings(max_examples=300, deadline=2000, derandomize=True)
@given(data=st.binary(max_size=200), count=st.integers(0, 50), length=st.integers(1, 1 << 20))
def test_random_sections_parse_or_raise_value_error(data, count, length):
    try:
        got = codec.parse(data, [count], [length], VOCAB)
    except ValueError:
        return
    assert len(got[0]) == count and all(0 <= p < length and 0 <= v < VOCAB for p, _, v in got[0])
