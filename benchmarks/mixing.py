"""Would a model better than the model pay? Adaptive mixing simulated on the integer model's tables.

    python -m benchmarks.mixing [--size 4096] [--offsets 0.5,0.7]

Each tuning slice is cut as pack cuts it (near-equal chunks of at most 512 tokens, each
after the sink) and the integer model's frequency table at every position is turned into
probabilities. On those, in floating point (an upper bound: an integer version would only
lose), three adaptive models that an encoder and a decoder could both run on the tokens
already coded in the chunk:

- match: the longest earlier repeat of the last tokens predicts the token that followed it;
  the prediction's probability is set per (match length, model probability) cell to the
  hit rate that cell has over all slices (an oracle: no online estimate does better);
- cache: the model mixed with the chunk's token counts so far, weight mu;
- temperature: the model's probabilities raised to 1/T and renormalised.

Prints the bytes each would save against the model alone.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict

import numpy as np
import torch

from benchmarks.corpora import FILES, corpus_slice
from vecarc import load_model
from vecarc.bench import tokenize_exact
from vecarc.chunks.coded import integer_model
from vecarc.plan import plan_chunks


def tables(lm, im, ids: list[int]) -> list[tuple[np.ndarray, list[int]]]:
    """(probabilities (T, V), tokens) for each chunk as pack cuts them."""
    out = []
    for a, b in plan_chunks(len(ids), 512):
        part = ids[a:b]
        with torch.no_grad():
            f = im.forward(torch.tensor([[lm.sink_id] + part[:-1]]))[0].double()
        out.append(((f / f.sum(1, keepdim=True)).numpy(), part))
    return out


def longest_repeat(ids: list[int], i: int, most: int = 24) -> tuple[int, int | None]:
    """(L, next): the longest run ending at i that also ends earlier at j, and the token after it there."""
    best = (0, None)
    for j in range(i - 1, 0, -1):
        n = 0
        while n < most and n < j and ids[j - n - 1] == ids[i - n - 1]:
            n += 1
        if n > best[0]:
            best = (n, ids[j])
    return best


def match_saving(chunks) -> float:
    cells = defaultdict(list)
    for p, ids in chunks:
        for i in range(1, len(ids)):
            n, y = longest_repeat(ids, i)
            if n:
                py, pt = float(p[i, y]), float(p[i, ids[i]])
                cells[(min(n, 10), min(int(-math.log2(max(py, 1e-9))), 12))].append((py, pt, y == ids[i]))
    bits = 0.0
    for rows in cells.values():
        q = (sum(hit for *_, hit in rows) + 0.5) / (len(rows) + 1)
        for py, pt, hit in rows:
            bits += math.log2((q if hit else pt * (1 - q) / (1 - py)) / pt)
    return bits / 8


def cache_cost(chunks, mu: float, temperature: float) -> float:
    bits = 0.0
    for p, ids in chunks:
        if temperature != 1:
            q = np.power(np.maximum(p, 1e-300), 1 / temperature)
            p = q / q.sum(1, keepdims=True)
        counts = defaultdict(int)
        for i, t in enumerate(ids):
            pt = p[i, t] if not i else (1 - mu) * p[i, t] + mu * counts[t] / i
            bits -= math.log2(pt)
            counts[t] += 1
    return bits / 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--offsets", default="0.5,0.7")
    args = ap.parse_args()
    lm = load_model(None, device="cpu")
    im = integer_model(lm)
    chunks = [c for name in FILES for off in map(float, args.offsets.split(","))
              for c in tables(lm, im, list(tokenize_exact(lm, corpus_slice(name, args.size, off))))]
    base = cache_cost(chunks, 0.0, 1.0)
    out = {"model_bytes": round(base, 1), "match_oracle_saves": round(match_saving(chunks), 1)}
    for mu in (0.005, 0.02):
        out[f"cache {mu}"] = round(cache_cost(chunks, mu, 1.0) - base, 1)
    for t in (0.9, 1.1):
        out[f"temperature {t}"] = round(cache_cost(chunks, 0.0, t) - base, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
