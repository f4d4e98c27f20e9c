"""KEY=VALUE overrides of a typed config, each value checked against its field's type.

Benchmarks and experiments take their settings as strings; through here `rank=128` is an
int, `lr=1` a float and a misspelt key an error, never a silent new attribute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields, replace
from typing import Any, TypeVar

from .errors import VecarcError

T = TypeVar("T")


def apply(config: T, items: Iterable[str], keys: Iterable[str] | None = None) -> T:
    """config with the overrides applied; keys limits which fields may be set (default: all)."""
    kinds = {f.name: str(f.type) for f in fields(config)}  # type: ignore[arg-type]
    allowed = set(kinds) if keys is None else set(keys)
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or key not in allowed:
            raise VecarcError(f"unknown setting {item!r}: KEY=VALUE with KEY one of {', '.join(sorted(allowed))}")
        changes[key] = _parse(key, text, kinds[key])
    return replace(config, **changes)  # type: ignore[type-var]


def _parse(key: str, text: str, kind: str) -> object:
    if kind == "str":
        return text
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if value is None and "None" in kind:
        return None
    if kind.startswith("int") and type(value) is int:
        return value
    if kind == "float" and type(value) in (int, float):
        return float(value)
    raise VecarcError(f"setting {key} needs {kind.replace(' | None', ' or null')}, got {text!r}")
