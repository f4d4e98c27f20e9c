"""Archive bytes and pack time of each storage mode on the fixed slices, next to zstd -19,
xz -9 and the model limit.

    python -m benchmarks.modes [--modes vectors,predict] [--sizes 4096] [--reps 1] [--offset 0.1]
                               [--out build/modes] [--threads 1]

"vectors" is the vector path as it packs by default in vectors mode (capacity plan, int8
rank-256 vectors); "predict" the predicted chunks with corrections. Every archive is
verified by greedy decoding before it is written, unpacked (timed, model loaded) and
checked with `verify --strict`.
--offset 0.1 gives the reported slices (benchmarks/corpora.py); levers are tuned on
--offset 0.7. Slices up to 64 KiB at 0.1, and up to 16 KiB at 0.3, 0.5 and 0.7, come from
benchmarks/slices/; others need the whole corpora in ../shared/corpora.
Run pinned (taskset -c 1 ... --threads 1): pack times compare only within one run on one
machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.corpora import FILES, corpus_slice
from vecarc import PackConfig, load_model, pack, summary, unpack, verify
from vecarc.bench import classic_rows, model_limit


def run(lm, path: Path, mode: str, reps: int) -> dict:
    times, r = [], None
    for _ in range(reps):
        t = time.perf_counter()
        r = pack([path], path.with_name(f"{path.name}.{mode}.vec"), PackConfig(mode=mode), model=lm, force=True)
        times.append(time.perf_counter() - t)
    s = summary(r.archive)
    t = time.perf_counter()
    unpack(r.output, path.with_name(f"{path.name}.{mode}.out"), model=lm, force=True)
    unpack_s = time.perf_counter() - t
    v = verify(r.output, model=lm, strict=True)
    c = s["chunks"]
    return {"mode": mode, "archive_bytes": r.archive_bytes, "pack_s": statistics.median(times), "pack_s_all": times,
            "unpack_s": unpack_s,
            "header_bytes": s["overhead_bytes"], "chunks": c["total"], "header_bytes_per_chunk":
            s["overhead_bytes"] / max(c["total"], 1), "vector_bytes": s["vector_bytes"],
            "corrections_bytes": s["corrections_bytes"], "literal_bytes": s["literal_bytes"],
            "corrections": c["corrections"], "predicted_tokens": c["predicted_tokens"], "vectors": c["vector"],
            "tokens_per_vector": c["tokens_per_vector"], "verify_strict_ok": v.ok, "problems": v.problems[:3]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="vectors,predict")
    ap.add_argument("--sizes", default="4096")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--offset", type=float, default=0.1, help="0.1: the reported slices; 0.7: tuning")
    ap.add_argument("--out", default="build/modes")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--files", default=",".join(FILES))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(None, "cpu")
    results = []
    for name in args.files.split(","):
        for size in map(int, args.sizes.split(",")):
            piece = corpus_slice(name, size, args.offset)
            path = out / f"{name}.{size}"
            path.write_bytes(piece)
            row = {"input": path.name, "bytes": len(piece), "offset": args.offset,
                   "classic": {m["method"]: m["bytes"] for m in classic_rows(piece, (19,))},
                   "model_limit_bytes": round((model_limit(lm, piece) or {}).get("ideal_bytes", 0)), "modes": []}
            for mode in args.modes.split(","):
                row["modes"].append(run(lm, path, mode, args.reps))
                m = row["modes"][-1]
                print(f"{path.name} {mode}: {m['archive_bytes']:,} B, {m['pack_s']:.0f} s, "
                      f"strict {'ok' if m['verify_strict_ok'] else 'FAILED'}", flush=True)
            results.append(row)
            (out / f"modes-{'-'.join(args.modes.split(','))}.json").write_text(json.dumps(results, indent=2))
    for row in results:
        cl = ", ".join(f"{k} {v:,}" for k, v in row["classic"].items())
        print(f"| {row['input']} | {row['bytes']:,} | {cl} | limit {row['model_limit_bytes']:,} | "
              + " | ".join(f"{m['mode']} {m['archive_bytes']:,} B ({m['pack_s']:.0f} s)" for m in row["modes"]) + " |")


if __name__ == "__main__":
    main()
