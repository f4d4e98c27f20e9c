"""Errors that the CLI turns into a one-line message and an exit code.

Anything else escaping the API is a bug; the CLI still catches it but says so.
"""


class VecarcError(Exception):
    """Bad input, bad archive, missing model: the user can fix it. Exit code 2."""

    exit_code = 2


class VerificationError(VecarcError):
    """The archive decoded to something other than what was stored. Exit code 1."""

    exit_code = 1
