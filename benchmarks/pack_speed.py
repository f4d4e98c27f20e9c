"""Packing and unpacking throughput: the straightforward loop against the optimised one,
on the same fixed slices, in one run, several repetitions, medians.

    python -m benchmarks.pack_speed [--sizes 1024,4096] [--reps 3] [--configs baseline,default]
                                    [--files python-tutorial.rst] [--device cpu]

Each (config, slice, repetition) runs in a fresh process, so its peak RSS is its own;
repetitions are interleaved across configs, so a slow spell of the machine hits every
config alike. Everything goes through vecarc.pack and vecarc.unpack: every chunk is
verified by greedy decoding before the archive is written, and unpack checks the hashes.
Pack time counts everything (tokenizing, planning, cramming, retries, verification,
writing); unpack time counts decoding and checking with the model already loaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.corpora import corpus_slice

CONFIGS = {
    # What a research loop does: one chunk at a time, float32 everywhere, whole vectors,
    # the first recipe that worked here (lr 0.3, unit-scale init), fixed 32-token chunks.
    "baseline": ({"batch_size": 1, "lr": 0.3, "init_scale": 1.0, "search_dtype": "fp32", "vector_dtype": "fp16",
                  "rank": 0}, {"chunk_tokens": 32}),
    # vecarc pack as shipped: continuous batching, bf16 search where the CPU has it,
    # int8 rank-256 vectors, chunks from the capacity plan.
    "default": ({}, {}),
    # The effort knob: chunks planned at half the measured capacity (vecarc pack --fill 0.5).
    "fill-0.5": ({}, {"fill": 0.5}),
    "fill-0.3": ({}, {"fill": 0.3}),
    # The default on the baseline's fixed 32-token chunks.
    "default-32": ({}, {"chunk_tokens": 32}),
    # torch.compile of the search copy forced on (the default turns it on only for long jobs);
    # timed with inductor's cache already filled by an earlier run, as every run after a machine's first.
    "compile": ({"compile": "on"}, {}),
    "fill-0.5-compile": ({"compile": "on"}, {"fill": 0.5}),
    # The default without the bf16 search.
    "default-fp32": ({"search_dtype": "fp32"}, {}),
}


def one(config: str, file: str, size: int, device: str) -> dict:
    import torch

    import vecarc
    from vecarc import PackConfig, SearchSettings, load_model

    search, pack_kw = CONFIGS[config]
    lm = load_model(None, device)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{Path(file).stem}.{size}.txt"
        src.write_bytes(corpus_slice(file, size))
        t = time.perf_counter()
        cfg = PackConfig(mode="vectors", search=SearchSettings(**search), **pack_kw)
        res = vecarc.pack([src], Path(tmp) / "a.vec", cfg, model=lm)
        pack_s = time.perf_counter() - t
        t = time.perf_counter()
        vecarc.unpack(Path(tmp) / "a.vec", Path(tmp) / "out", model=lm)
        unpack_s = time.perf_counter() - t
        assert (Path(tmp) / "out" / src.name).read_bytes() == src.read_bytes()
    chunks = res.archive.chunks
    tokens = sum(c.tokens for c in chunks)
    return {"config": config, "file": file, "size": size, "tokens": tokens, "pack_s": pack_s, "unpack_s": unpack_s,
            "steps": res.steps, "retries": res.retries, "bytes": res.archive_bytes,
            "vectors": sum(c.kind == "vector" for c in chunks),
            "search_dtype": res.archive.header.cram["search_dtype"], "threads": torch.get_num_threads(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--files", default="python-tutorial.rst")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--configs", default="baseline,default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="append every run as a JSON line to this file")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # config,file,size: run in this process
    args = ap.parse_args()
    if args.one:
        config, file, size = args.one.split(",")
        print(json.dumps(one(config, file, int(size), args.device)))
        return
    runs: dict[tuple, list[dict]] = {}
    for rep in range(args.reps):
        for size in map(int, args.sizes.split(",")):
            for file in args.files.split(","):
                for config in args.configs.split(","):
                    out = subprocess.run([sys.executable, "-m", "benchmarks.pack_speed", "--one",
                                          f"{config},{file},{size}", "--device", args.device],
                                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
                    if out.returncode:
                        sys.exit(f"{config} {file} {size}: {out.stderr.strip().splitlines()[-1]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    runs.setdefault((config, file, size), []).append(r)
                    print(f"# rep {rep + 1}: {config} {file} {size}: pack {r['pack_s']:.0f} s, "
                          f"unpack {r['unpack_s']:.1f} s", file=sys.stderr, flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(r) + "\n")
    print("| config | input | tokens | runs | pack tok/s (median) | unpack tok/s (median) | steps/chunk (median) "
          "| retries | vector chunks | archive bytes | peak RSS MiB |")
    print("|" + "---|" * 11)
    for (config, file, size), rs in runs.items():
        r = rs[0]
        pack = statistics.median(x["tokens"] / x["pack_s"] for x in rs)
        unpack = statistics.median(x["tokens"] / x["unpack_s"] for x in rs)
        steps = statistics.median(s for x in rs for s in x["steps"])
        print(f"| {config} ({r['search_dtype']} search) | {file} {size} B | {r['tokens']} | {len(rs)} | {pack:.2f} | "
              f"{unpack:.0f} | {steps:.0f} | {statistics.median(x['retries'] for x in rs):g} | "
              f"{statistics.median(x['vectors'] for x in rs):g} | {statistics.median(x['bytes'] for x in rs):,.0f} | "
              f"{max(x['peak_rss_mib'] for x in rs):,.0f} |")


if __name__ == "__main__":
    main()
