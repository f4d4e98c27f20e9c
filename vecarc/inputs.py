"""What pack reads: inputs checked and named before any work, and the output path it writes."""

from __future__ import annotations

from collections.abc import Sequence
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


def named_inputs(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(path, stored name) per input; names that an archive could not hold are refused before any work."""
    checked = [check_input(path) for path in paths]
    names = [document_name(p) for p in checked]
    if len(set(names)) != len(names):
        name = next(n for i, n in enumerate(names) if n in names[:i])
        raise VecarcError(f"two inputs would be stored under the same name {name!r}")
    try:
        check_names(names)
    except VecarcError as e:
        raise VecarcError(f"cannot store these inputs: {str(e).removeprefix('corrupt archive: ')}") from None
    return list(zip(checked, names))


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
