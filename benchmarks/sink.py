"""Which sink token suits the default model: correction bits of predicted chunks per sink.

    python -m benchmarks.sink [--sinks 0,1,2] [--offsets 0.5,0.7]

Two 512-token chunks from each offset of each corpus (the first 8 KiB from the line start
after the offset: the tuning slices in benchmarks/slices/, not the reported ones at 10 %),
corrections from one teacher-forced pass at margin 0.5, as pack finds them before its
greedy check. Prints total corrections, their bits, and those in the first 16
positions (where the sink matters most), per corpus and sink.
"""

from __future__ import annotations

import argparse
import dataclasses

from benchmarks.corpora import FILES, corpus_window
from vecarc import load_model
from vecarc.chunks.predicted import teacher_corrections
from vecarc.config import PREDICT_TOKENS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sinks", default="0,1,2")
    ap.add_argument("--offsets", default="0.5,0.7")
    args = ap.parse_args()
    lm = load_model(None, "cpu")
    print("corpus\tsink\ttoken\tcorrections\tbits\tin first 16")
    for name in FILES:
        chunks = []
        for off in map(float, args.offsets.split(",")):
            text = corpus_window(name, 8192, off)  # 8 KiB from the first line start after the offset
            ids = lm.tokenizer(text.decode("utf-8", "ignore"), add_special_tokens=False)
            ids = ids["input_ids"]
            chunks += [ids[i : i + PREDICT_TOKENS] for i in (0, PREDICT_TOKENS)]
        for sink in map(int, args.sinks.split(",")):
            corrections = teacher_corrections(dataclasses.replace(lm, sink_id=sink), chunks, 0.5)
            flat = [f for fs in corrections for f in fs]
            early = sum(1 for p, _, _ in flat if p < 16)
            print(f"{name}\t{sink}\t{lm.tokenizer.convert_ids_to_tokens(sink)}\t{len(flat)}\t"
                  f"{sum(b for _, b, _ in flat)}\t{early}", flush=True)


if __name__ == "__main__":
    main()
