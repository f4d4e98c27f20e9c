"""Peak memory of packing multi-megabyte inputs, with the tiny test model.

    python -m benchmarks.large_input [--sizes 1,8] [--max-steps 1] [--runs 1]
                                     [--mode vectors|predict] [--engine local|ray]

Builds the tiny Llama of vecarc/tiny.py (trained a few seconds on its
repetitive text), makes inputs of N MiB from the whole corpora, and runs
`vecarc pack` on each as its own process; peak RSS is that process's
ru_maxrss. A 1 KiB input gives the fixed cost (interpreter, torch, model).
With --max-steps 1 no chunk converges, and with --min-chunk-tokens equal to
--chunk-tokens none is split, so every chunk ends as literal tokens after one
optimisation step: this measures the data path (reading, tokenizing, the job
queue, the journal, the archive), not the memory of stored vectors. --mode predict
packs predicted chunks as `vecarc pack` does by default (with their corrections);
--engine ray runs the chunks on one Ray worker (the driver's RSS is reported).

Needs the whole corpora, not only the slices in benchmarks/slices/: jargon.txt,
python-tutorial.rst and fortunes.txt (2.3 MB together; sources in
benchmarks/slices/README.md) in ../shared/corpora beside the repository, or --corpora DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.corpora import CORPORA, FILES, corpus_bytes
from vecarc.tiny import build_tiny_model


def make_input(path: Path, size: int, corpora: Path = CORPORA) -> None:
    text = b"".join(corpus_bytes(f, corpora) for f in FILES)
    reps = size // len(text) + 1
    data = (text * reps)[:size]
    while True:  # cut on a character boundary
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    path.write_bytes(data)


def run_pack(src: Path, model: Path, max_steps: int, mode: str = "vectors", engine: str = "local",
             volume: str = "64M") -> dict:
    out = src.with_suffix(".vec")
    cmd = [sys.executable, "-m", "vecarc.cli", "pack", str(src), "-o", str(out), "-f", "--model", str(model),
           "--mode", mode, "--volume-size", volume, "-q", "--json"]
    if mode == "vectors":
        cmd += ["--chunk-tokens", "64", "--min-chunk-tokens", "64", "--max-steps", str(max_steps)]
    if engine == "ray":
        cmd += ["--engine", "ray", "--workers", "1"]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"pack failed: {err.decode()[-2000:]}")
    s = json.loads(stdout)
    if "index" in s:  # volumes: count from the volumes' headers
        info = json.loads(subprocess.run([sys.executable, "-m", "vecarc.cli", "info", str(out), "--json"],
                                         capture_output=True, check=True).stdout)
        s["chunks"] = {k: sum(v[c] for v in info["volumes"]) for k, c in (("total", "chunks"),
                                                                          ("vector", "vector_chunks"))}
        s["documents"] = [{"tokens": sum(v["tokens"] for v in info["volumes"])}]
    return {"input_bytes": src.stat().st_size, "archive_bytes": s["archive_bytes"],
            "chunks": s["chunks"]["total"], "vector_chunks": s["chunks"]["vector"],
            "tokens": sum(d["tokens"] for d in s["documents"]), "volumes": len(s.get("volumes", [])) or 1,
            "peak_rss_mib": usage.ru_maxrss / 1024, "seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,8", help="input sizes in MiB")
    ap.add_argument("--max-steps", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--mode", default="vectors", choices=["vectors", "predict"])
    ap.add_argument("--engine", default="local", choices=["local", "ray"])
    ap.add_argument("--volume-size", default="64M", help="pack's --volume-size (inputs above it become volumes)")
    ap.add_argument("--work", default="build/large")
    ap.add_argument("--corpora", type=Path, default=CORPORA,
                    help=f"folder holding the whole {', '.join(FILES)} (default %(default)s)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny"
    if not (model / "config.json").exists():
        build_tiny_model(model, seed=2, train_steps=150)
    rows = []
    print(f"mode {args.mode}, engine {args.engine}, volume size {args.volume_size}")
    print("| input | tokens | chunks (vector) | archive bytes | peak RSS MiB (median) | seconds (median) |")
    print("|---|---|---|---|---|---|")
    for label, size in [("1 KiB", 1024)] + [(f"{m} MiB", int(float(m) * (1 << 20))) for m in args.sizes.split(",")]:
        src = work / f"input-{size}.txt"
        make_input(src, size, args.corpora)
        runs = [run_pack(src, model, args.max_steps, args.mode, args.engine, args.volume_size)
                for _ in range(args.runs)]
        r = runs[0] | {"peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in runs),
                       "seconds": statistics.median(x["seconds"] for x in runs), "label": label}
        rows.append(r)
        print(f"| {label} | {r['tokens']:,} | {r['chunks']:,} ({r['vector_chunks']:,}) | {r['archive_bytes']:,} | "
              f"{r['peak_rss_mib']:.0f} | {r['seconds']:.0f} |", flush=True)
    (work / f"large-{args.mode}-{args.engine}-{args.volume_size}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
