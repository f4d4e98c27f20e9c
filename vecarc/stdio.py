"""Standard input and output as the ends of a pack: `-` reads an input from standard input, `-o -`
writes the archive to standard output, only once it is complete and checked."""

from __future__ import annotations

import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import VecarcError


@contextmanager
def streams(inputs: list, output: str | None, name: str, resume: bool):
    """`-` among the inputs is standard input, read to its end and stored under NAME; `-o -` builds the
    archive in a temporary folder (no journal survives it) and writes it out once complete and checked."""
    with tempfile.TemporaryDirectory(prefix="vecarc-") as tmp:
        if "-" in inputs:
            if inputs.count("-") > 1 or output is None:
                raise VecarcError("standard input (-) can be given once, and needs -o FILE or -o -")
            spool = Path(tmp) / "stdin"
            with open(spool, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f)
            inputs[inputs.index("-")] = (spool, name)
        if output == "-":
            if sys.stdout.isatty():
                raise VecarcError("refusing to write an archive to a terminal: redirect standard output, or -o FILE")
            if resume:
                raise VecarcError("--resume needs -o FILE: an archive written to standard output keeps no journal")
            output = str(Path(tmp) / "stdout.vec")
        yield inputs, output


def archive_to_stdout(r) -> None:
    if r.index is not None:
        raise VecarcError("this input needs volumes (over --volume-size), and standard output takes one archive: "
                          "give -o FILE, or --volume-size 0")
    with open(r.output, "rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.buffer.flush()
