"""Does a basis taken from the model beat the random ±1 basis at the same rank? (experiment)

    python -m benchmarks.basis_pca [--ranks 256,128] [--bases random,pca] [--chunks 6] [--tokens 32] [--set K=V]

The candidate: the top principal directions of the model's input embedding matrix, scaled
to the random basis's column norm (sqrt(hidden / rank)), so z keeps the same size. It costs
no training, and solved memory vectors live at the embeddings' scale (init 20x). Chunks come
from the middle of jargon.txt and python-tutorial.rst (the first 16 bytes per token from the
line start after 50 %: the tuning slices in benchmarks/slices/, up to 16 KiB), not from the
reported slices (offset 10 %). Every configuration crams the same chunks, batch 8; each
chunk counts as solved only when its float32 greedy decode gives it back with the margin.

This is an experiment, not the shipped path: it swaps the expansion function of
vecarc.format.basis for the run (an archive written this way would not decode), because a
learned basis needs a new format version before it can be stored.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.corpora import corpus_window
from vecarc import SearchSettings, load_model
from vecarc.format import basis
from vecarc.search import Job, cram

FILES = ("jargon.txt", "python-tutorial.rst")


def embedding_basis(lm, rank: int) -> torch.Tensor:
    """(hidden, rank) float64: top principal directions of the input embeddings, columns of norm sqrt(hidden / rank)."""
    e = lm.model.get_input_embeddings().weight.detach().to(torch.float64)
    centred = e - e.mean(0)
    _, vecs = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    top = vecs[:, -rank:].flip(1)
    return top * (e.shape[1] / rank) ** 0.5


def chunks_from(lm, n: int, tokens: int) -> list[list[int]]:
    out = []
    for f in FILES:
        text = corpus_window(f, 16 * n * tokens, 0.5)  # from the first line start after 50 %
        ids = lm.tokenizer(text.decode("utf-8", "ignore"), add_special_tokens=False)["input_ids"]
        out += [ids[i * tokens : (i + 1) * tokens] for i in range(n)]
    return out


def run(lm, chunks, s: SearchSettings) -> dict:
    t = time.perf_counter()
    res = cram(lm, [Job(c, i, i) for i, c in enumerate(chunks)], s)
    steps = [r.steps for _, r in res]
    return {"solved": sum(r.ok for _, r in res), "of": len(res), "steps_sum": sum(steps),
            "steps_median": statistics.median(steps), "seconds": round(time.perf_counter() - t)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", default="256,128")
    ap.add_argument("--bases", default="random,pca")
    ap.add_argument("--chunks", type=int, default=6, help="per file")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--set", nargs="*", default=[], help="SearchSettings fields, KEY=VALUE")
    args = ap.parse_args()
    lm = load_model(None, "cpu")
    chunks = chunks_from(lm, args.chunks, args.tokens)
    random_expand = basis.expand
    print(f"{len(chunks)} chunks of {args.tokens} tokens from {', '.join(FILES)} (offset 50 %)", flush=True)
    for rank in map(int, args.ranks.split(",")):
        s = SearchSettings(batch_size=8, rank=rank, max_steps=400, patience=400).with_overrides(args.set)
        learned = embedding_basis(lm, rank)

        def pca_expand(z, d, seed, w=learned):
            return (z.to(torch.float64) @ w.T.to(z.device)).to(torch.float32)

        for name, expand in (("random ±1", random_expand), ("embedding PCA", pca_expand)):
            if ("pca" if expand is pca_expand else "random") not in args.bases.split(","):
                continue
            basis.expand = expand
            try:
                r = run(lm, chunks, s)
            finally:
                basis.expand = random_expand
            print(f"rank {rank} {name}: {r}", flush=True)


if __name__ == "__main__":
    main()
