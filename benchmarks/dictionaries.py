"""Dictionaries against none: for each corpus, a dictionary trained on its second half, reported on
the coded archive of a 64 KiB slice of its first half (the vendored slice at 10 %), never the
text it was trained on.

    python -m benchmarks.dictionaries --json docs/benchmarks-dict.json
    python -m benchmarks.dictionaries --prefix 4 --only jargon.txt --json docs/benchmarks-prefix.json

Training needs the whole corpora (../shared/corpora, or --corpora); k, steps and lr were chosen
on the held-out chunks of the training half (the `train` report's gain), not on the slices
reported here. Each archive with a dictionary is decoded again (verify) and must give the
slice's bytes.

With --prefix K, instead: pack --learn-prefix K on the slice of --prefix-size bytes at 10 %
against a plain pack of it (the vectors are learnt on the slice itself, as pack does).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import vecarc
from benchmarks.corpora import FILES, corpus_bytes, vendored_slice
from vecarc import dictionary as D
from vecarc import load_model
from vecarc import prefix as vecarc_prefix
from vecarc.packing import pack_documents


def training_half(data: bytes) -> bytes:
    """The corpus from the first line start at or after its middle."""
    at = data.find(b"\n", len(data) // 2) + 1
    return data[at:]


def one(lm, name: str, args) -> dict:
    half = training_half(corpus_bytes(name, args.corpora))
    cfg = D.TrainConfig(vectors=args.vectors, steps=args.steps, lr=args.lr, held_out=args.held_out, seed=args.seed)
    t = D.train(lm, [half], cfg, info={"corpus": f"{name} from 50 %", "corpus_bytes": len(half)})
    text = vendored_slice(name, 0.1)
    doc = [(f"{name}@10", text)]
    plain = pack_documents(doc, lm, vecarc.PackConfig()).data
    with_lm = D.attach(lm, t.dictionary)
    t0 = time.perf_counter()
    coded = pack_documents(doc, with_lm, vecarc.PackConfig()).data
    pack_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.vec"
        path.write_bytes(coded)
        t0 = time.perf_counter()
        ok = vecarc.verify(path, model=lm, dictionary=t.dictionary).ok
        verify_s = time.perf_counter() - t0
    row = {"corpus": name, "slice_bytes": len(text), "train_bytes": len(half), **D.train_report(t),
           "dictionary_bytes": len(t.data), "archive_without": len(plain), "archive_with": len(coded),
           "archive_gain": round(1 - len(coded) / len(plain), 4), "pack_s": round(pack_s, 1),
           "verify_s": round(verify_s, 1), "round_trip": ok}
    print(json.dumps(row), flush=True)
    return row


def prefix_row(lm, name: str, args) -> dict:
    from benchmarks.corpora import corpus_slice

    text = corpus_slice(name, args.prefix_size, 0.1, args.corpora)
    doc = [(f"{name}@10", text)]
    t0 = time.perf_counter()
    plain = pack_documents(doc, lm, vecarc.PackConfig())
    plain_s = time.perf_counter() - t0
    notes: list[str] = []
    t0 = time.perf_counter()
    chosen = vecarc_prefix.choose(doc, lm, vecarc.PackConfig(learn_prefix=args.prefix).resolved(lm), plain,
                                  lambda e: notes.append(e.get("message", "")) if e["event"] == "note" else None)
    row = {"corpus": name, "slice_bytes": len(text), "vectors": args.prefix, "archive_without": len(plain.data),
           "archive_chosen": len(chosen.data), "kept": chosen.archive.header.prefix is not None,
           "pack_s": round(plain_s, 1), "prefix_s": round(time.perf_counter() - t0, 1), "notes": notes}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=D.TrainConfig.vectors)
    ap.add_argument("--steps", type=int, default=D.TrainConfig.steps)
    ap.add_argument("--lr", type=float, default=D.TrainConfig.lr)
    ap.add_argument("--held-out", type=int, default=D.TrainConfig.held_out)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpora", help="folder of the whole corpora (default ../shared/corpora)")
    ap.add_argument("--only", help="comma-separated corpus files (default: all three)")
    ap.add_argument("--prefix", type=int, default=0, help="measure pack --learn-prefix K instead")
    ap.add_argument("--prefix-size", type=int, default=262144)
    ap.add_argument("--json")
    args = ap.parse_args()
    lm = load_model(None, device="cpu")
    names = args.only.split(",") if args.only else FILES
    rows = [(prefix_row if args.prefix else one)(lm, name, args) for name in names]
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
