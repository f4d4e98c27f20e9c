"""Writing documents all or nothing: every file under a temporary name first, then all renamed.

Unpack writes many documents (of a volume index: part by part, volume by volume); if
anything fails before the last is complete, no final name appears, the temporaries go,
and so do the folders made for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from .errors import VecarcError
from .format.container import write_temp


class Staged:
    """Use as a context manager: `commit()` renames everything into place; leaving the block
    without it (an error, an interrupt) removes what was staged."""

    def __init__(self) -> None:
        self.temps: dict[Path, Path] = {}  # final path -> its temporary file
        self.made: list[Path] = []  # folders created for the targets, outermost first

    def append(self, target: Path, data: bytes) -> None:
        """data added to the end of target's temporary file (created, with its folders, on first use)."""
        try:
            if target not in self.temps:
                self._folders(target.parent)
                self.temps[target] = write_temp(target, data)
                return
            with open(self.temps[target], "ab") as f:
                f.write(data)
        except OSError as e:
            raise VecarcError(f"cannot write {target}: {e.strerror}") from None

    def commit(self) -> None:
        for target, tmp in self.temps.items():
            try:
                with open(tmp, "rb+") as f:  # appended parts reach the disk before the name does
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except OSError as e:
                raise VecarcError(f"cannot write {target}: {e.strerror}") from None
        self.temps.clear()
        self.made.clear()

    def abort(self) -> None:
        for tmp in self.temps.values():
            tmp.unlink(missing_ok=True)
        for folder in reversed(self.made):
            try:
                folder.rmdir()
            except OSError:  # not empty: something else was put there meanwhile
                pass
        self.temps.clear()
        self.made.clear()

    def _folders(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for f in reversed(missing):
            try:
                f.mkdir()
            except OSError as e:
                raise VecarcError(f"cannot create the folder {f}: {e.strerror}") from None
            self.made.append(f)

    def __enter__(self) -> Staged:
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.abort()
