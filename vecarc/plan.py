"""Where to cut a document's token stream into chunks.

One vector holds a limited amount of information, so chunks are sized per
model. This fixed table is the simple plan; a capacity-measuring plan can
replace `plan_chunks` without touching the rest of the pipeline.
"""

from __future__ import annotations

from .models import DEFAULT_NAME

# Tokens per memory vector that converged reliably at the default settings
# (32 tokens: ~150 steps on SmolLM2-135M; 64 tokens mostly did not converge in 600).
CHUNK_TOKENS = {DEFAULT_NAME: 32}
FALLBACK_CHUNK_TOKENS = 32
MIN_CHUNK_TOKENS = 4  # below this, a chunk that fails is cheaper stored as a literal


def chunk_tokens_for(model_name: str, vectors: int = 1) -> int:
    return CHUNK_TOKENS.get(model_name, FALLBACK_CHUNK_TOKENS) * vectors


def plan_chunks(n_tokens: int, max_tokens: int) -> list[tuple[int, int]]:
    """Cut [0, n_tokens) into near-equal spans of at most max_tokens.

    Equal spans avoid a short tail chunk that would cost a whole vector.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    if n_tokens == 0:
        return []
    count = -(-n_tokens // max_tokens)
    base, extra = divmod(n_tokens, count)
    spans, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        spans.append((start, end))
        start = end
    return spans


def split_span(start: int, end: int) -> list[tuple[int, int]]:
    mid = (start + end) // 2
    return [(start, mid), (mid, end)]
