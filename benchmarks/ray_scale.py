"""Throughput of packing and unpacking on Ray with 1 and 2 workers against local ones, default model.

    python -m benchmarks.ray_scale [--size 8192] [--workers 1,2] [--mode predict]

One fixed slice (the reported 10 % offset of jargon.txt, as benchmarks.corpora cuts it);
each configuration runs in its own process, one after the other: local with one torch
thread, then Ray with N workers of one thread each (a local Ray of N CPUs). Reports wall
seconds of the whole pack (planning, workers' start and model load, the chunks, the
final check, which decodes the workers' chunks again on the driver, and serialization), tokens
per second, the whole unpack's seconds on the same engine, and the archive's bytes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.corpora import corpus_slice


def one(config: str, src: str, mode: str) -> dict:
    import torch

    import vecarc

    torch.set_num_threads(1)
    engine = None
    if config != "local":
        import ray

        n = int(config)
        ray.init(num_cpus=n + 1, include_dashboard=False, log_to_driver=False)  # +1: the driver's own core
        engine = vecarc.RayEngine(workers=n)
    lm = vecarc.load_model(None, "cpu")
    t = time.perf_counter()
    r = vecarc.pack([src], src + f".{config}.vec", vecarc.PackConfig(mode=mode, engine=engine), model=lm, force=True)
    secs = time.perf_counter() - t
    t = time.perf_counter()
    vecarc.unpack(r.output, Path(src).parent / f"out.{config}", model=lm, force=True, engine=engine)
    unpack_secs = time.perf_counter() - t
    tokens = sum(c.tokens or 0 for c in r.archive.chunks)
    return {"config": config, "seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs,
            "unpack_seconds": unpack_secs, "archive_bytes": r.archive_bytes, "chunks": len(r.archive.chunks)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--mode", default="predict")
    ap.add_argument("--work", default="build/ray")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    src = work / f"jargon.{args.size}.txt"
    if args.one:
        print(json.dumps(one(args.one, str(src), args.mode)))
        return
    work.mkdir(parents=True, exist_ok=True)
    src.write_bytes(corpus_slice("jargon.txt", args.size))
    rows = []
    print("| engine | pack s | tokens/s | speed-up | unpack s | speed-up | archive bytes |")
    print("|---|---|---|---|---|---|---|")
    for config in ["local", *args.workers.split(",")]:
        out = subprocess.run([sys.executable, "-m", "benchmarks.ray_scale", "--one", config, "--size", str(args.size),
                              "--mode", args.mode, "--work", str(work)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        name = "local, 1 thread" if config == "local" else f"Ray, {config} worker{'s' if config != '1' else ''}"
        print(f"| {name} | {r['seconds']:.0f} | {r['tokens_per_s']:.1f} | {rows[0]['seconds'] / r['seconds']:.2f}x | "
              f"{r['unpack_seconds']:.0f} | {rows[0]['unpack_seconds'] / r['unpack_seconds']:.2f}x | "
              f"{r['archive_bytes']:,} |", flush=True)
    (work / "ray_scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
