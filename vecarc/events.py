"""Progress events: how long work tells its caller where it stands.

Every layer reports through one callback that takes a dict with an "event" key
(plan, step, predict, shard, decode, calibrate, note, ...); the CLI draws them,
the API's users may ignore them. Nothing below the CLI prints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Progress = Callable[[dict], None]
Trace = Callable[[dict], None]  # benchmarks: every group step and greedy check, with its timing


def emit(progress: Progress | None, **event: Any) -> None:
    """Hand an event to the caller's progress callback, if there is one."""
    if progress is not None:
        progress(event)
