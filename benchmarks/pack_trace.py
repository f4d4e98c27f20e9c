"""Where a pack's time goes: optimisation steps by group size, greedy checks, the rest.

    python -m benchmarks.pack_trace [--size 4096] [--fill 0.9] [--set batch_size=16 ...] [--rows]

Packs one fixed slice of python-tutorial.rst with the default model (as pack_speed.py
does) while timing every forward/backward group and every greedy check that cram makes;
--rows also prints each chunk's accuracy and margin every 20 steps. One run: it is a
profile, not a benchmark (pack_speed.py gives medians).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import vecarc
from benchmarks.corpora import corpus_slice
from vecarc import PackConfig, load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--file", default="python-tutorial.rst")
    ap.add_argument("--fill", type=float, default=0.9)
    ap.add_argument("--set", nargs="*", default=[], help="SearchSettings fields, or mode/margin, KEY=VALUE")
    ap.add_argument("--rows", action="store_true")
    args = ap.parse_args()
    # mode and margin are the pack's; every other key is a search setting (search.KEY)
    config = PackConfig(mode="vectors", fill=args.fill).with_overrides(
        x if x.partition("=")[0] in ("mode", "margin") else f"search.{x}" for x in args.set)
    lm = load_model(None)
    groups, checks, rows = [], [], collections.defaultdict(list)

    def trace(e: dict) -> None:  # the search loop's own record of every group step and greedy check
        if e["event"] == "group":
            lengths = [r[2] for r in e["rows"]]
            groups.append((e["float32"], len(lengths), max(lengths) * len(lengths), sum(lengths), e["seconds"]))
            for tag, t, _, margin, acc, _ in e["rows"]:
                rows[tag].append((t, "fp32" if e["float32"] else "search", margin, acc))
        else:
            checks.append((e["rows"], e["tokens"], e["seconds"]))

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"slice.{args.size}.txt"
        src.write_bytes(corpus_slice(args.file, args.size))
        t = time.perf_counter()
        res = vecarc.pack([src], Path(tmp) / "a.vec", config, model=lm, trace=trace)
        total = time.perf_counter() - t
    in_steps, in_checks = sum(g[-1] for g in groups), sum(c[-1] for c in checks)
    print(f"pack {total:.1f} s: steps {in_steps:.1f} s ({len(groups)} group steps, "
          f"{sum(g[1] for g in groups)} row-steps), checks {in_checks:.1f} s "
          f"({len(checks)}: rows x tokens {[c[:2] for c in checks]}), other {total - in_steps - in_checks:.1f} s")
    by = collections.defaultdict(list)
    for fp32, n, padded, real, sec in groups:
        by[(fp32, n)].append((padded, real, sec))
    for (fp32, n), gs in sorted(by.items()):
        sec = sum(g[2] for g in gs)
        waste = 1 - sum(g[1] for g in gs) / sum(g[0] for g in gs)
        print(f"{'float32' if fp32 else 'search '} groups of {n:2d} rows: {len(gs):4d} steps, {sec:6.1f} s, "
              f"{sec / len(gs):.3f} s each, padding {waste:.0%}")
    print("steps per chunk", sorted(res.steps), "retries", res.retries)
    if args.rows:
        for tag, tr in sorted(rows.items()):
            right = next((t for t, _, _, acc in tr if acc >= 1.0), None)
            print(tag, f"{len(tr)} steps, all tokens right first at {right}:",
                  [(t, m, round(x, 2), round(a, 3)) for t, m, x, a in tr if t % 20 == 0 or t == len(tr)])


if __name__ == "__main__":
    main()
