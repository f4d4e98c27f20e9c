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


def _cli(args, stdin: bytes | None = None):
    from click.testing import CliRunner

    from vecarc.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=stdin, catch_exceptions=False)


def test_standard_input_in_and_an_archive_to_standard_output(tmp_path, monkeypatch, trained_tiny):
    monkeypatch.chdir(tmp_path)
    text = TREE["in/a.txt"] * 3
    r = _cli(["pack", "-", "-o", "s.vec", "--name", "notes/piped.txt", "--chunk-tokens", "32",
              "--model", trained_tiny.folder, "-q"], stdin=text)
    assert r.exit_code == 0, r.output
    assert [d.name for d in vecarc.read_archive("s.vec").documents] == ["notes/piped.txt"]
    assert vecarc.unpack("s.vec", "out", model=trained_tiny)[0].read_bytes() == text
    r = _cli(["pack", "-", "-o", "-", "--chunk-tokens", "32", "--model", trained_tiny.folder, "-q"], stdin=text)
    assert r.exit_code == 0 and r.stdout_bytes[:4] == b"\x89VC\x06"  # a coded archive: format 6
    (tmp_path / "o.vec").write_bytes(r.stdout_bytes)
    assert vecarc.read_archive("o.vec").documents[0].name == "stdin"
    assert vecarc.unpack("o.vec", "out2", model=trained_tiny)[0].read_bytes() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.vec", "out", "out2", "s.vec"]  # no journal, no temp


def test_standard_streams_refuse_what_they_cannot_do(tmp_path, monkeypatch, trained_tiny):
    import sys

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("words")
    for args, why in ((["pack", "-"], "needs -o FILE or -o -"), (["pack", "-", "-", "-o", "x.vec"], "given once"),
                      (["pack", "a.txt", "-o", "-", "--resume"], "--resume needs -o FILE"),
                      (["pack", "a.txt", "-o", "-", "--json"], "both want standard output")):
        r = _cli([*args, "--model", trained_tiny.folder], stdin=b"x")
        assert r.exit_code == 2 and why in r.output, (args, r.output)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    from vecarc.stdio import streams

    with pytest.raises(VecarcError, match="refusing to write an archive to a terminal"):
        with streams(["a.txt"], "-", "stdin", False):
            pass
