"""Packing throughput: tokens per second packed and unpacked, steps per chunk, peak memory,
for several packing configurations on the same fixed slices, medians over repetitions.

    python benchmarks/pack_speed.py [--sizes 1024] [--reps 1] [--configs baseline,batched,...]

baseline = the straightforward loop: one chunk at a time (batch 1), float32.
Every configuration goes through api.pack_documents, so every chunk is verified
by greedy decoding; decode throughput is measured on the packed result.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpora import CORPORA, FILES, fixed_slice  # noqa: E402

from vecarc import CramSettings, load_model  # noqa: E402
from vecarc.api import _checked_bytes, decode_archive, pack_documents, parse_archive  # noqa: E402

CONFIGS = {
    # The straightforward loop: one chunk at a time, the first recipe that worked here.
    "baseline": CramSettings(batch_size=1, lr=0.3, init_scale=1.0, search_dtype="fp32"),
    "batched": CramSettings(batch_size=16, lr=0.3, init_scale=1.0, search_dtype="fp32"),
    "tuned": CramSettings(batch_size=16),  # the defaults: batched, lr 0.5, init_scale 20
    "bf16-search": CramSettings(batch_size=16, search_dtype="bf16"),  # + bf16 search, float32 polish
}


def run(lm, docs, s: CramSettings, chunk_tokens=None) -> dict:
    t = time.perf_counter()
    archive, decoded, retries, steps = pack_documents(docs, lm, s, chunk_tokens)
    data, _ = _checked_bytes(archive, lm, decoded)
    pack_s = time.perf_counter() - t
    back = parse_archive(data)
    t = time.perf_counter()
    res = decode_archive(back, lm)
    unpack_s = time.perf_counter() - t
    assert res.ok, res.problems
    tokens = sum(c.get("tokens", 0) for c in back.chunks)
    return {"pack_s": pack_s, "unpack_s": unpack_s, "tokens": tokens, "steps": steps, "retries": retries,
            "bytes": len(data), "vectors": back.header["vectors"]["count"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024")
    ap.add_argument("--files", default=",".join(FILES))
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--chunk-tokens", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    lm = load_model(None, args.device)
    print("| config | input | tokens | pack tok/s | unpack tok/s | steps/chunk (median) | retries | vectors | "
          "bytes | peak RSS MiB |")
    print("|" + "---|" * 10)
    for name in args.configs.split(","):
        for f in args.files.split(","):
            data = (CORPORA / f).read_bytes()
            for size in map(int, args.sizes.split(",")):
                docs = [(f"{f}.{size}", fixed_slice(data, size))]
                runs = [run(lm, docs, replace(CONFIGS[name]), args.chunk_tokens) for _ in range(args.reps)]
                r = runs[0]
                pack = statistics.median(x["tokens"] / x["pack_s"] for x in runs)
                unpack = statistics.median(x["tokens"] / x["unpack_s"] for x in runs)
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"| {name} | {f} {size} | {r['tokens']} | {pack:.2f} | {unpack:.1f} | "
                      f"{statistics.median(r['steps']):.0f} | {r['retries']} | {r['vectors']} | {r['bytes']:,} | "
                      f"{rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
