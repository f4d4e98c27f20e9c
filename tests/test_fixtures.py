"""Archives written by released versions still read, verify and unpack byte-identically."""

from __future__ import annotations

from pathlib import Path

import pytest

import vecarc

HERE = Path(__file__).parent
V2 = HERE / "fixtures" / "v2-default.vec"
V3 = HERE / "fixtures" / "v3-default.vec"
V4 = HERE / "fixtures" / "v4-default.vec"
V5 = HERE / "fixtures" / "v5-default.vec"
V5_DICT, V5_DICT_FILE = HERE / "fixtures" / "v5-dict.vec", HERE / "fixtures" / "v5-dict.vecdict"
V6, V6_NAMED = HERE / "fixtures" / "v6-default.vec", HERE / "fixtures" / "v6-hello.txt.vec"
V2_INPUTS = {"hello.txt": HERE.parent / "examples" / "hello.txt", "blob.bin": HERE / "fixtures" / "v2-default.blob.bin"}


def test_v2_archive_reads_without_the_model():
    a = vecarc.read_archive(V2)
    assert [d.name for d in a.documents] == list(V2_INPUTS)
    assert [c.kind for c in a.chunks] == ["vector", "bytes"]
    assert (a.header.vectors.dtype, a.header.vectors.rank) == ("int8", 256)
    assert a.vectors.shape == (1, 1, 576)
    s = vecarc.summary(a)
    assert s["original_bytes"] == sum(p.stat().st_size for p in V2_INPUTS.values())
    assert s["archive_bytes"] == V2.stat().st_size


def test_v3_archive_reads_without_the_model():
    a = vecarc.read_archive(V3)
    assert a.header.version == 3 and [d.name for d in a.documents] == list(V2_INPUTS)
    assert [c.kind for c in a.chunks] == ["predicted", "bytes"]
    assert a.header.corrections.count == a.chunks[0].corrections == len(a.corrections[0]) == 15
    assert vecarc.summary(a)["archive_bytes"] == V3.stat().st_size


def test_v4_archive_reads_without_the_model():
    a = vecarc.read_archive(V4)
    assert a.header.version == 4 and [d.name for d in a.documents] == list(V2_INPUTS)
    assert a.header.model.fingerprint.startswith("fp2:")
    assert [c.kind for c in a.chunks] == ["predicted", "bytes"]
    assert a.header.corrections.count == a.chunks[0].corrections == len(a.corrections[0]) == 15
    assert vecarc.summary(a)["archive_bytes"] == V4.stat().st_size


def test_v5_archive_reads_without_the_model():
    a = vecarc.read_archive(V5)
    assert a.header.version == 5 and [d.name for d in a.documents] == list(V2_INPUTS)
    assert a.header.model.fingerprint == "fp2:2d73a2563b4b59cd" and a.header.model.source == "default"
    assert [c.kind for c in a.chunks] == ["coded", "bytes"]
    s = vecarc.summary(a)
    assert s["archive_bytes"] == V5.stat().st_size == 107
    # One document costs at most 48 bytes of prefix, header and checks; the second adds its size, token count
    # and 8-byte hash (its name aside).
    assert s["overhead_bytes"] - len("hello.txt") - len("blob.bin") <= 48 + 16


def test_v6_archives_read_without_the_model():
    a = vecarc.read_archive(V6)
    assert a.header.version == 6 and [d.name for d in a.documents] == list(V2_INPUTS)
    assert a.header.model.fingerprint == "fp2:2d73a256" and a.header.model.source == "default"
    assert [c.kind for c in a.chunks] == ["coded", "bytes"] and a.header.cram["chunk_tokens"] == 1024
    assert vecarc.summary(a)["archive_bytes"] == V6.stat().st_size == 94
    one = vecarc.read_archive(V6_NAMED)
    assert [d.name for d in one.documents] == ["v6-hello.txt"] and [c.kind for c in one.chunks] == ["coded"]
    s = vecarc.summary(one)
    assert s["name_from_file"] and s["archive_bytes"] == V6_NAMED.stat().st_size == 34
    # one document costs 25 bytes of prefix, header and checks, its name included (at most 48)
    assert s["overhead_bytes"] <= 25


