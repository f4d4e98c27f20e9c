"""Where to cut a document's token stream into chunks.

A vector holds a limited amount of information — the cross-entropy it must
remove — not a fixed number of tokens. The capacity plan therefore cuts a chunk
where the text's cross-entropy under the model (given only the sink token, as
the chunk will be read) reaches the budget that calibration measured. The
fixed plan (equal spans of N tokens) remains for `--chunk-tokens`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .entropy import token_nll
from .events import Progress, emit
from .format import Document, check_name
from .format.compact import spans
from .models import LoadedModel
from .text import tokenize_exact

# The fixed plan's tokens per memory vector: 32 converged reliably on the default model
# at the default settings, 64 mostly did not. The capacity plan needs no such number.
CHUNK_TOKENS = 32
MIN_CHUNK_TOKENS = 4  # below this, a chunk that fails is cheaper stored as a literal


def chunk_tokens_for(vectors: int = 1) -> int:
    return CHUNK_TOKENS * vectors


def plan_chunks(n_tokens: int, max_tokens: int) -> list[tuple[int, int]]:
    """Cut [0, n_tokens) into near-equal spans of at most max_tokens.

    Equal spans avoid a short tail chunk that would cost a whole vector.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    out, start = [], 0
    for n in spans(n_tokens, max_tokens):  # the rule format 5 derives chunks by
        out.append((start, start + n))
        start += n
    return out


def split_span(start: int, end: int) -> list[tuple[int, int]]:
    mid = (start + end) // 2
    return [(start, mid), (mid, end)]


@dataclass
class Budget:
    """How much a chunk may hold: the calibrated information budget times a safety factor."""

    nats: float  # information gain a vector reliably delivers (from the profile)
    max_tokens: int  # never plan longer chunks than this (context limit, or well past anything calibrated)
    fill: float = 0.9  # plan chunks to this fraction of the budget
    min_tokens: int = MIN_CHUNK_TOKENS

    @property
    def target(self) -> float:
        return self.nats * self.fill


def cut_by_budget(nats: Sequence[float], budget: Budget) -> int:
    """Length of the longest prefix whose summed nats stay within the budget (at least min_tokens)."""
    total, n = 0.0, 0
    for x in nats[: budget.max_tokens]:
        if total + x > budget.target and n >= budget.min_tokens:
            break
        total += x
        n += 1
    return n


def plan_by_budget(
    docs: Sequence[Sequence[int]],
    budget: Budget,
    chunk_nats: Callable[[list[list[int]]], list[list[float]]],
) -> tuple[list[list[tuple[int, int]]], list[list[float]]]:
    """Cut every document into chunks of about `budget.target` nats.

    chunk_nats(windows) gives per-token nats of each window read from its own
    start, the way a chunk is decoded. Each round measures one window per
    unfinished document (batched across documents) and cuts one chunk from it,
    so cross-entropy is always measured in the context the chunk will have —
    in-document context would underrate a chunk's first tokens.
    Returns spans per document and, per document, every token's nats as measured
    in its chunk (so any sub-span's planned nats is a slice sum).
    """
    spans: list[list[tuple[int, int]]] = [[] for _ in docs]
    token_nats: list[list[float]] = [[] for _ in docs]
    cursor = [0] * len(docs)
    while True:
        active = [i for i, ids in enumerate(docs) if cursor[i] < len(ids)]
        if not active:
            break
        windows = [list(docs[i][cursor[i] : cursor[i] + budget.max_tokens]) for i in active]
        for i, nats in zip(active, chunk_nats(windows)):
            n = cut_by_budget(nats, budget)
            rest = len(docs[i]) - cursor[i] - n
            if 0 < rest < budget.min_tokens and n + rest <= len(nats):  # no tail too short for a vector
                n += rest
            spans[i].append((cursor[i], cursor[i] + n))
            token_nats[i] += nats[:n]
            cursor[i] += n
    return spans, token_nats


@dataclass
class Plan:
    """Documents as the header records them, their tokens, and the chunks to compute."""

    documents: list[Document] = field(default_factory=list)
    tokens: dict[int, Sequence[int]] = field(default_factory=dict)  # document -> token ids (text documents)
    literal: dict[int, bytes] = field(default_factory=dict)  # document -> bytes (no tokenizer round trip)
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (document, start, end) in token offsets
    nats: dict[int, list[float]] = field(default_factory=dict)  # document -> per-token nats (capacity plan)


def plan_documents(docs: Sequence[tuple[str, bytes]], lm: LoadedModel, size: int, budget: Budget | None,
                   progress: Progress | None = None) -> Plan:
    """Tokenize each document once and cut it: by the budget (capacity plan), else in equal spans of `size`."""
    plan = Plan()
    for d, (name, data) in enumerate(docs):
        check_name(name)
        ids = tokenize_exact(lm, data)
        plan.documents.append(Document(name, len(data), hashlib.sha256(data).hexdigest(),
                                       "text" if ids is not None else "bytes"))
        if ids is None:
            plan.literal[d] = data
            continue
        plan.tokens[d] = ids
        if budget is None:
            plan.spans += [(d, a, b) for a, b in plan_chunks(len(ids), size)]
    if budget is not None:
        order = sorted(plan.tokens)
        emit(progress, event="measure", documents=len(order))
        cuts, measured = plan_by_budget([plan.tokens[d] for d in order], budget, lambda w: token_nll(lm, w))
        for d, doc_spans, doc_nats in zip(order, cuts, measured):
            plan.spans += [(d, a, b) for a, b in doc_spans]
            plan.nats[d] = doc_nats
    return plan
