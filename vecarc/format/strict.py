"""Strict JSON, as the format requires of the header and the volume index: UTF-8, no key twice
in one object, no NaN or Infinity, and no input that makes the parser raise anything but one
kind of error (deep nesting, a 5,000-digit number)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import VecarcError, first_line


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {dup!r} appears twice in one object")
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str) -> Any:
    """Strict JSON text; ValueError or RecursionError on anything else."""
    return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def loads(data: bytes, bad: Callable[[str], VecarcError]) -> Any:
    """Strict JSON bytes, or bad(why) raised: a reader's one way to refuse them."""
    try:
        return parse_json(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise bad(f"not strict UTF-8 JSON ({first_line(e)[:200]})") from None
