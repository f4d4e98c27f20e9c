"""Document names: what an archive may store, and what a reader may write to disk.

A name is a relative, normalised, '/'-separated path of printable characters, and the
names of one archive can all be written side by side on any filesystem (none differs
from another only in case or Unicode normalisation, none is a folder of another).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from ..errors import VecarcError


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise VecarcError(f"corrupt archive: {msg}")


MAX_NAME_BYTES, MAX_PART_BYTES = 4096, 255  # a path, and one component of it (NAME_MAX on common filesystems)


def check_name(name: Any) -> str:
    """Document names are relative, normalised, '/'-separated paths of printable characters."""
    ok = isinstance(name, str) and 0 < len(name) and not any(_unprintable(ch) for ch in name)
    if ok:
        raw, parts = name.encode("utf-8"), name.split("/")
        ok = len(raw) <= MAX_NAME_BYTES and all(len(p.encode("utf-8")) <= MAX_PART_BYTES for p in parts)
        ok = ok and not name.startswith("/") and "\\" not in name and all(p not in ("", ".", "..") for p in parts)
        ok = ok and not re.match(r"^[A-Za-z]:", name)
    if not ok:
        _need(False, f"unsafe document name {name!r}")
    return name


def _unprintable(ch: str) -> bool:
    # Controls (a newline or ESC reaches the terminal), surrogates (no file name can hold one),
    # line and paragraph separators.
    return unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")


def name_key(name: str) -> str:
    """Two names with one key would be one file on a case-insensitive or normalising filesystem."""
    return unicodedata.normalize("NFC", name).casefold()


def check_names(names: Sequence[str]) -> None:
    """Names that can all be written side by side: unique on any filesystem, none a folder of another."""
    seen: set[str] = set()
    keys: dict[str, str] = {}
    for name in names:
        check_name(name)
        _need(name not in seen, f"duplicate document name {name!r}")
        key = name_key(name)
        _need(key not in keys, f"document names {keys.get(key)!r} and {name!r} differ only in case or "
                              f"Unicode normalisation")
        seen.add(name)
        keys[key] = name
    for key, name in keys.items():
        parts = key.split("/")
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            _need(folder not in keys, f"document name {keys.get(folder)!r} is also a folder of {name!r}")
