"""Fixed-size plan against the capacity plan, side by side, on fixed corpus slices.

    python -m benchmarks.plan_compare [--plan-sizes 4096,32768] [--pack-sizes 4096] [--files jargon.txt,...]

For every slice in --plan-sizes: how each plan cuts it (chunks, tokens per
vector min/median/max, planned nats per chunk) — planning only, cheap.
For every slice in --pack-sizes: also pack it with each plan (every chunk
verified by greedy decoding) and report retries, literal blocks, tokens per
vector actually stored, archive bytes and pack wall time.
The capacity plan uses the model's stored profile (run `vecarc calibrate` first).
Writes build/bench/plans.json (--out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.corpora import FILES, corpus_slice
from vecarc import PackConfig, SearchSettings, load_model, pack_documents, summary
from vecarc.capacity import capacity_budget
from vecarc.entropy import token_nll
from vecarc.plan import chunk_tokens_for, plan_by_budget, plan_chunks
from vecarc.summary import spread
from vecarc.text import tokenize_exact


def show(xs):
    return "{min}/{median:g}/{max}".format(**spread(xs)) if xs else "—"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan-sizes", default="4096,32768")
    ap.add_argument("--pack-sizes", default="")
    ap.add_argument("--files", default=",".join(FILES))
    ap.add_argument("--fill", type=float, default=0.9)
    ap.add_argument("--out", default="build/bench/plans.json")
    args = ap.parse_args()
    lm = load_model(None, "cpu")
    cfg = PackConfig(mode="vectors", search=SearchSettings(batch_size=16), fill=args.fill)
    budget = capacity_budget(lm, cfg.search, cfg.fill, warn=print)
    fixed = chunk_tokens_for(cfg.search.vectors)
    print(f"model {lm.name} · budget {budget.nats:.1f} nats × fill {budget.fill} · max {budget.max_tokens} tokens · "
          f"fixed plan {fixed} tokens")
    rows = []
    print("| input | plan | tokens | chunks | tokens/vector min/median/max | planned nats/chunk min/median/max |")
    print("|---|---|---|---|---|---|")
    for f in args.files.split(","):
        for size in map(int, args.plan_sizes.split(",")):
            ids = tokenize_exact(lm, corpus_slice(f, size))
            t = time.perf_counter()
            cap, nats = plan_by_budget([ids], budget, lambda w: token_nll(lm, w))
            plan_s = time.perf_counter() - t
            fix = plan_chunks(len(ids), fixed)
            fix_nats = [sum(x) for x in token_nll(lm, [ids[a:b] for a, b in fix])]
            cap_nats = [sum(nats[0][a:b]) for a, b in cap[0]]
            for name, spans, pn in (("fixed", fix, fix_nats), ("capacity", cap[0], cap_nats)):
                lens = [b - a for a, b in spans]
                row = {"input": f, "size": size, "plan": name, "tokens": len(ids), "chunks": len(spans),
                       "tokens_per_vector": lens, "planned_nats": pn, "plan_s": plan_s if name == "capacity" else 0}
                rows.append(row)
                print(f"| {f} {size} | {name} | {len(ids)} | {len(spans)} | {show(lens)} | "
                      f"{min(pn):.0f}/{statistics.median(pn):.0f}/{max(pn):.0f} |", flush=True)
    packed = []
    if args.pack_sizes:
        print("\n| input | plan | chunks planned | retries | vector chunks | literal blocks | tokens/vector "
              "min/median/max | archive bytes | pack s | tok/s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for f in args.files.split(",") if args.pack_sizes else []:
        for size in map(int, args.pack_sizes.split(",")):
            docs = [(f"{f}.{size}", corpus_slice(f, size))]
            for name in ("fixed", "capacity"):
                t = time.perf_counter()
                r = pack_documents(docs, lm, replace(cfg, chunk_tokens=fixed if name == "fixed" else None),
                                   budget=budget if name == "capacity" else None)
                raw, back, retries, steps = r.data, r.archive, r.retries, r.steps
                secs = time.perf_counter() - t
                sm = summary(back)
                c = sm["chunks"]
                lens = [ch.tokens for ch in back.chunks if ch.kind == "vector"]
                tokens = sum(ch.tokens for ch in back.chunks)
                packed.append({"input": f, "size": size, "plan": name,
                               "chunks_planned": back.header.plan["chunks_planned"],
                               "retries": retries, "vector_chunks": c["vector"], "literal_blocks": c["literal_blocks"],
                               "tokens_per_vector": lens, "bytes": len(raw), "pack_s": secs, "tokens": tokens,
                               "steps": steps})
                print(f"| {f} {size} | {name} | {back.header.plan['chunks_planned']} | {retries} | {c['vector']} | "
                      f"{c['literal_blocks']} | {show(lens)} | {len(raw):,} | {secs:.0f} | {tokens / secs:.2f} |",
                      flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"budget": vars(budget), "fixed_tokens": fixed, "plans": rows, "packed": packed},
                              indent=1))


if __name__ == "__main__":
    main()
