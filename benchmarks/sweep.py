"""Steps needed per chunk under different optimiser settings, on the same chunks.

    python -m benchmarks.sweep jargon.txt lr=0.5,init_scale=20 lr=0.3,init_scale=1
    python -m benchmarks.sweep jargon.txt rank=128,vector_dtype=int8 tokens=16,rank=64,vector_dtype=int8

Takes 6 chunks of 32 tokens (or tokens=N, chunks=N) from the 4 KiB slice of each corpus file
(comma-separated) and crams them with each setting, batch 8 (max 400 steps; a failure shows
as 400 / False). The first 6 chunks of 32 tokens are the 1 KiB slice's, as in earlier sweeps.
"""

from __future__ import annotations

import sys
import time

from benchmarks.corpora import corpus_slice
from vecarc.models import load_model
from vecarc.search import Job, SearchSettings, cram


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return
    files = [corpus_slice(f, 4096).decode() for f in sys.argv[1].split(",")]
    lm = load_model(None, "cpu")
    ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in files]
    for cfg in sys.argv[2:]:
        opts = {"tokens": 32, "chunks": 6}  # per file
        while cfg.split("=")[0] in opts:
            first, _, cfg = cfg.partition(",")
            opts[first.split("=")[0]] = int(first.split("=")[1])
        n, m = opts["tokens"], opts["chunks"]
        s = SearchSettings(batch_size=8, max_steps=400, patience=400).with_overrides(x for x in cfg.split(",") if x)
        t = time.time()
        res = []
        for f, doc in enumerate(ids):
            chunks = [doc[i * n : (i + 1) * n] for i in range(m)]
            res += sorted(cram(lm, [Job(c, i, (f, i)) for i, c in enumerate(chunks)], s), key=lambda x: x[0].tag)
        steps = sorted(r.steps for _, r in res)
        print(f"tokens={n} chunks={m}", cfg, f"{time.time() - t:.0f} s", "sum", sum(steps),
              "median", steps[len(steps) // 2], "failed", sum(not r.ok for _, r in res), steps, flush=True)

if __name__ == "__main__":
    main()
