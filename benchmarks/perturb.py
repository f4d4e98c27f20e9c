"""How far do other decoding conditions move the logit margins?

    python -m benchmarks.perturb build/bench/*.vec [--out build/bench/perturb.json]

For every vector chunk of the given archives (all packed with the same model):
greedy decode under each condition of vecarc.robust (another thread count,
the other attention kernel, one chunk per batch, a bf16 model), count chunks
whose tokens flip, and measure each chunk's largest per-token margin drift
(teacher-forced on the stored tokens). "chunks drift >= m" is how many chunks
a margin of m would not have protected against that condition.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vecarc.format import read_archive
from vecarc.robust import MARGIN_GRID, stress
from vecarc.unpacking import model_for, verify


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("archives", nargs="+")
    ap.add_argument("--out", default="build/bench/perturb.json")
    args = ap.parse_args()
    vectors, tokens, margins, lm = [], [], [], None
    for path in args.archives:
        a = read_archive(path)
        lm = model_for(a, lm)
        r = verify(a, model=lm)
        if not r.ok:
            sys.exit(f"{path}: {r.problems[0]}")
        for i in sorted(r.margins):
            vectors.append(a.row(a.chunks[i]))
            tokens.append(r.tokens[i])
            margins.append(r.margins[i])
    t = time.perf_counter()
    reports = stress(lm, vectors, tokens)
    secs = time.perf_counter() - t
    print(f"model {lm.name} · {len(tokens)} chunks, {sum(map(len, tokens))} tokens from "
          f"{len(args.archives)} archives · "
          f"torch threads {torch.get_num_threads()} · attention {lm.attention} · smallest decode margin "
          f"{min(margins):.4f} · {secs:.0f} s")
    print("| condition | chunks | flips | min decode margin | max drift | " +
          " | ".join(f"drift ≥ {m}" for m in MARGIN_GRID) + " |")
    print("|---|---|---|---|---|" + "---|" * len(MARGIN_GRID))
    for c in reports:
        print(f"| {c.name} | {c.chunks} | {c.flips} | {c.min_margin:.4f} | {c.max_drift:.2e} | " +
              " | ".join(str(c.reaching(m)) for m in MARGIN_GRID) + " |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"archives": args.archives, "chunks": len(tokens), "decode_margins": margins,
                               "threads": torch.get_num_threads(), "attention": lm.attention,
                               "conditions": [c.as_dict() | {"drift": c.drift} for c in reports]}, indent=1))


if __name__ == "__main__":
    main()
