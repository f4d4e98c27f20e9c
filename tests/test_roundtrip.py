"""Round trips through the real pipeline (cram, greedy decode, archive) on the tiny model.

The tiny random model cannot hold many tokens per vector, so these tests use
short chunks; what they check is that every path gives back identical bytes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import FAST

import vecarc
from vecarc import PackConfig, SearchSettings, read_archive
from vecarc.api import summary

TEXTS = {
    "plain.txt": b"The quick brown fox jumps over the lazy dog.",
    "unicode.md": (
        "Caf\u00e9 na\u00efve \u2014 r\u00e9sum\u00e9 \U0001f389\n\tline two\r\nline three \u4e2d\u6587\n"
    ).encode(),
    "empty.txt": b"",
    "spaces.txt": b"   \n\n\t  \n",
}


def pack_and_unpack(tmp_path, tiny, files: dict[str, bytes], **kw):
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        (src / name).write_bytes(data)
        paths.append(src / name)
    out = tmp_path / "a.vec"
    kw.setdefault("chunk_tokens", 2)
    kw.setdefault("min_chunk_tokens", 1)
    res = vecarc.pack(paths, out, replace(kw.pop("config", FAST), **kw), model=tiny)
    dest = tmp_path / "out"
    written = vecarc.unpack(out, dest, model=tiny)
    assert sorted(p.name for p in written) == sorted(files)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
    return res, read_archive(out)


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_single_document_round_trip(tmp_path, tiny, name):
    res, a = pack_and_unpack(tmp_path, tiny, {name: TEXTS[name]})
    assert a.documents[0].encoding == "text"
    if TEXTS[name]:
        assert any(c.kind == "vector" for c in a.chunks)
    else:
        assert a.chunks == []


def test_several_documents_and_non_utf8(tmp_path, tiny):
    files = dict(TEXTS)
    files["binary.bin"] = bytes(range(256)) + b"\xff\xfe not utf-8"
    _, a = pack_and_unpack(tmp_path, tiny, files)
    enc = {d.name: d.encoding for d in a.documents}
    assert enc["binary.bin"] == "bytes"
    assert enc["plain.txt"] == "text"
    s = summary(a)
    assert s["chunks"]["bytes"] == 1
    assert s["original_bytes"] == sum(len(v) for v in files.values())


def test_chunks_that_never_converge_become_literal(tmp_path, tiny):
    hopeless = PackConfig(mode="vectors", margin=1e9, search=SearchSettings(max_steps=2, batch_size=64))
    res, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]}, config=hopeless,
                             chunk_tokens=8, min_chunk_tokens=2)
    kinds = {c.kind for c in a.chunks}
    assert kinds == {"tokens"}
    assert res.retries > 0
    assert a.vectors is None
    assert len(a.chunks) == 1  # neighbouring literal chunks are stored as one block


def test_long_text_is_tokenized_in_pieces_and_round_trips(tmp_path, tiny, monkeypatch):
    from vecarc import text as T

    text = ("Café naïve résumé, the quick brown fox; 12345 jumps over the lazy dog.\n   indented line\n" * 40).encode()
    monkeypatch.setattr(T, "PIECE_CHARS", 300)
    monkeypatch.setattr(T, "DECODE_TOKENS", 100)
    assert len(T._pieces(text.decode())) > 5
    ids = T.tokenize_exact(tiny, text)
    assert len(ids) > 500 and T.detokenize(tiny, ids) == text
    # the data path only
    hopeless = PackConfig(mode="vectors", margin=1e9, search=SearchSettings(max_steps=1, batch_size=64))
    _, a = pack_and_unpack(tmp_path, tiny, {"long.txt": text}, config=hopeless, chunk_tokens=32,
                           min_chunk_tokens=16)
    assert sum(c.tokens for c in a.chunks) == len(ids)


def test_vectors_are_stored_in_the_dtype_they_were_verified_in(tmp_path, tiny):
    import torch

    for dt, tdt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        s = replace(FAST, search=SearchSettings(max_steps=150, patience=50, batch_size=64, vector_dtype=dt))
        _, a = pack_and_unpack(tmp_path / dt, tiny, {"plain.txt": TEXTS["plain.txt"]}, config=s)
        assert a.vectors.dtype == tdt
        assert a.header.vectors.dtype == dt


@pytest.mark.parametrize("form", ["int8", "int4"])
def test_integer_vectors_round_trip_bit_identically(tmp_path, tiny, form):
    import torch

    from vecarc.format import parse_archive, quant, serialize

    s = replace(FAST, search=SearchSettings(max_steps=150, patience=50, batch_size=64, vector_dtype=form))
    res, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]}, config=s)
    assert a.header.vectors.dtype == form and a.vectors is not None
    # What was verified is what is stored: the in-memory vectors equal those read back, bit for bit.
    assert torch.equal(res.archive.vectors, a.vectors)
    assert torch.equal(parse_archive(serialize(a)).vectors, a.vectors)
    level = quant.LEVELS[form]
    scale = a.vectors.abs().amax(-1, keepdim=True) / level
    n = a.vectors / scale
    assert torch.equal(n, n.round()) and n.abs().max() <= level  # on the integer grid
    stored = quant.encode(a.vectors, form)
    count, k, d = a.vectors.shape
    assert stored["vectors"].numel() == count * k * (d if form == "int8" else d // 2)
    raw = count * quant.row_bytes(form, k, d)
    sec = a.header.vectors.section[1]
    assert (a.header.vectors.compression == "zstd") == (sec < raw) and sec <= raw  # zstd only where it pays


def test_split_and_retry_still_round_trips(tmp_path, tiny):
    # Chunks of 8 rarely converge on the tiny model: they are split down to size 1.
    res, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]}, chunk_tokens=8)
    assert res.retries > 0
    assert any(c.kind == "vector" for c in a.chunks)
    assert sum(c.tokens for c in a.chunks) == sum(d["tokens"] for d in summary(a)["documents"])


def test_same_seed_same_archive(tmp_path, tiny):
    (tmp_path / "t.txt").write_bytes(TEXTS["plain.txt"])
    a = vecarc.pack([tmp_path / "t.txt"], tmp_path / "1.vec", replace(FAST, chunk_tokens=2), model=tiny)
    b = vecarc.pack([tmp_path / "t.txt"], tmp_path / "2.vec", replace(FAST, chunk_tokens=2), model=tiny)
    assert a.archive_bytes == b.archive_bytes
    h1, h2 = read_archive(tmp_path / "1.vec").header, read_archive(tmp_path / "2.vec").header
    assert h1.chunks == h2.chunks


@pytest.mark.parametrize("form,rank", [("fp16", 32), ("int8", 32), ("int4", 16)])
def test_low_rank_vectors_round_trip_and_store_only_coordinates(tmp_path, tiny, form, rank):
    import torch

    from vecarc.format import basis, parse_archive, quant, serialize

    s = replace(FAST, search=SearchSettings(max_steps=150, patience=50, batch_size=64, vector_dtype=form,
                                            rank=rank))
    res, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]}, config=s)
    v = a.header.vectors.to_json()
    assert v["rank"] == rank and v["basis"] == {"kind": basis.KIND, "seed": 0}
    count, k, _ = a.vectors.shape
    assert tuple(a.coords.shape) == (count, k, rank)
    raw = count * quant.row_bytes(form, k, rank)  # r numbers per vector, not d
    assert v["section"][1] == raw if v["compression"] == "none" else v["section"][1] < raw
    # Bit for bit: what pack verified, what is read back, and P @ z recomputed from the stored z.
    assert torch.equal(res.archive.vectors, a.vectors)
    assert torch.equal(parse_archive(serialize(a)).coords, a.coords)
    assert torch.equal(basis.expand(a.coords, tiny.hidden_size, 0), a.vectors)


def test_rank_larger_than_the_model_is_refused(tmp_path, tiny):
    from vecarc.errors import VecarcError

    (tmp_path / "t.txt").write_bytes(TEXTS["plain.txt"])
    with pytest.raises(VecarcError, match="--rank 65 is larger than the model dimension 64"):
        vecarc.pack([tmp_path / "t.txt"], tmp_path / "a.vec",
                    PackConfig(search=SearchSettings(rank=65), chunk_tokens=2), model=tiny)
    assert not (tmp_path / "a.vec").exists()


def test_search_dtype_auto_follows_the_hardware_and_is_recorded(tmp_path, tiny):
    from vecarc.errors import VecarcError

    assert SearchSettings().resolved(64, fast_bf16=True).search_dtype == "bf16"
    assert SearchSettings().resolved(64, fast_bf16=False).search_dtype == "fp32"
    assert SearchSettings(search_dtype="fp32").resolved(64, fast_bf16=True).search_dtype == "fp32"
    with pytest.raises(VecarcError, match="unknown search dtype 'fp8'"):
        SearchSettings(search_dtype="fp8").resolved(64)
    _, a = pack_and_unpack(tmp_path, tiny, {"plain.txt": TEXTS["plain.txt"]})
    assert a.header.cram["search_dtype"] == ("bf16" if tiny.fast_bf16() else "fp32")
    # Compile is decided by the job alone (its chunk count and device) and recorded as decided.
    assert a.header.cram["compile"] == "off"
    from vecarc.search import COMPILE_MIN_CHUNKS, wants_compile

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert wants_compile(SearchSettings(), cpu, COMPILE_MIN_CHUNKS)
    assert not wants_compile(SearchSettings(), cpu, COMPILE_MIN_CHUNKS - 1)
    assert not wants_compile(SearchSettings(), gpu, 10**6)
    assert wants_compile(SearchSettings(compile="on"), cpu, 1)
    assert not wants_compile(SearchSettings(compile="off"), cpu, 10**6)


