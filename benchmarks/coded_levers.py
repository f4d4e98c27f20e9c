"""Coded chunks' levers on the tuning slices: chunk length and carried context against bytes and unpack steps.

    python -m benchmarks.coded_levers --size 4096 --offsets 0.5,0.7 --json docs/coded-levers.json
    python -m benchmarks.coded_levers --steps-only --json docs/coded-steps.json
    python -m benchmarks.coded_levers --steps-only --positions 10,300,1000 --json docs/coded-steps-at.json
    python -m benchmarks.coded_levers --size 16384 --offsets 0.1 --chunks 512,1024,2048,4096 \
        --contexts 0,256,1024 --bytes-only --json docs/coded-long.json
    python -m benchmarks.coded_levers --chunks 512 --contexts 0,64,128 --bytes-only [--head]

For each slice and chunk length, the coded streams' bytes (exactly what pack would store)
with no context and with the last C tokens of the chunk before as context. A chunk with
context cannot be decoded before the one it follows, so unpack takes (tokens) steps of one
row instead of (chunk length) steps of all rows side by side; the step times per batch size
measured here turn both into seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.corpora import FILES, corpus_slice
from vecarc import load_model
from vecarc.bench import model_limit, tokenize_exact
from vecarc.chunks.coded import encode, integer_model, intervals
from vecarc.exact import fast


def coded_bytes(im, sink: int, ids: list[int], chunk: int, context: int, head: bool = False) -> int:
    """With `head`, every chunk but the first reads the document's first `context` tokens instead of the
    ones just before it (so that chunks could still decode side by side, after those)."""
    total = 0
    for a in range(0, len(ids), chunk):
        part = ids[a : a + chunk]
        before = (ids[: min(a, context)] if head else ids[max(0, a - context) : a]) if context else []
        total += len(encode(intervals(im, [sink], [before + part])[0, len(before) :]))
    return total


def step_ms(im, sink: int, rows: int, steps: int = 24, at: int = 0) -> float:
    """A decoder's token step of `rows` rows (as coded.decode_streams runs it) after `at` positions (their keys
    and values cached by one pass), after a warm-up step: the median of `steps`."""
    caches = [[] for _ in im.layers]
    x = torch.full((rows, 1), sink)
    im.forward(torch.full((rows, at + 1), sink), caches, 0)
    times = []
    with fast.stepping(im, rows):
        im.forward(x, caches, at + 1, last=True)
        for s in range(at + 2, at + steps + 2):
            t = time.perf_counter()
            im.forward(x, caches, s, last=True)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--offsets", default="0.5,0.7")
    ap.add_argument("--chunks", default="128,256,512,1024")
    ap.add_argument("--contexts", default="0,128")
    ap.add_argument("--json")
    ap.add_argument("--steps-only", action="store_true", help="time the token steps only")
    ap.add_argument("--bytes-only", action="store_true", help="skip timing the token steps")
    ap.add_argument("--positions", default="0", help="time the steps after these many cached positions")
    ap.add_argument("--head", action="store_true", help="contexts from the document's start (see coded_bytes)")
    args = ap.parse_args()
    lm = load_model(None, device="cpu")
    im = integer_model(lm)
    rows = []
    for name in FILES if not args.steps_only else ():
        for off in (float(x) for x in args.offsets.split(",")):
            data = corpus_slice(name, args.size, off)
            ids = list(tokenize_exact(lm, data))
            limit = round(model_limit(lm, data)["ideal_bytes"], 1)  # the float model, 1,024-token windows
            for chunk in (int(x) for x in args.chunks.split(",")):
                for ctx in (int(x) for x in args.contexts.split(",")):
                    if ctx >= chunk:
                        continue
                    n = coded_bytes(im, lm.sink_id, ids, chunk, ctx, args.head)
                    rows.append({"corpus": name, "offset": off, "tokens": len(ids), "chunk": chunk, "context": ctx,
                                 "head": args.head, "coded_bytes": n, "float_limit_bytes": limit})
                    print(json.dumps(rows[-1]), flush=True)
    at = [int(x) for x in args.positions.split(",")]
    steps = {} if args.bytes_only else {f"{b}@{p}" if len(at) > 1 or p else b: step_ms(im, lm.sink_id, b, at=p)
                                        for p in at for b in (1, 2, 4, 8, 16)}
    print(json.dumps({"step_ms": steps}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "step_ms": steps, "size": args.size}, f, indent=1)


if __name__ == "__main__":
    main()
