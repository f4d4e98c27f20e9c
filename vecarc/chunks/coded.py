"""Coded chunks: every token range-coded under the integer model's own next-token frequencies.

The integer model (vecarc.exact) computes the same frequencies on every machine, so
a chunk costs what the model's cross-entropy says, with no margin and no greedy
confirmation: pack is one teacher-forced pass over all chunks at once, unpack steps
token by token with a KV cache, and both see identical integers. A chunk is decoded
from the sink token alone, like a predicted one, or (pack --context N) after the N tokens
before it in its document: then a document's chunks decode one after another, in waves
across documents.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch

from ..config import PackConfig
from ..errors import VecarcError, VerificationError
from ..events import emit
from ..exact import fast
from ..exact.model import SPEC, IntegerModel, not_covered
from ..format import Archive, Chunk, encode_tokens, token_hash
from ..format.arith import Decoder, Encoder
from ..format.header import CODED_TOKENS_PER_BYTE
from ..forward import length_batches
from ..models import LoadedModel, cache_dir
from ..plan import Plan
from . import literal
from .record import ChunkRecord, Dims, Hooks, Item, Settled

OUTCOMES = ("coded", "tokens")
PACK_ROWS, PACK_CELLS = 8, 4096  # rows of a teacher-forced batch, and rows x tokens
# Rows decoded side by side, and rows x tokens: the tensor code's KV cache holds binary64 keys and value
# halves, ~290 KB a position for the default model (8,192 cells ~2.3 GB); the compiled loops' int32, ~46 KB.
DECODE_ROWS, DECODE_CELLS = 16, 8192


def integer_model(lm: LoadedModel, progress=None) -> IntegerModel:
    """The loaded model's integer evaluation, quantised once per process."""
    if "integer" not in lm._variants:
        why = not_covered(lm.model)
        if why:
            raise VecarcError(f"{lm.name}: the integer path does not cover this model ({why})")
        im = _cached(lm, progress)
        if im.device.type == "cpu":
            im.native = _loops(progress)
        lm._variants["integer"] = im
    return lm._variants["integer"]


def _loops(progress=None):
    """The compiled loops of the integer model (built once per machine, seconds); without them the
    tensor code computes the same integers, several times slower."""
    folder = cache_dir() / "native"
    path = fast.built_path(folder)
    if path is not None and not path.exists():
        emit(progress, event="note", message=f"compiling the integer model's loops (once: kept in {folder})")
    lib = fast.library(folder)
    if lib is None and folder in fast.FAILED:
        emit(progress, event="note", message=f"the integer model's loops did not compile ({fast.FAILED[folder]}): "
                                             "coded chunks take longer, with the same bytes")
    return lib


