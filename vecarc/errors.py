"""Errors that the CLI turns into a one-line message and an exit code.

Anything else escaping the API is a bug; the CLI still catches it but says so.
"""


class VecarcError(Exception):
    """Bad input, bad archive, missing model: the user can fix it. Exit code 2."""

    exit_code = 2


class VerificationError(VecarcError):
    """The archive decoded to something other than what was stored. Exit code 1."""

    exit_code = 1


def first_line(e: BaseException) -> str:
    """An exception as one line of text for the user: its message's first line, else its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def describe(e: BaseException) -> str:
    """An exception as its type and first line ("RuntimeError: out of memory"), or its type alone."""
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__
