"""vecarc's range coder against constriction's on the same exact frequency tables.

    pip install constriction==0.5.0 && python -m benchmarks.coders

Codes the first 512 tokens of the 4 KiB jargon tuning slice (50 %) under the integer model's
tables: bytes against the ideal (the tables' own cross-entropy) and seconds to code.
constriction's Python models take float probabilities, so each table is handed over as
f / total and quantised again inside it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.corpora import corpus_slice
from vecarc.chunks.coded import encode, integer_model
from vecarc.models import load_model
from vecarc.text import tokenize_exact


def main() -> None:
    try:
        import constriction
    except ImportError:
        raise SystemExit("this benchmark needs constriction: pip install constriction==0.5.0") from None
    lm = load_model(None, "cpu")
    im = integer_model(lm)
    ids = list(tokenize_exact(lm, corpus_slice("jargon.txt", 4096, 0.5)))[:512]
    seq, tgt = torch.tensor([[lm.sink_id] + ids[:-1]]), torch.tensor([ids])
    freqs, sym = im.forward(seq)[0], im.symbols(seq, tgt)[0]
    ideal = float(-torch.log2(sym[:, 1].double() / sym[:, 2].double()).sum()) / 8
    t = time.perf_counter()
    ours = encode(sym)  # codes, then decodes to check
    t_ours = time.perf_counter() - t
    probs = (freqs.double() / freqs.sum(-1, keepdim=True).double()).numpy()
    t = time.perf_counter()
    enc = constriction.stream.queue.RangeEncoder()
    for p, s in zip(probs, ids):
        enc.encode(np.array([s], dtype=np.int32), constriction.stream.model.Categorical(p, perfect=False))
    theirs = enc.get_compressed().nbytes
    t_theirs = time.perf_counter() - t
    print(f"{len(ids)} tokens: ideal {ideal:.1f} B; vecarc {len(ours)} B in {t_ours * 1000:.1f} ms (encode and "
          f"check); constriction {theirs} B in {t_theirs * 1000:.1f} ms")


if __name__ == "__main__":
    main()
