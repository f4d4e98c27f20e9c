"""Where a pack's time goes: optimisation steps by group size, greedy checks, the rest.

    python benchmarks/pack_trace.py [--size 4096] [--fill 0.9] [--set batch_size=16 ...] [--rows]

Packs one fixed slice of python-tutorial.rst with the default model (as pack_speed.py
does) while timing every forward/backward group and every greedy check that cram makes;
--rows also prints each chunk's accuracy and margin every 20 steps. One run: it is a
profile, not a benchmark (pack_speed.py gives medians).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from corpora import CORPORA, fixed_slice  # noqa: E402

import vecarc  # noqa: E402
from vecarc import CramSettings, load_model  # noqa: E402
from vecarc import cram as cram_mod  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--file", default="python-tutorial.rst")
    ap.add_argument("--fill", type=float, default=0.9)
    ap.add_argument("--set", nargs="*", default=[], help="CramSettings fields, key=JSON value")
    ap.add_argument("--rows", action="store_true")
    args = ap.parse_args()
    settings = CramSettings(**{k: json.loads(v) for k, v in (x.split("=", 1) for x in args.set)})
    lm = load_model(None)
    groups, checks, rows = [], [], collections.defaultdict(list)
    step, decode = cram_mod._group_step, cram_mod.greedy_decode

    def timed_step(lm_, model, slots, s):
        t = time.perf_counter()
        out = step(lm_, model, slots, s)
        lengths = [len(sl.tokens) for sl in slots]
        groups.append((model.dtype == torch.float32, len(slots), max(lengths) * len(slots), sum(lengths),
                       time.perf_counter() - t))
        for sl, (_, margin, acc, loss, _) in zip(slots, out):
            rows[sl.job.tag].append((sl.t + 1, "fp32" if model.dtype == torch.float32 else "search", margin, acc))
        return out

    def timed_decode(lm_, vectors, lengths, model=None):
        t = time.perf_counter()
        out = decode(lm_, vectors, lengths, model)
        checks.append((len(lengths), max(lengths), time.perf_counter() - t))
        return out

    cram_mod._group_step, cram_mod.greedy_decode = timed_step, timed_decode
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"slice.{args.size}.txt"
        src.write_bytes(fixed_slice((CORPORA / args.file).read_bytes(), args.size))
        t = time.perf_counter()
        res = vecarc.pack([src], Path(tmp) / "a.vec", model=lm, fill=args.fill, settings=settings)
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
