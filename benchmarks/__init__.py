"""Benchmarks, run as `python -m benchmarks.NAME`. vecarc is imported first: its OpenMP setting must precede torch."""

import vecarc  # noqa: F401
