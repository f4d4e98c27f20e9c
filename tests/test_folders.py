"""Folders in, as tar takes them: every regular file under a folder, in a stable order, named relative
to the folder's parent; --exclude; symlinks not followed and special files skipped, each said once."""

from __future__ import annotations

import os

import pytest
from helpers import run_cli

import vecarc
from vecarc import PackConfig, VecarcError
from vecarc.inputs import named_inputs

TREE = {"in/a.txt": b"The quick brown fox.\n", "in/sub/b.txt": b"jumps over\n", "in/sub/deep/c.md": b"the lazy dog\n",
        "in/skip.log": b"noise\n"}


def _tree(d):
    for name, data in TREE.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)


def test_a_folder_packs_and_unpacks_to_the_same_tree(tmp_path, monkeypatch, trained_tiny):
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path)
    r = vecarc.pack(["in"], None, PackConfig(chunk_tokens=32), model=trained_tiny, exclude=["*.log"])
    assert r.output.name == "in.vec"
    assert [d.name for d in r.archive.documents] == ["in/a.txt", "in/sub/b.txt", "in/sub/deep/c.md"]
    written = vecarc.unpack("in.vec", "out", model=trained_tiny)
    assert {p.relative_to("out").as_posix(): p.read_bytes() for p in written} == {
        k: v for k, v in TREE.items() if not k.endswith(".log")}


def test_names_are_relative_to_the_folders_parent_and_dot_is_its_own(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.chdir(tmp_path / "in")
    assert [n for _, n in named_inputs(["."])] == ["a.txt", "skip.log", "sub/b.txt", "sub/deep/c.md"]
    assert [n for _, n in named_inputs([tmp_path / "in" / "sub"], exclude=["deep"])] == ["sub/b.txt"]


def test_symlinks_and_special_files_in_a_folder_are_skipped_and_said(tmp_path, monkeypatch, trained_tiny):
    monkeypatch.chdir(tmp_path)
    _tree(tmp_path)
    (tmp_path / "outside.txt").write_text("not in the folder\n")
    os.symlink(tmp_path / "outside.txt", tmp_path / "in" / "link.txt")
    os.symlink(tmp_path / "in" / "sub", tmp_path / "in" / "linked-dir")
    os.mkfifo(tmp_path / "in" / "pipe")
    said = []
    names = [n for _, n in named_inputs(["in"], warn=said.append)]
    assert names == ["in/a.txt", "in/skip.log", "in/sub/b.txt", "in/sub/deep/c.md"]
    assert sorted(said) == [f"skipped {os.path.join('in', 'link.txt')}: a symlink (not followed)",
                            f"skipped {os.path.join('in', 'linked-dir')}: a symlink (not followed)",
                            f"skipped {os.path.join('in', 'pipe')}: not a regular file"]
    code, out = run_cli("pack", "in", "--chunk-tokens", "32", "--model", trained_tiny.folder)
    assert code == 0 and "skipped in/pipe: not a regular file" in out and (tmp_path / "in.vec").exists()


def test_an_empty_folder_and_an_output_inside_the_folder_are_refused(tmp_path, monkeypatch, trained_tiny):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VecarcError, match="nothing to pack"):
        vecarc.pack(["empty"], "e.vec", model=trained_tiny)
    _tree(tmp_path)
    (tmp_path / "in" / "old.vec").write_bytes(b"an earlier archive, kept by its user\n")
    with pytest.raises(VecarcError, match="which this pack writes"):
        vecarc.pack(["in"], "in/old.vec", model=trained_tiny, force=True)
    assert (tmp_path / "in" / "old.vec").read_bytes() == b"an earlier archive, kept by its user\n"
