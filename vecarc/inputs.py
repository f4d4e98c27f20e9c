"""What pack reads: inputs (files, and the files under folders) checked and named before any work, and
the output path it writes."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from .errors import VecarcError
from .format import check_names


def document_name(path: str | Path) -> str:
    """Keep a clean relative path as given; otherwise fall back to the file name."""
    p = PurePosixPath(Path(path).as_posix())
    if not p.is_absolute() and all(part not in ("..", ".") for part in p.parts) and p.parts:
        return str(p)
    return Path(path).name


def check_input(path: str | Path) -> Path:
    """An input must be an existing regular file; say which it is not."""
    p = Path(path)
    if not p.exists():
        raise VecarcError(f"no such file: {p}")
    if not p.is_file():
        raise VecarcError(f"not a regular file: {p}")
    return p


Input = str | Path | tuple[Path, str]  # a file or folder, or (file, the name to store it under)


def named_inputs(paths: Sequence[Input], exclude: Sequence[str] = (),
                 warn: Callable[[str], None] | None = None) -> list[tuple[Path, str]]:
    """(path, stored name) per input, a folder standing for the files under it (folder_files); names
    that an archive could not hold are refused before any work."""
    pairs: list[tuple[Path, str]] = []
    for path in paths:
        if isinstance(path, tuple):  # standard input spooled to a file, stored under its --name
            pairs.append((check_input(path[0]), path[1]))
            continue
        p = Path(path)
        pairs += folder_files(p, exclude, warn) if p.is_dir() and not p.is_symlink() else [(check_input(p), "")]
    checked = [p for p, _ in pairs]
    names = [name or document_name(p) for p, name in pairs]
    if len(set(names)) != len(names):
        name = next(n for i, n in enumerate(names) if n in names[:i])
        raise VecarcError(f"two inputs would be stored under the same name {name!r}")
    try:
        check_names(names)
    except VecarcError as e:
        raise VecarcError(f"cannot store these inputs: {str(e).removeprefix('corrupt archive: ')}") from None
    return list(zip(checked, names))


def folder_files(folder: Path, exclude: Sequence[str] = (),
                 warn: Callable[[str], None] | None = None) -> list[tuple[Path, str]]:
    """Every regular file under folder, in sorted order, named as tar names them: relative to the folder's
    parent (`vecarc pack in` stores `in/a.txt`; `.` stores `a.txt`). Symlinks are not followed and
    special files (FIFOs, sockets, devices) are skipped, each said through warn; a name, or any folder
    on its way, that matches an --exclude pattern is left out."""
    base = folder.parent if folder.name not in ("", ".", "..") else folder
    out: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs
                         if not _excluded(here / d, base, exclude) and not _skipped_link(here / d, warn))
        for f in sorted(files):
            p = here / f
            if _excluded(p, base, exclude) or _skipped_link(p, warn):
                continue
            if not stat.S_ISREG(p.lstat().st_mode):
                if warn:
                    warn(f"skipped {p}: not a regular file")
                continue
            out.append((p, p.relative_to(base).as_posix()))
    return out


def _excluded(p: Path, base: Path, patterns: Sequence[str]) -> bool:
    name = p.relative_to(base).as_posix()
    return any(fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(p.name, pat) for pat in patterns)


def _skipped_link(p: Path, warn: Callable[[str], None] | None) -> bool:
    if p.is_symlink():
        if warn:
            warn(f"skipped {p}: a symlink (not followed)")
        return True
    return False


def read_inputs(paths: Sequence[str | Path]) -> list[tuple[str, bytes]]:
    """(name, bytes) per input, checked as named_inputs checks them."""
    return read_named(named_inputs(paths))


def read_named(named: Sequence[tuple[Path, str]]) -> list[tuple[str, bytes]]:
    """(name, bytes) per (path, name) of named_inputs."""
    docs: list[tuple[str, bytes]] = []
    for p, name in named:
        try:
            docs.append((name, p.read_bytes()))
        except OSError as e:
            raise VecarcError(f"cannot read {p}: {e.strerror}") from None
    return docs


def output_for(inputs: Sequence[str | Path], output: str | Path | None = None) -> Path:
    """The archive path pack writes: the one given, else FIRST_INPUT.vec for a single input."""
    if not inputs:
        raise VecarcError("nothing to pack")
    if output is None:
        if len(inputs) > 1:
            raise VecarcError("several inputs need -o/--output")
        output = Path(str(inputs[0]) + ".vec")
    return Path(output)
