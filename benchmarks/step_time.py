"""Seconds per optimisation step for one chunk, at several chunk sizes.

    python -m benchmarks.step_time [--sizes 32,64,128] [--steps 15] [--model M]
    python -m benchmarks.step_time --sizes 32 --batch 8 --search-dtype bf16 --compile off,on --rounds 2
    python -m benchmarks.step_time --decode --sizes 52 --batch 6 --rounds 3

Times the same cram() loop that pack runs (forward, backward, Adam update),
with an unreachable margin so no chunk stops early; reports the median step (after the
first three: the first compiled step includes the compile). Several --compile values run
interleaved, --rounds times, in one process.
--decode times unpack's float32 greedy step instead (batch × sizes tokens), next to the
matrix products alone of one step (every Linear weight once, at that batch): the part no
decode loop can avoid, since each step reads all weights.

The chunks are characters 20000-40000 of the whole python-tutorial.rst, which is not among
the slices in benchmarks/slices/: it must be in ../shared/corpora beside the repository
(source in benchmarks/slices/README.md). --decode needs no text.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.corpora import corpus_bytes
from vecarc.decode import greedy_decode
from vecarc.models import load_model
from vecarc.search import Job, SearchSettings, cram


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="32,64,128")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--model", default=None)
    ap.add_argument("--search-dtype", default="fp32")
    ap.add_argument("--compile", default="off", help="comma-separated: off, on")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--decode", action="store_true")
    args = ap.parse_args()
    if args.decode:
        return decode_step(load_model(args.model), args)
    text = corpus_bytes("python-tutorial.rst").decode("utf-8")[20000:40000]
    lm = load_model(args.model)
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    print(f"model {lm.name} · threads {torch.get_num_threads()} · torch {torch.__version__} · batch {args.batch} · "
          f"search {args.search_dtype}")
    for _ in range(args.rounds):
        for n in map(int, args.sizes.split(",")):
            for comp in args.compile.split(","):
                chunks = [ids[i * n : (i + 1) * n] for i in range(args.batch)]
                stamps = [time.perf_counter()]
                s = SearchSettings(margin=1e9, max_steps=args.steps, patience=10**9, batch_size=args.batch,
                                   search_dtype=args.search_dtype, compile=comp)
                jobs = [Job(c, i) for i, c in enumerate(chunks)]
                cram(lm, jobs, s, lambda e, st=stamps: st.append(time.perf_counter()))
                per = [b - a for a, b in zip(stamps, stamps[1:])]
                print(f"{n:5d} tokens, compile {comp}: median {statistics.median(per[3:]):.3f} s/step "
                      f"(first {per[0]:.1f} s, min {min(per):.3f}, max {max(per):.3f}, {len(per)} steps)", flush=True)


def decode_step(lm, args) -> None:
    weights = [m.weight for m in lm.model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(args.batch, w.shape[1]) for w in weights}
    vec = torch.randn(args.batch, 1, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    print(f"model {lm.name} · threads {torch.get_num_threads()} · {len(weights)} weights, "
          f"{sum(w.numel() * w.element_size() for w in weights) / 1e6:.0f} MB · batch {args.batch}")
    greedy_decode(lm, vec, [2] * args.batch)  # warm up
    for _ in range(args.rounds):
        for n in map(int, args.sizes.split(",")):
            t = time.perf_counter()
            greedy_decode(lm, vec, [1] * args.batch)
            first = time.perf_counter() - t
            t = time.perf_counter()
            greedy_decode(lm, vec, [n] * args.batch)
            step = (time.perf_counter() - t - first) / (n - 1)
            mm = []
            for _ in range(5):
                t = time.perf_counter()
                with torch.no_grad():
                    for w in weights:
                        F.linear(xs[w.shape[1]], w)
                mm.append(time.perf_counter() - t)
            print(f"greedy step {step * 1e3:.1f} ms ({n} tokens) · matrix products alone "
                  f"{statistics.median(mm) * 1e3:.1f} ms (min {min(mm) * 1e3:.1f})", flush=True)


if __name__ == "__main__":
    main()
