"""vecarc's version, as the installed package states it (pyproject.toml is the one place it is written)."""

from importlib import metadata

try:
    __version__ = metadata.version("vecarc")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
