"""How much of a chunk's step count is luck of the random start, and what restarts or
picking among starts would save, on the same chunks.

    python -m benchmarks.seeds [--seeds 0,1,2] [--set beta2=0.99] [--out build/bench/seeds.json]
    python -m benchmarks.seeds --analyse build/bench/seeds.json

Crams the capacity plan's chunks of two 4 KiB slices (23 of python-tutorial.rst, 9 of
jargon.txt) once per seed, batch 8, up to 600 steps with patience 600 (so the tail shows),
and records every row's loss after every step. --analyse replays the runs offline:
restarting a start after C steps with the next seed, and keeping the lowest-loss of three
starts after E steps.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

from benchmarks.corpora import corpus_slice

SLICES = (("python-tutorial.rst", 23), ("jargon.txt", 9))


def run(seeds: list[int], overrides: list[str], out: Path) -> None:
    from vecarc import SearchSettings, load_model
    from vecarc.capacity import capacity_budget
    from vecarc.entropy import token_nll
    from vecarc.plan import plan_by_budget
    from vecarc.search import Job, chunk_key, cram
    from vecarc.text import tokenize_exact

    lm = load_model(None, "cpu")
    budget = capacity_budget(lm, SearchSettings().resolved(lm.hidden_size, lm.fast_bf16()))
    chunks = []
    for f, n in SLICES:
        ids = tokenize_exact(lm, corpus_slice(f, 4096))
        cuts, _ = plan_by_budget([ids], budget, lambda w: token_nll(lm, w))
        chunks += [(f"{f}:{i}", list(ids[a:b])) for i, (a, b) in enumerate(cuts[0][:n])]
    loss: dict[str, list[float]] = {}
    steps = {}
    for seed in seeds:
        s = SearchSettings(seed=seed, max_steps=600, patience=600).with_overrides(overrides)

        def trace(e: dict, seed: int = seed) -> None:  # every row's loss, as the search saw it
            for tag, _, _, _, _, row_loss in e.get("rows", []) if e["event"] == "group" else []:
                loss.setdefault(f"{seed}|{tag}", []).append(round(row_loss, 4))

        for job, r in cram(lm, [Job(c, chunk_key(i), name) for i, (name, c) in enumerate(chunks)], s, trace=trace):
            steps[f"{seed}|{job.tag}"] = r.steps if r.ok else None
        print(f"seed {seed}: {sum(v or s.max_steps for k, v in steps.items() if k.startswith(f'{seed}|'))} steps",
              flush=True)
    overrides = {k: v for k, v in vars(s).items() if k in {x.partition("=")[0] for x in overrides}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seeds": seeds, "overrides": overrides, "chunks": [n for n, _ in chunks],
                               "steps": steps, "loss": loss}))


def analyse(path: Path) -> None:
    d = json.loads(path.read_text())
    seeds, names = d["seeds"], d["chunks"]
    cap = int(d["overrides"].get("max_steps", 600))
    T = {n: [d["steps"][f"{s}|{n}"] or cap for s in seeds] for n in names}  # a failure counts as the step cap
    runs = [t for v in T.values() for t in v]
    failed = sum(v is None for v in d["steps"].values())
    print(f"{len(runs)} runs: sum per seed {[sum(v[i] for v in T.values()) for i in range(len(seeds))]}, "
          f"median {st.median(runs)}, mean {st.mean(runs):.1f}, failed {failed}, "
          f"> 250 steps {sum(t > 250 for t in runs)}")
    print(f"per chunk: best start {st.mean(min(v) for v in T.values()):.1f}, "
          f"worst {st.mean(max(v) for v in T.values()):.1f} steps on average")
    k = len(seeds)
    for c in (100, 130, 160, 200, 250, 300):  # abandon a start after c steps, go on with the next seed
        costs = []
        for v in T.values():
            for rot in range(k):
                seq, cost = v[rot:] + v[:rot], 0
                for i, t in enumerate(seq):
                    if t <= c or i == k - 1:
                        cost += t
                        break
                    cost += c
                costs.append(cost)
        print(f"restart after {c}: {st.mean(costs):.1f} steps per chunk")

    def loss_at(n: str, s: int, e: int) -> float:
        tr = d["loss"][f"{s}|{n}"]
        return tr[min(e, len(tr)) - 1]

    for e in (1, 5, 10, 20, 40):  # run all k starts for e steps, keep the lowest loss
        picks = [T[n][seeds.index(min(seeds, key=lambda s: loss_at(n, s, e)))] for n in names]
        cost = st.mean(k * e + max(p - e, 0) for p in picks)
        print(f"keep the best of {k} after {e} steps: {cost:.1f} steps per chunk (the kept start's own: "
              f"{st.mean(picks):.1f})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], help="a SearchSettings field, e.g. beta2=0.99")
    ap.add_argument("--out", default="build/bench/seeds.json")
    ap.add_argument("--analyse", metavar="JSON")
    args = ap.parse_args()
    if args.analyse:
        analyse(Path(args.analyse))
        return
    run([int(x) for x in args.seeds.split(",")], args.set, Path(args.out))


if __name__ == "__main__":
    main()
