"""Chunks cut at line starts instead of near-equal spans: the coded streams' bytes on the tuning slices.

    python -m benchmarks.cuts --json docs/coded-cuts.json

A chunk decoded from the sink alone pays for the context it does not see; a cut at the start of a
line (or of a paragraph) within W tokens of the near-equal one might lose less of it. The format
would then store each cut's offset (about a byte a chunk); this measures what it could buy.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.corpora import FILES, corpus_slice
from vecarc import load_model
from vecarc.bench import tokenize_exact
from vecarc.chunks.coded import encode, integer_model, intervals
from vecarc.format.compact import spans


def stream_bytes(im, sink: int, ids: list[int], cuts: list[int]) -> int:
    edges = [0, *cuts, len(ids)]
    return sum(len(encode(intervals(im, [sink], [ids[a:b]])[0])) for a, b in zip(edges, edges[1:]))


def nearest(c: int, starts: list[int], window: int) -> int:
    near = [s for s in starts if abs(s - c) <= window]
    return min(near, key=lambda s: abs(s - c)) if near else c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offsets", default="0.3,0.5,0.7")
    ap.add_argument("--json")
    args = ap.parse_args()
    lm = load_model(None, device="cpu")
    im, rows = integer_model(lm), []
    for name in FILES:
        for off in (float(x) for x in args.offsets.split(",")):
            ids = list(tokenize_exact(lm, corpus_slice(name, 4096, off)))
            sizes = spans(len(ids), 512)
            equal = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
            text = [lm.tokenizer.decode([t]) for t in ids]
            lines = [i for i in range(1, len(ids)) if "\n" in text[i - 1]]
            paragraphs = [i for i in range(1, len(ids)) if "\n\n" in text[i - 1] or (
                i > 1 and "\n" in text[i - 1] and "\n" in text[i - 2])]
            row = {"corpus": name, "offset": off, "tokens": len(ids), "chunks": len(sizes),
                   "equal": stream_bytes(im, lm.sink_id, ids, equal)}
            for w in (32, 64):
                row[f"line_{w}"] = stream_bytes(im, lm.sink_id, ids, [nearest(c, lines, w) for c in equal])
                row[f"paragraph_{w}"] = stream_bytes(im, lm.sink_id, ids, [nearest(c, paragraphs, w) for c in equal])
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
