"""One document out of many, as tar takes them: unpack and verify decode only the named members'
chunks (of a volume index, only the volumes that hold them); a member that names nothing is an error."""

from __future__ import annotations

from functools import partial

import pytest
from helpers import run_cli

import vecarc
from vecarc import VecarcError
from vecarc.tiny import TRAIN_TEXT

DOCS = {"notes/a.txt": TRAIN_TEXT[:600].encode(), "notes/b.txt": TRAIN_TEXT[600:1500].encode(),
        "c.md": TRAIN_TEXT[1500:1900].encode()}


PREDICT = partial(vecarc.PackConfig, mode="predict")  # predicted chunks, what these tests are about


def _inputs(d):
    (d / "notes").mkdir(exist_ok=True)
    for name, data in DOCS.items():
        (d / name).write_bytes(data)
    return list(DOCS)


def _decoded_tokens(monkeypatch) -> list[int]:
    """Every greedy decode unpack runs, as the tokens it decodes."""
    from vecarc import unpacking

    real, seen = unpacking.decode_many, []

    def counting(lm, vectors, lengths, *a, **k):
        seen.extend(lengths)
        return real(lm, vectors, lengths, *a, **k)

    monkeypatch.setattr(unpacking, "decode_many", counting)
    return seen


@pytest.fixture()
def archive(tmp_path, monkeypatch, trained_tiny):
    monkeypatch.chdir(tmp_path)
    r = vecarc.pack(_inputs(tmp_path), "m.vec", PREDICT(chunk_tokens=32), model=trained_tiny)
    return tmp_path, r.archive


def test_one_member_unpacks_alone_and_only_its_chunks_are_decoded(archive, trained_tiny, monkeypatch):
    d, a = archive
    seen = _decoded_tokens(monkeypatch)
    written = vecarc.unpack(d / "m.vec", d / "out", ["notes/b.txt"], model=trained_tiny)
    assert [p.relative_to(d / "out").as_posix() for p in written] == ["notes/b.txt"]
    assert written[0].read_bytes() == DOCS["notes/b.txt"]
    assert not (d / "out" / "c.md").exists() and not (d / "out" / "notes" / "a.txt").exists()
    b = next(i for i, doc in enumerate(a.documents) if doc.name == "notes/b.txt")
    greedy = [c.tokens for c in a.chunks if c.doc == b and c.kind in ("predicted", "vector")]
    assert greedy and sorted(seen) == sorted(greedy)  # its own chunks, and no other's


def test_globs_pick_members_and_a_member_that_names_nothing_is_an_error(archive, trained_tiny):
    d, _ = archive
    written = vecarc.unpack(d / "m.vec", d / "out", ["notes/*"], model=trained_tiny)
    assert sorted(p.name for p in written) == ["a.txt", "b.txt"]
    with pytest.raises(VecarcError, match="nothing.txt: not found in the archive"):
        vecarc.unpack(d / "m.vec", d / "out2", ["c.md", "nothing.txt"], model=trained_tiny)
    assert not (d / "out2").exists()
    code, out = run_cli("unpack", d / "m.vec", "nope*", "-o", d / "out3", "--model", trained_tiny.folder)
    assert code == 2 and "nope*: not found in the archive" in out
    code, out = run_cli("verify", d / "m.vec", "c.md", "--model", trained_tiny.folder)
    assert code == 0 and "OK (1 document," in out


def test_a_member_of_a_volume_index_decodes_only_the_volumes_that_hold_it(tmp_path, monkeypatch, trained_tiny):
    from vecarc.volumes import Indexed

    monkeypatch.chdir(tmp_path)
    r = vecarc.pack(_inputs(tmp_path), "v.vec", PREDICT(chunk_tokens=32, volume_size=500), model=trained_tiny)
    holding = [k for k, v in enumerate(r.index.volumes) if any(p.volume == k for doc in r.index.documents
                                                               if doc.name == "c.md" for p in doc.parts)]
    assert len(holding) < len(r.index.volumes)
    opened = []
    real = Indexed.volume
    monkeypatch.setattr(Indexed, "volume", lambda self, k, *a: opened.append(k) or real(self, k, *a))
    written = vecarc.unpack("v.vec", "out", ["c.md"], model=trained_tiny)
    assert [p.read_bytes() for p in written] == [DOCS["c.md"]] and opened == holding
    assert vecarc.verify("v.vec", ["c.md"], model=trained_tiny).ok
    import io

    buf = io.BytesIO()  # a document cut across volumes comes out whole, after its hash matched
    assert len([p for doc in r.index.documents if doc.name == "notes/b.txt" for p in doc.parts]) > 1
    vecarc.cat("v.vec", ["notes/b.txt", "c.md"], buf, model=trained_tiny)
    assert buf.getvalue() == DOCS["notes/b.txt"] + DOCS["c.md"]


def test_cat_writes_the_members_bytes_and_nothing_on_a_hash_failure(archive, trained_tiny, tmp_path):
    import io

    from helpers import resealed

    d, _ = archive
    buf = io.BytesIO()
    n = vecarc.cat(d / "m.vec", ["c.md", "notes/a.txt"], buf, model=trained_tiny)
    assert buf.getvalue() == DOCS["notes/a.txt"] + DOCS["c.md"] and n == len(buf.getvalue())  # archive order
    buf = io.BytesIO()
    vecarc.cat(d / "m.vec", None, buf, model=trained_tiny)
    assert buf.getvalue() == b"".join(DOCS.values())

    def lie(h):  # the last document's hash no longer matches: nothing at all may be written
        h["documents"][-1]["sha256"] = "0" * 64

    (tmp_path / "bad.vec").write_bytes(resealed((d / "m.vec").read_bytes(), lie))
    buf = io.BytesIO()
    with pytest.raises(vecarc.VerificationError, match="nothing written"):
        vecarc.cat(tmp_path / "bad.vec", None, buf, model=trained_tiny)
    assert buf.getvalue() == b""


def test_cat_and_unpack_c_on_the_command_line(archive, trained_tiny):
    from click.testing import CliRunner

    from vecarc.cli import main

    d, _ = archive
    for args in (["cat", str(d / "m.vec"), "notes/b.txt"], ["unpack", "-c", str(d / "m.vec"), "notes/b.txt"]):
        r = CliRunner().invoke(main, [*args, "--model", trained_tiny.folder, "-q"], catch_exceptions=False)
        assert r.exit_code == 0 and r.stdout_bytes == DOCS["notes/b.txt"]


def test_list_names_every_document_with_its_share(archive, tmp_path, monkeypatch, trained_tiny):
    import json

    d, a = archive
    code, out = run_cli("list", d / "m.vec")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].split("\t") == ["name", "size", "stored", "chunks", "kind"]
    assert [line.split("\t")[0] for line in lines[1:]] == list(DOCS)
    code, out = run_cli("list", d / "m.vec", "--json")
    rows = json.loads(out)
    assert [r["size"] for r in rows] == [len(v) for v in DOCS.values()]
    assert abs(sum(r["stored"] for r in rows) - (a.size - vecarc.summary(a)["overhead_bytes"])) <= len(rows)
    monkeypatch.chdir(tmp_path)
    _inputs(tmp_path)
    vecarc.pack(list(DOCS), "v.vec", PREDICT(chunk_tokens=32, volume_size=500), model=trained_tiny)
    code, out = run_cli("list", "v.vec", "--json")
    assert code == 0 and [(r["name"], r["size"]) for r in json.loads(out)] == [(k, len(v)) for k, v in DOCS.items()]
