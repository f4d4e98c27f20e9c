"""What a pack's driver does on one core whatever the engine: tokenizing, and range-coding corrections.

    python -m benchmarks.driver_costs [--archive build/ray/jargon.65536.txt.local.vec] [--text-mib 4]

Tokenizes --text-mib MiB of the corpora (as pack does: tokenize_exact, which also checks the
round trip) and times it; then encodes and parses the corrections of a predicted archive (by
default the one benchmarks.ray_scale writes) a few times and reports corrections per second.
Medians of --reps runs.

Needs the whole corpora, not only the slices in benchmarks/slices/: jargon.txt,
python-tutorial.rst and fortunes.txt (2.3 MB together; sources in
benchmarks/slices/README.md) in ../shared/corpora beside the repository, or --corpora DIR.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.corpora import CORPORA, FILES, corpus_bytes
from vecarc import load_model, read_archive
from vecarc.format import corrections as codec
from vecarc.text import tokenize_exact


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", default="build/ray/jargon.65536.txt.local.vec")
    ap.add_argument("--text-mib", type=float, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--corpora", default=str(CORPORA),
                    help=f"folder holding the whole {', '.join(FILES)} (default %(default)s)")
    args = ap.parse_args()
    text = b"".join(corpus_bytes(f, args.corpora) for f in FILES)
    lm = load_model(None, "cpu")
    size = int(args.text_mib * (1 << 20))
    data = (text * (size // len(text) + 1))[:size]
    data = data[: data.rindex(b"\n") + 1]
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        ids = tokenize_exact(lm, data)
        times.append(time.perf_counter() - t)
    t_tok = statistics.median(times)
    print(f"tokenize_exact: {len(data) / 1e6:.1f} MB, {len(ids):,} tokens in {t_tok:.1f} s: "
          f"{len(data) / 1e6 / t_tok:.2f} MB/s")
    a = read_archive(args.archive)
    chunks = [i for i, c in enumerate(a.chunks) if c.kind == "predicted"]
    corrections = [a.corrections.get(i, []) for i in chunks]
    n = sum(map(len, corrections))
    enc, dec = [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        blob = codec.encode(corrections)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        codec.parse(blob, [len(f) for f in corrections], [a.chunks[i].tokens for i in chunks], lm.vocab_size)
        dec.append(time.perf_counter() - t)
    e, d = statistics.median(enc), statistics.median(dec)
    print(f"corrections: {n:,} in {len(blob):,} bytes; encode {n / e:,.0f}/s, parse {n / d:,.0f}/s")


if __name__ == "__main__":
    main()