def _cached(lm: LoadedModel, progress=None) -> IntegerModel:
    """Quantising takes seconds; the result, a pure function of the fingerprinted weights, is kept in the
    cache under that fingerprint (a damaged or foreign file is quantised again and replaced)."""
    from safetensors.torch import load_file, save_file

    path = cache_dir() / "integer" / f"{lm.fingerprint.split(':')[-1][:32]}-spec{SPEC}.safetensors"
    try:
        return IntegerModel(lm.model, lm.device, load_file(str(path)))
    except Exception:  # noqa: BLE001 - any unreadable cache file is rebuilt
        pass
    emit(progress, event="note", message=f"quantising {lm.name} for the integer path (once: kept in {path.parent})")
    im = IntegerModel(lm.model, lm.device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_file(im.state(), str(tmp))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache costs time only
    return im


def prefix(lm: LoadedModel) -> list[int]:
    """What every coded chunk is decoded after: the sink, then any extra inputs vecarc.dictionary.attach
    gave the integer model (a dictionary's vectors, the archive's own), as the ids past its vocabulary."""
    extra = lm.extra_inputs
    vocab = int(lm._variants["integer"].embed.shape[0]) - extra if extra else 0
    return [lm.sink_id, *range(vocab, vocab + extra)]


def encode(symbols: torch.Tensor) -> bytes:
    """A chunk's stream from its (start, size, total) rows, read back before it is trusted."""
    enc = Encoder()
    rows = symbols.tolist()
    for start, size, total in rows:
        enc.encode(start, size, total)
    stream = enc.finish()
    if not reads_back(stream, rows):
        raise AssertionError("internal error: a coded stream does not read back")
    return stream


def reads_back(stream: bytes, rows: Sequence[Sequence[int]]) -> bool:
    """Whether a decoder given these (start, size, total) tables would take the stream's tokens to be the
    ones they were made for: the decode of a chunk, with its model steps replaced by known intervals."""
    dec = Decoder(stream)
    try:
        for start, size, total in rows:
            if not start <= dec.target(total) < start + size:
                return False
            dec.consume(start, size)
    except ValueError:
        return False
    return True


def intervals(im: IntegerModel, prefix: Sequence[int], rows: Sequence[list[int]]) -> torch.Tensor:
    """(B, T, 3): each token's (start, size, total) after the prefix (the sink, and a dictionary's vectors)
    and the tokens before it in its row, by one teacher-forced pass (rows padded to the longest; what
    follows a row's end is meaningless)."""
    n, p = max(len(t) for t in rows), len(prefix)
    targets = torch.tensor([[0] * (p - 1) + t + [0] * (n - len(t)) for t in rows])
    inputs = torch.cat([torch.tensor(prefix).expand(len(rows), p), targets[:, p - 1 : -1]], 1)
    return im.symbols(inputs, targets)[:, p - 1 :].cpu()


@torch.no_grad()
def confirm(lm: LoadedModel, archive: Archive, claimed: dict[int, Sequence[int]],
            known: dict[int, Sequence[int]]) -> None:
    """Coded chunks computed elsewhere (a Ray worker, a journal) checked without decoding them: one
    teacher-forced pass over the tokens each should hold gives the intervals every decoder computes,
    and its stream must read them back. VerificationError names the first that does not."""
    im, span = integer_model(lm), archive.header.cram.get("context_tokens", 0)
    before: dict[int, list[int]] = {}  # chunk -> the tokens before it in its document
    for mine in archive.header.chunks_by_document():
        seen: list[int] = []
        for i in mine:
            before[i] = seen[-span:] if span else []
            kind = archive.chunks[i].kind
            if kind in ("coded", "tokens"):
                seen += list(claimed[i] if i in claimed else known[i] if i in known else literal.tokens(archive, i))
    todo = sorted(claimed)
    rows = [before[i] + list(claimed[i]) for i in todo]
    for group in length_batches([len(r) for r in rows], PACK_ROWS, PACK_CELLS):
        symbols = intervals(im, prefix(lm), [rows[g] for g in group])
        for r, g in enumerate(group):
            i, at = todo[g], len(before[todo[g]])
            if not reads_back(archive.literals[i], symbols[r, at : len(rows[g])].tolist()):
                raise VerificationError(f"coded chunk {i}, computed by a worker or kept in the journal, does not "
                                        "decode to its tokens; nothing written")


@torch.no_grad()
def compute(lm: LoadedModel, cfg: PackConfig, items: Sequence[Item], on_record: Callable[[ChunkRecord], None],
            hooks: Hooks | None = None) -> None:
    """One teacher-forced pass of the integer model per batch of like-length chunks (each after its context,
    if any: items hold it before the chunk's own tokens); each chunk's stream (or a literal block, where that
    is smaller) handed over as it is coded."""
    hooks = hooks or Hooks()
    im, done = integer_model(lm, hooks.progress), 0
    for group in length_batches([len(t) for _, t in items], PACK_ROWS, PACK_CELLS):
        toks = [list(items[i][1]) for i in group]
        symbols = intervals(im, prefix(lm), toks)
        for r, i in enumerate(group):
            (_, a, b), t = items[i]
            at = len(t) - (b - a)  # the context before the chunk: read, not coded
            on_record(fate(items[i][0], toks[r][at:], encode(symbols[r, at : len(toks[r])])))
        if hooks.final is not None:
            hooks.final({"step": 0})
        done += len(group)
        emit(hooks.progress, event="predict", done=done, total=hooks.total or len(items), coded=True)


def fate(tag, tokens: Sequence[int], stream: bytes) -> ChunkRecord:
    """Coded, unless a literal block of the tokens would be smaller (text the model does not know), or the
    stream is so short that a reader would refuse to decode that many tokens from it (format.header)."""
    fits = len(tokens) <= CODED_TOKENS_PER_BYTE * (len(stream) + 1)
    if fits and len(stream) < len(encode_tokens(list(tokens))):
        return ChunkRecord(tag, "coded", stream=stream)
    return ChunkRecord(tag, "tokens")


def settle(rec: ChunkRecord, plan: Plan, dims: Dims, replayed: bool) -> Settled:
    d, a, b = rec.tag
    tokens = plan.tokens[d][a:b]
    return Settled(Chunk(d, "coded", b - a, token_hash(tokens)), stream=rec.stream, replayed=replayed)


# (chunk indices, streams, token counts, contexts, progress) -> tokens: a set of chunks decoded side by side
Runner = Callable[[list[int], list[bytes], list[int], list[list[int]], Callable | None], list[list[int]]]


def decode(lm: LoadedModel, archive: Archive, todo: Sequence[int], progress=None,
           run: Runner | None = None) -> dict[int, list[int]]:
    """The coded chunks `todo` by chunk index; `run(indices, streams, lengths, contexts)` decodes a set of
    chunks whose contexts are equally long (default: here, decode_streams).

    Where the archive's chunks read a context, the chunks of each document go in waves (the k-th chunk
    of every document at once), each after the tokens before it in its document; `todo` must then hold
    every coded chunk of the documents it touches."""
    chunks, span = archive.chunks, archive.header.cram.get("context_tokens", 0)
    run = run or (lambda idx, streams, lengths, contexts, on: decode_streams(lm, streams, lengths, idx, on, contexts))
    done, tokens = [0, 0], sum(chunks[i].tokens for i in todo)  # tokens and chunks of the calls before

    def call(idx: list[int], contexts: list[list[int]]) -> list[list[int]]:
        def on(e: dict) -> None:  # a call's progress, counted in the whole decode's
            at, total = (done[0], tokens) if e["event"] == "tokens" else (done[1], len(todo))
            progress({**e, "done": at + e["done"], "total": total} if e["event"] in ("tokens", "decode") else e)

        got = run(idx, [archive.literals[i] for i in idx], [chunks[i].tokens for i in idx], contexts,
                  on if progress is not None else None)
        done[0] += sum(chunks[i].tokens for i in idx)
        done[1] += len(idx)
        return got

    if not span:
        return dict(zip(todo, call(list(todo), [[] for _ in todo])))
    want = set(todo)
    docs = [mine for mine in archive.header.chunks_by_document() if want.intersection(mine)]
    if any(chunks[i].kind == "coded" and i not in want for mine in docs for i in mine):
        raise VecarcError("internal error: a document's coded chunks decode together when they read context")
    out: dict[int, list[int]] = {}
    before: list[list[int]] = [[] for _ in docs]  # each document's tokens so far
    for k in range(max(len(mine) for mine in docs)):
        waiting: dict[int, list[tuple[int, list[int]]]] = {}  # context length -> (chunk, context)
        for d, mine in enumerate(docs):
            if k < len(mine) and chunks[mine[k]].kind == "coded":
                context = before[d][-span:]
                waiting.setdefault(len(context), []).append((mine[k], context))
        for pairs in waiting.values():
            idx = [i for i, _ in pairs]
            out.update(zip(idx, call(idx, [c for _, c in pairs])))
        for d, mine in enumerate(docs):
            if k < len(mine):
                i = mine[k]
                before[d] += out[i] if chunks[i].kind == "coded" else literal.tokens(archive, i)
    return out


@torch.no_grad()
def decode_streams(lm: LoadedModel, streams: Sequence[bytes], lengths: Sequence[int], names: Sequence[int],
                   progress=None, contexts: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Coded streams back to their tokens, side by side in batches, a step per token, each after the sink and
    its context (all contexts equally long); a stream that names no token is refused as corrupt (named by
    its chunk index in `names`)."""
    im, out = integer_model(lm, progress), [None] * len(streams)
    contexts = contexts or [[] for _ in streams]
    total, done = sum(lengths), 0
    for group in length_batches(list(lengths), DECODE_ROWS, DECODE_CELLS):
        sizes = [lengths[g] for g in group]
        decoders = [Decoder(streams[g]) for g in group]
        got: list[list[int]] = [[] for _ in group]
        caches = [[] for _ in im.layers]
        nxt, at = torch.tensor([[*prefix(lm), *contexts[g]] for g in group]), 0
        with ExitStack() as steps:  # after the first step (the sink and the context), steps of one token
            for step in range(max(sizes)):
                if step == 1:
                    steps.enter_context(fast.stepping(im, len(group)))
                freqs = im.forward(nxt, caches, start=at, last=True)[:, 0]
                at += nxt.shape[1]
                cum = freqs.cumsum(1)
                live = [r for r, n in enumerate(sizes) if step < n]
                values = torch.zeros(len(group), 1, dtype=torch.int64)
                for r in live:
                    values[r, 0] = _target(decoders[r], int(cum[r, -1]), names[group[r]])
                tok = torch.searchsorted(cum, values.to(cum.device), right=True)
                ends = cum.gather(1, tok)
                sizes_now = freqs.gather(1, tok)
                for r in live:
                    decoders[r].consume(int(ends[r, 0] - sizes_now[r, 0]), int(sizes_now[r, 0]))
                    got[r].append(int(tok[r, 0]))
                nxt = tok.cpu()
                if progress is not None and step % 16 == 15:
                    progress({"event": "tokens", "done": done + sum(min(n, step + 1) for n in sizes), "total": total})
        done += sum(sizes)
        for r, g in enumerate(group):
            out[g] = got[r]
        if progress is not None:
            progress({"event": "tokens", "done": done, "total": total})
            progress({"event": "decode", "done": sum(x is not None for x in out), "total": len(streams)})
    return out


def _target(dec: Decoder, total: int, chunk: int) -> int:
    try:
        return dec.target(total)
    except ValueError:
        raise VecarcError(f"corrupt archive: coded chunk {chunk} names no token") from None


def finish(kept: dict) -> None:
    """Nothing to settle across chunks: each coded chunk's own cap (fate) bounds what a reader decodes."""
