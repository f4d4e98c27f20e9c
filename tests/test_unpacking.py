"""Unpack writes every document or none (nothing when verification fails), never through a file, a folder or a
symlink in the way; a written file (here pack's archive) has the mode the umask says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TWO_DOCS

import vecarc
from vecarc import VecarcError, read_archive
from vecarc.format import serialize
from vecarc.format.container import TMP_SUFFIX
from vecarc.unpacking import _target


@pytest.fixture(scope="module")
def archive(tmp_path_factory, two_docs) -> Path:
    out = tmp_path_factory.mktemp("unpack") / "two.vec"
    out.write_bytes(two_docs)
    return out


def test_the_root_folder_is_a_folder_like_any_other():
    assert _target(Path("/"), "x/y.txt", force=True) == Path("/x/y.txt")  # no "refusing to write outside /"


def test_a_folder_in_the_way_is_found_before_anything_is_replaced(tmp_path, archive, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_bytes(b"old")
    (out / "b.bin").mkdir()
    with pytest.raises(VecarcError, match="b.bin is a folder"):
        vecarc.unpack(archive, out, model=tiny, force=True)
    assert (out / "a.txt").read_bytes() == b"old"


def test_a_file_where_a_folder_must_go_is_refused(tmp_path, archive, tiny):
    from helpers import resealed

    def nest(h):
        h["documents"][0]["name"] = "sub/a.txt"

    nested = tmp_path / "nested.vec"
    nested.write_bytes(resealed(archive.read_bytes(), nest))
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_bytes(b"a file")
    with pytest.raises(VecarcError, match="sub is a file"):
        vecarc.unpack(nested, out, model=tiny)
    assert sorted(p.name for p in out.iterdir()) == ["sub"]


def test_all_documents_or_none(tmp_path, archive, tiny, monkeypatch):
    from vecarc import writer

    real, calls = writer.write_temp, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise VecarcError(f"cannot write {path}: No space left on device")
        return real(path, data)

    monkeypatch.setattr(writer, "write_temp", failing)
    out = tmp_path / "out"
    with pytest.raises(VecarcError, match="No space left"):
        vecarc.unpack(archive, out, model=tiny)
    # The first document's temporary file is gone too, nothing was renamed, and the folder unpack made for
    # them is removed as well (vecarc.writer.Staged: "and so do the folders made for them").
    assert not out.exists()


def test_temporaries_of_a_killed_unpack_are_removed_and_live_ones_kept(tmp_path, archive, tiny):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".a.txt.{2**22 + 12345}.x1{TMP_SUFFIX}"  # above any pid this machine has handed out
    live = out / f".a.txt.{os.getpid()}.x2{TMP_SUFFIX}"
    dead.write_bytes(b"left by a kill")
    live.write_bytes(b"still being written")
    vecarc.unpack(archive, out, model=tiny)
    assert not dead.exists() and live.exists()
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == TWO_DOCS


def test_tampered_vectors_fail_verification(tmp_path, packed, tiny):
    a = read_archive(packed)
    a.vectors = a.vectors.flip(0) if a.vectors.shape[0] > 1 else -a.vectors
    bad = tmp_path / "tampered.vec"
    bad.write_bytes(serialize(a))
    r = vecarc.verify(bad, model=tiny)
    assert not r.ok and r.problems
    with pytest.raises(vecarc.VerificationError, match="nothing written"):
        vecarc.unpack(bad, tmp_path / "o2", model=tiny)
    assert not (tmp_path / "o2" / "hello.txt").exists()


def test_output_file_mode_follows_umask(packed):
    umask = os.umask(0)
    os.umask(umask)
    assert packed.stat().st_mode & 0o777 == 0o666 & ~umask