@pytest.mark.slow
@pytest.mark.parametrize("archive", [V2, V3, V4, V5, V6], ids=["v2", "v3", "v4", "v5", "v6"])
def test_released_archives_unpack_byte_identically(tmp_path, archive):
    lm = vecarc.load_model(None, device="cpu")
    assert vecarc.verify(archive, model=lm, strict=True).ok
    written = vecarc.unpack(archive, tmp_path, model=lm)
    assert {p.name: p.read_bytes() for p in written} == {n: p.read_bytes() for n, p in V2_INPUTS.items()}


@pytest.mark.slow
def test_packing_the_v4_inputs_again_gives_the_v4_archive(tmp_path, monkeypatch):
    """Today's writer makes the released archive's bytes in predicted mode (bar the software versions it records)."""
    from vecarc.format import parse_archive, serialize

    for name, src in V2_INPUTS.items():
        (tmp_path / name).write_bytes(src.read_bytes())
    monkeypatch.chdir(tmp_path)
    r = vecarc.pack(list(V2_INPUTS), "again.vec", vecarc.PackConfig(mode="predict"),
                    model=vecarc.load_model(None, device="cpu"))
    again, released = parse_archive(r.data), vecarc.read_archive(V4)
    again.header.software = released.header.software
    assert serialize(again) == V4.read_bytes()


@pytest.mark.slow
def test_the_v6_archive_named_after_its_file_unpacks_byte_identically(tmp_path):
    lm = vecarc.load_model(None, device="cpu")
    written = vecarc.unpack(V6_NAMED, tmp_path, model=lm)
    assert [(p.name, p.read_bytes()) for p in written] == [("v6-hello.txt", V2_INPUTS["hello.txt"].read_bytes())]


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_packing_the_v6_inputs_again_gives_the_v6_archives(tmp_path, monkeypatch, threads):
    """The integer model makes the same bytes however many threads compute it."""
    import torch

    for name, src in V2_INPUTS.items():
        (tmp_path / name).write_bytes(src.read_bytes())
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        lm = vecarc.load_model(None, device="cpu")
        r = vecarc.pack(list(V2_INPUTS), "again.vec", model=lm)
        (tmp_path / "v6-hello.txt").write_bytes(V2_INPUTS["hello.txt"].read_bytes())
        one = vecarc.pack(["v6-hello.txt"], model=lm)
    finally:
        torch.set_num_threads(before)
    assert r.data == V6.read_bytes() and one.data == V6_NAMED.read_bytes()


def test_v5_archive_with_a_dictionary_and_its_own_vectors_reads_without_the_model():
    a = vecarc.read_archive(V5_DICT)
    assert a.header.cram["dictionary"] == "79d401132d1171c0" and a.header.prefix.count == 1
    assert [d.name for d in a.documents] == ["hello.txt"] and [c.kind for c in a.chunks] == ["coded"]
    assert a.header.prefix.plain_bytes == 67 and vecarc.summary(a)["prefix"]["saved_bytes"] == 67 - 647


@pytest.mark.slow
def test_v5_archive_with_a_dictionary_and_its_own_vectors_unpacks_byte_identically(tmp_path):
    """Format 5's flag bits 2 and 3: decoded after the dictionary's 2 vectors and the archive's own."""
    from vecarc import dictionary as D

    lm = vecarc.load_model(None, device="cpu")
    assert D.read(V5_DICT_FILE).id == "79d401132d1171c0"
    with pytest.raises(vecarc.VecarcError, match="pass it with --dict"):
        vecarc.verify(V5_DICT, model=lm)
    written = vecarc.unpack(V5_DICT, tmp_path, model=lm, dictionary=V5_DICT_FILE)
    assert [p.read_bytes() for p in written] == [V2_INPUTS["hello.txt"].read_bytes()]
