"""Format 6's container: a one-document archive named after its file stores no name, defaults cost nothing,
the last block stores no length; lies about any of it are refused in one line before decoding."""

from __future__ import annotations

import zlib
from dataclasses import replace

import pytest
from helpers import TRAIN_TEXT, run_cli

import vecarc
from vecarc.format import compact, encode_tokens, parse_archive, serialize

TEXT = (TRAIN_TEXT[:300] + " and something it has not read: zq 42 xv.\n").encode()


@pytest.fixture()
def notes(tmp_path, monkeypatch, trained_tiny):
    """notes.txt packed as `vecarc pack notes.txt` does: notes.txt.vec, two coded chunks."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_bytes(TEXT)
    vecarc.pack(["notes.txt"], config=vecarc.PackConfig(chunk_tokens=48), model=trained_tiny)
    return tmp_path / "notes.txt.vec"


def test_an_archive_named_after_its_document_stores_no_name(notes, tmp_path, trained_tiny):
    data = notes.read_bytes()
    a = vecarc.read_archive(notes)
    assert a.header.version == 6 and data[4] & compact.FLAG_NAMED_BY_FILE and b"notes" not in data
    assert [d.name for d in a.documents] == ["notes.txt"] and vecarc.summary(a)["name_from_file"]
    assert len(a.chunks) >= 2  # and only the first block stores its length
    # zstd's rule: a renamed archive unpacks under its new name, one without .vec under NAME.out
    (tmp_path / "renamed.txt.vec").write_bytes(data)
    (tmp_path / "backup").write_bytes(data)
    assert [p.name for p in vecarc.unpack("renamed.txt.vec", "o1", model=trained_tiny)] == ["renamed.txt"]
    assert [p.name for p in vecarc.unpack("backup", "o2", model=trained_tiny)] == ["backup.out"]
    assert (tmp_path / "o1" / "renamed.txt").read_bytes() == (tmp_path / "o2" / "backup.out").read_bytes() == TEXT
    assert parse_archive(data).documents[0].name == "stdin"  # bytes with no file name


def test_names_are_stored_where_the_file_does_not_give_them(notes, tmp_path, trained_tiny):
    for out in ("other.vec", "notes.vec"):
        r = vecarc.pack(["notes.txt"], out, vecarc.PackConfig(chunk_tokens=48), model=trained_tiny)
        assert b"notes.txt" in r.data and not r.data[4] & compact.FLAG_NAMED_BY_FILE
        assert [d.name for d in vecarc.read_archive(out).documents] == ["notes.txt"]
    code, _ = run_cli("pack", "notes.txt", "-o", "two.vec", "--chunk-tokens", "48", "--model", trained_tiny.folder,
                      "-q", "--force")
    assert code == 0
    # the name is kept exactly: one byte more than the archive named after its file, plus the name
    assert len((tmp_path / "other.vec").read_bytes()) == len(notes.read_bytes()) + 2 + len("notes.txt")


def test_named_by_file_archives_refuse_every_damage(notes):
    good = notes.read_bytes()
    for cut in range(len(good)):
        with pytest.raises(vecarc.VecarcError):
            parse_archive(good[:cut], stored_as=notes.name)
    for at in range(len(good)):
        bad = bytearray(good)
        bad[at] ^= 0x01
        with pytest.raises(vecarc.VecarcError):
            parse_archive(bytes(bad), stored_as=notes.name)


def _sealed(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def test_a_chunk_count_beyond_the_bytes_is_refused_before_allocating():
    """A header that cuts 2^40 tokens into chunks of one token would need a list of 2^40 spans."""
    head = compact.MAGIC + bytes([6, compact.FLAG_CHUNK]) + bytes(4) + compact.varint(1) + compact.varint(1)
    doc = compact.varint(1) + b"a" + compact.varint(5) + compact.varint((1 << 20) + 1) + bytes(8)
    with pytest.raises(vecarc.VecarcError, match="declares"):
        parse_archive(_sealed(head + doc + b"\x00" * 64))


def test_the_last_block_flag_must_name_a_text_chunk(notes, tmp_path, trained_tiny):
    good = notes.read_bytes()
    lying = tmp_path / "lie" / notes.name  # the last coded stream taken for a zstd frame of token ids
    lying.parent.mkdir()
    lying.write_bytes(_sealed(good[:4] + bytes([good[4] | compact.FLAG_LAST_LITERAL]) + good[5:-4]))
    code, out = run_cli("unpack", lying, "-o", tmp_path / "o", "--model", trained_tiny.folder)
    assert code != 0 and "Traceback" not in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "notes.txt").exists()
    raw = compact.MAGIC + bytes([6, compact.FLAG_LAST_LITERAL]) + bytes(4) + compact.varint(1)
    doc = compact.varint(1) + b"b" + compact.varint(1) + compact.varint(0) + bytes(8)
    with pytest.raises(vecarc.VecarcError, match="flagged literal"):
        parse_archive(_sealed(raw + doc + b"\x28\xb5\x2f\xfd"))
    # a literal block whose length is stored, then an empty text document: no block goes without a length
    raw = compact.MAGIC + bytes([6, compact.FLAG_LAST_LITERAL]) + bytes(4) + compact.varint(2)
    docs = (compact.varint(1) + b"a" + compact.varint(4) + compact.varint(2) + bytes(8) + compact.varint(2 * 3 + 1)
            + compact.varint(1) + b"b" + compact.varint(0) + compact.varint(1) + bytes(8))
    with pytest.raises(vecarc.VecarcError, match="flagged literal"):
        parse_archive(_sealed(raw + docs + encode_tokens([7])[:3]))


def test_a_literal_last_block_round_trips(notes):
    """Flag bit 7: the archive's last chunk a literal token block, its length implied."""
    a = parse_archive(notes.read_bytes(), stored_as=notes.name)
    last = len(a.chunks) - 1
    a.header.chunks[last] = replace(a.chunks[last], kind="tokens")
    a.literals[last] = encode_tokens(list(range(a.chunks[last].tokens)))
    data = serialize(a)
    assert data[4] & compact.FLAG_LAST_LITERAL
    b = parse_archive(data, stored_as=notes.name)
    assert [c.kind for c in b.chunks] == [c.kind for c in a.chunks] and b.literals == a.literals
