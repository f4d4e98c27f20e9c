"""Pack and unpack wall time of one file, as a user sees it, median of several runs.

    python -m benchmarks.pack_example [FILE] [--runs 3] [--model M]

Each run is a fresh `vecarc pack` / `vecarc unpack` process (model load included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vecarc import read_archive


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file", nargs="?", default="examples/austen.txt")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    exe = [sys.executable, "-m", "vecarc.cli"]
    extra = ["--model", args.model] if args.model else []
    packs, unpacks, steps = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        vec = Path(tmp) / "a.vec"
        for _ in range(args.runs):
            packs.append(timed(exe + ["pack", args.file, "-o", str(vec), "-f", "-q"] + extra))
            unpacks.append(timed(exe + ["unpack", str(vec), "-o", str(Path(tmp) / "out"), "-f", "-q"] + extra))
            info = json.loads(subprocess.run(exe + ["info", str(vec), "--json"], check=True,
                                             stdout=subprocess.PIPE).stdout)
            steps += [c.steps for c in read_archive(vec, load_vectors=False).chunks if c.kind == "vector"]

    print(f"file {args.file}: {info['original_bytes']} B -> {info['archive_bytes']} B, "
          f"{info['chunks']['vector']} vector chunks, {info['chunks']['tokens']} literal")
    print(f"pack   median {statistics.median(packs):.1f} s  runs {[round(x, 1) for x in packs]}")
    print(f"unpack median {statistics.median(unpacks):.1f} s  runs {[round(x, 1) for x in unpacks]}")
    print(f"tokens per vector {info['chunks']['tokens_per_vector']}, min margin {info['chunks']['min_margin']}")
    print(f"steps per chunk: median {statistics.median(steps)}, min {min(steps)}, max {max(steps)} (all runs)")


if __name__ == "__main__":
    main()
