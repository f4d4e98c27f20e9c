"""Steps needed per chunk under different optimiser settings, on the same chunks.

    python benchmarks/sweep.py jargon.txt lr=0.5,init_scale=20 lr=0.3,init_scale=1
    python benchmarks/sweep.py jargon.txt rank=128,vector_dtype=int8 tokens=16,rank=64,vector_dtype=int8

Takes 6 chunks of 32 tokens (or tokens=N) from the 1 KiB slice of a corpus file and crams them
as one batch with each setting (max 400 steps; a failure shows as 400 / False).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpora import CORPORA, fixed_slice  # noqa: E402

from vecarc.cram import CramSettings, Job, cram  # noqa: E402
from vecarc.models import load_model  # noqa: E402


def main() -> None:
    lm = load_model(None, "cpu")
    text = fixed_slice((CORPORA / sys.argv[1]).read_bytes(), 1024).decode()
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    for cfg in sys.argv[2:]:
        n = 32  # tokens per chunk, or tokens=N in the setting
        if cfg.startswith("tokens="):
            first, _, cfg = cfg.partition(",")
            n = int(first.split("=")[1])
        chunks = [ids[i * n : (i + 1) * n] for i in range(6)]
        kw = {k: (v if k.endswith("dtype") else int(v) if isinstance(getattr(CramSettings, k), int) else float(v))
              for k, v in (x.split("=") for x in cfg.split(","))}
        s = CramSettings(batch_size=6, max_steps=400, patience=400, **kw)
        t = time.time()
        res = sorted(cram(lm, [Job(c, i, i) for i, c in enumerate(chunks)], s), key=lambda x: x[0].tag)
        print(f"tokens={n}", cfg, f"{time.time() - t:.0f} s", sum(r.steps for _, r in res), [r.steps for _, r in res], [r.search_steps for _, r in res], [r.ok for _, r in res], flush=True)


if __name__ == "__main__":
    main()
