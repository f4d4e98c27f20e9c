"""docs/format.md's test vectors, read from the page: a stranger's decoder is checked against these bytes."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard

from vecarc import VecarcError, read_archive
from vecarc.format import corrections, literal_bytes, parse_archive
from vecarc.format.container import PREFIX, header_dict, serialize

DOC = (Path(__file__).parent.parent / "docs" / "format.md").read_text(encoding="utf-8")


def _block(title: str, lang: str) -> str:
    """The first fenced block of `lang` after the heading `title`."""
    after = DOC[DOC.index(f"### {title}"):]
    return re.search(rf"```{lang}\n(.*?)```", after, re.S).group(1)


def test_the_minimal_archive_decodes_without_a_model():
    data = bytes.fromhex(_block("Test vector: a minimal archive", "hex"))
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    a = parse_archive(data)
    assert [(d.name, d.size, d.encoding) for d in a.documents] == [("a.bin", 7, "bytes")]
    assert literal_bytes(a, 0) == b"vecarc\n"
    assert hashlib.sha256(b"vecarc\n").hexdigest() == a.documents[0].sha256
    _, version, _, zlen, hlen, _, _ = PREFIX.unpack(data[: PREFIX.size])
    text = zstandard.ZstdDecompressor(dict_data=header_dict(version)).decompress(
        data[PREFIX.size : PREFIX.size + zlen], max_output_size=hlen)
    assert text.decode() == _block("Test vector: a minimal archive", "json").strip()


def test_the_corrections_stream_decodes_to_its_corrections():
    data = bytes.fromhex(_block("Test vector: a corrections stream", "hex"))
    want = [[(0, 3, 5), (4, 16, 1234)], [(2, 1, 1)]]
    assert corrections.parse(data, [2, 1], [8, 4], 49152) == want
    assert corrections.encode(want) == data


def test_header_dictionary_is_the_documented_one(tmp_path, monkeypatch, packed):
    from vecarc.format import container as archive

    doc = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
    for version, (name, digest) in archive.HEADER_DICTS.items():
        raw = (archive.DICT_DIR / name).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == digest
        assert f"| {version} | `vecarc/format/{name}` | {len(raw):,} | `{digest}` |" in doc
        assert "\n" + raw.decode() + "\n" in doc  # the appendix holds the exact bytes
    name = archive.HEADER_DICTS[archive.VERSION][0]
    damaged = tmp_path / name
    damaged.write_bytes((archive.DICT_DIR / name).read_bytes().replace(b"vecarc", b"vecarC", 1))
    monkeypatch.setattr(archive, "DICT_DIR", tmp_path)
    monkeypatch.setattr(archive, "_dict_cache", {})
    with pytest.raises(VecarcError, match="is damaged"):
        read_archive(packed)


def test_the_format_5_archive_decodes_without_a_model():
    import zlib

    data = bytes.fromhex(_block("Test vector: a format-5 archive", "hex"))
    assert zlib.crc32(data[:-4]).to_bytes(4, "little") == data[-4:]
    a = parse_archive(data)
    assert a.header.version == 5 and a.header.model.fingerprint == "fp2:2d73a2563b4b59cd"
    assert (a.header.model.vocab_size, a.header.model.hidden_size, a.header.model.sink_token_id) == (49152, 576, 0)
    assert [(d.name, d.size, d.encoding) for d in a.documents] == [("a.bin", 7, "bytes")]
    assert literal_bytes(a, 0) == b"vecarc\n"
    assert hashlib.sha256(b"vecarc\n").hexdigest().startswith(a.documents[0].sha256)


def test_the_format_6_archive_takes_its_name_from_its_file(tmp_path):
    data = bytes.fromhex(_block("Test vector: a format-6 archive", "hex"))
    a = parse_archive(data, stored_as="a.bin.vec")
    assert a.header.version == 6 and a.header.model.fingerprint == "fp2:2d73a256"
    assert (a.header.model.vocab_size, a.header.model.hidden_size, a.header.model.sink_token_id) == (49152, 576, 0)
    assert [(d.name, d.size, d.encoding) for d in a.documents] == [("a.bin", 7, "bytes")]
    assert literal_bytes(a, 0) == b"vecarc\n" and a.header.cram["chunk_tokens"] == 1024
    assert parse_archive(data).documents[0].name == "stdin"
    (tmp_path / "renamed.vec").write_bytes(data)
    (tmp_path / "renamed").write_bytes(data)
    assert read_archive(tmp_path / "renamed.vec").documents[0].name == "renamed"
    assert read_archive(tmp_path / "renamed").documents[0].name == "renamed.out"
    # today's writer makes the same bytes from the format-5 vector's archive, written as a.bin.vec with pack's
    # chunk size for coded chunks (format 6 stores none for it)
    old = parse_archive(bytes.fromhex(_block("Test vector: a format-5 archive", "hex")))
    old.header = replace(old.header, version=6, stored_as="a.bin.vec", cram={**old.header.cram, "chunk_tokens": 1024})
    assert serialize(old) == data
