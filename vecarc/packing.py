"""Packing: plan chunks, cram them, settle each chunk's fate, assemble, check, write.

Packing never writes an archive whose every chunk has not been decoded by the
same greedy decoder that unpack uses, whatever path the chunk came by (this run's
search, or a journal left by an interrupted one).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import torch
import zstandard

from . import __version__
from .capacity import DEFAULT_FILL, budget_for, calibrate, load_entry, profile_key, save_entry
from .engine import RayEngine
from .entropy import token_nll
from .errors import VecarcError, VerificationError
from .format import (
    MAX_LITERAL_TOKENS,
    Archive,
    Chunk,
    DecodeRecord,
    Document,
    Header,
    ModelRecord,
    VectorsRecord,
    check_name,
    check_names,
    encode_tokens,
    greedy_cap,
    parse_archive,
    serialize,
    token_hash,
    write_atomic,
)
from .format import corrections as fixcodec
from .format.corrections import Fix
from .format.index import Index
from .journal import Journal, identity
from .models import LoadedModel, resolve_model
from .plan import MIN_CHUNK_TOKENS, Budget, chunk_tokens_for, plan_by_budget, plan_chunks, split_span
from .predict import PREDICT_TOKENS, predict
from .search import CramResult, CramSettings, Job, Progress, Trace, chunk_key, cram, emit, wants_compile
from .text import tokenize_exact
from .unpacking import decode_archive, required_margin
from .volumes import DEFAULT_VOLUME_SIZE


@dataclass
class PackResult:
    output: Path | None
    archive: Archive | None  # as a reader sees it; None for a pack cut into volumes (see index)
    archive_bytes: int
    seconds: float
    retries: int = 0
    steps: list[int] = field(default_factory=list)  # optimisation steps per vector chunk, in settling order
    data: bytes = b""  # the checked file bytes
    index: Index | None = None  # a pack cut into volumes: the index written at output


# ---------------------------------------------------------------- inputs


def document_name(path: str | Path) -> str:
    """Keep a clean relative path as given; otherwise fall back to the file name."""
    p = PurePosixPath(Path(path).as_posix())
    if not p.is_absolute() and all(part not in ("..", ".") for part in p.parts) and p.parts:
        return str(p)
    return Path(path).name


def check_input(path: str | Path) -> Path:
    """An input must be an existing regular file; say which it is not."""
    p = Path(path)
    if not p.exists():
        raise VecarcError(f"no such file: {p}")
    if not p.is_file():
        raise VecarcError(f"not a regular file: {p}")
    return p


def named_inputs(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(path, stored name) per input; names that an archive could not hold are refused before any work."""
    checked = [check_input(path) for path in paths]
    names = [document_name(p) for p in checked]
    if len(set(names)) != len(names):
        name = next(n for i, n in enumerate(names) if n in names[:i])
        raise VecarcError(f"two inputs would be stored under the same name {name!r}")
    try:
        check_names(names)
    except VecarcError as e:
        raise VecarcError(f"cannot store these inputs: {str(e).removeprefix('corrupt archive: ')}") from None
    return list(zip(checked, names))


def read_inputs(paths: Sequence[str | Path]) -> list[tuple[str, bytes]]:
    """(name, bytes) per input, checked as named_inputs checks them."""
    docs: list[tuple[str, bytes]] = []
    for p, name in named_inputs(paths):
        try:
            docs.append((name, p.read_bytes()))
        except OSError as e:
            raise VecarcError(f"cannot read {p}: {e.strerror}") from None
    return docs


def software_versions() -> dict:
    import tokenizers
    import transformers

    return {
        "vecarc": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    """Documents as the header records them, their tokens, and the chunks to cram."""

    documents: list[Document]
    tokens: dict[int, Sequence[int]]  # document -> token ids (text documents)
    literal: dict[int, bytes]  # document -> bytes (documents that do not round-trip through the tokenizer)
    spans: list[tuple[int, int, int]]  # (document, start, end) in token offsets
    nats: dict[int, list[float]]  # document -> per-token nats as planned (capacity plan only)


def plan_documents(docs: Sequence[tuple[str, bytes]], lm: LoadedModel, size: int, budget: Budget | None,
                   progress: Progress | None) -> Plan:
    """Tokenize each document once and cut it: by the budget (capacity plan), else in equal spans of `size`."""
    plan = Plan([], {}, {}, [], {})
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


# ---------------------------------------------------------------- the ledger


def vector_fate(j: Job, r: CramResult, min_chunk_tokens: int) -> tuple[str, dict | None]:
    """Keep a chunk the search verified (its greedy decode gave its tokens back, with the
    margin) as a vector; split one that failed while its halves are long enough, else keep
    its tokens. (outcome, the journal's info)."""
    if r.ok:
        # Informational, and rounded: each digit costs header bytes in every archive.
        info = {"margin": round(r.decode_margin, 2), "steps": r.steps}
        if r.search_steps != r.steps:
            info["search_steps"] = r.search_steps
        return "vector", info
    _, a, b = j.tag
    return ("split" if b - a >= 2 * min_chunk_tokens else "tokens"), None


def predicted_fate(tokens: Sequence[int], fixes: list[Fix] | None) -> tuple[str, dict | None]:
    """Keep a predicted chunk unless it did not settle, or its corrections would cost more
    than its tokens as a literal block (text the model does not know: code, tables, noise)."""
    if fixes is not None and len(fixcodec.encode([fixes])) < len(encode_tokens(list(tokens))):
        return "predicted", {"corrections": fixes}
    return "tokens", None


@dataclass
class Settled:
    """A chunk kept as a vector or as literal tokens. record is its header entry."""

    record: Chunk
    vectors: torch.Tensor | None = None
    coords: torch.Tensor | None = None
    fixes: list[Fix] | None = None  # predicted chunks
    replayed: bool = False  # restored from the journal: decoded again before anything is written


class Ledger:
    """Every chunk's fate as it is settled, by (document, start); the archive is assembled from it."""

    def __init__(self, plan: Plan, min_chunk_tokens: int, journal: Journal | None):
        self.plan, self.min_chunk_tokens, self.journal = plan, min_chunk_tokens, journal
        self.kept: dict[tuple[int, int], Settled] = {}
        self.retries = 0
        self.steps: list[int] = []

    def job(self, d: int, a: int, b: int) -> Job:
        return Job(self.plan.tokens[d][a:b], chunk_key(d, a, b), (d, a, b))

    def settle(self, tag: tuple[int, int, int], outcome: str, vec: torch.Tensor | None = None,
               info: dict | None = None, z: torch.Tensor | None = None, replayed: bool = False) -> None:
        """Record one chunk's fate (vector, literal tokens or split) here, and in the journal unless it came from it."""
        d, a, b = tag
        if outcome == "vector":
            rec = Chunk(d, "vector", b - a, token_hash(self.plan.tokens[d][a:b]), **info)
            if d in self.plan.nats:
                rec.planned_nats = round(sum(self.plan.nats[d][a:b]), 1)
            self.kept[(d, a)] = Settled(rec, vec, z, replayed=replayed)
            self.steps.append(info["steps"])
        elif outcome == "predicted":
            fixes = [tuple(f) for f in info["corrections"]]
            rec = Chunk(d, "predicted", b - a, token_hash(self.plan.tokens[d][a:b]), corrections=len(fixes))
            self.kept[(d, a)] = Settled(rec, fixes=fixes, replayed=replayed)
        elif outcome == "tokens":
            self.kept[(d, a)] = Settled(Chunk(d, "tokens", b - a))
        else:
            self.retries += 1
        if self.journal is not None and not replayed:
            ten = {"v": vec, **({"z": z} if z is not None else {})} if vec is not None else None
            self.journal.add_result({"tag": [d, a, b], "outcome": outcome, "info": info}, ten)

    def judge(self, j: Job, r: CramResult) -> list[Job]:
        """Settle a crammed chunk by vector_fate; returns the follow-up jobs (its halves, when split)."""
        outcome, info = vector_fate(j, r, self.min_chunk_tokens)
        self.settle(j.tag, outcome, r.vectors if outcome == "vector" else None, info,
                    z=r.coords if outcome == "vector" else None)
        d, a, b = j.tag
        return [self.job(d, x, y) for x, y in split_span(a, b)] if outcome == "split" else []

    def judge_predicted(self, tag: tuple[int, int, int], fixes: list[Fix] | None) -> None:
        d, a, b = tag
        outcome, info = predicted_fate(self.plan.tokens[d][a:b], fixes)
        self.settle(tag, outcome, info=info)

    def take(self, records: Sequence[tuple[dict, dict]]) -> None:
        """Settle records computed elsewhere (a worker's, in the journal's form) and journal them."""
        for meta, ten in records:
            self.settle(tuple(meta["tag"]), meta["outcome"], ten.get("v"), meta["info"], ten.get("z"))

    def todo(self) -> list[tuple[int, int, int]]:
        """The planned spans settled chunks do not cover yet (all of them, before a resume)."""
        return [x for x in self.plan.spans if not self.covers(*x)]

    def covers(self, d: int, a: int, b: int) -> bool:
        """Whether settled chunks (the span's own, or its halves') cover tokens a..b of document d."""
        while a < b:
            s = self.kept.get((d, a))
            if s is None:
                return False
            a += s.record.tokens
        return True

    def replay(self, results: Sequence[tuple[dict, dict]]) -> None:
        for meta, ten in results:
            self.settle(tuple(meta["tag"]), meta["outcome"], ten.get("v"), meta["info"], ten.get("z"), replayed=True)


# ---------------------------------------------------------------- assembly


@dataclass
class Assembly:
    """The archive's chunk list and sections, in document order."""

    chunks: list[Chunk] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)
    coords: list[torch.Tensor] = field(default_factory=list)
    literals: dict[int, bytes] = field(default_factory=dict)  # chunk index -> zstd frame
    fixes: dict[int, list[Fix]] = field(default_factory=dict)  # predicted chunk index -> its corrections
    decoded: dict[int, list[int]] = field(default_factory=dict)  # chunk index -> tokens this run's checks decoded

    def add_vector(self, s: Settled, toks: Sequence[int]) -> None:
        s.record.row = len(self.rows)
        self.rows.append(s.vectors)
        if s.coords is not None:
            self.coords.append(s.coords)
        if not s.replayed:
            self.decoded[len(self.chunks)] = toks
        self.chunks.append(s.record)

    def add_predicted(self, s: Settled, toks: Sequence[int]) -> None:
        if s.fixes:
            self.fixes[len(self.chunks)] = s.fixes
        if not s.replayed:
            self.decoded[len(self.chunks)] = toks  # the plan's slice (4 bytes a token), not a list
        self.chunks.append(s.record)

    def add_literal(self, d: int, toks: Sequence[int]) -> None:
        self.literals[len(self.chunks)] = encode_tokens(toks)
        self.chunks.append(Chunk(d, "tokens", len(toks), token_hash(toks)))

    def add_bytes(self, d: int, data: bytes) -> None:
        self.literals[len(self.chunks)] = zstandard.ZstdCompressor(level=19).compress(data)
        self.chunks.append(Chunk(d, "bytes", size=len(data)))


def assemble(plan: Plan, ledger: Ledger) -> Assembly:
    """Chunks in document order; neighbouring literal chunks become one block (one zstd frame
    compresses far better than many)."""
    out = Assembly()
    by_doc: dict[int, list[int]] = {}
    for d, a in sorted(ledger.kept):
        by_doc.setdefault(d, []).append(a)
    for d in range(len(plan.documents)):
        if d in plan.literal:
            out.add_bytes(d, plan.literal[d])
            continue
        ids, run = plan.tokens[d], None  # run: (start, end) of literal tokens not yet written
        for a in by_doc.get(d, []):
            s = ledger.kept[(d, a)]
            b = a + s.record.tokens
            if s.record.kind == "tokens" and run is not None and b - run[0] <= MAX_LITERAL_TOKENS:
                run = (run[0], b)
                continue
            if run is not None:
                out.add_literal(d, ids[run[0] : run[1]])
                run = None
            if s.record.kind == "tokens":
                run = (a, b)
            elif s.record.kind == "predicted":
                out.add_predicted(s, ids[a:b])
            else:
                out.add_vector(s, ids[a:b])
        if run is not None:
            out.add_literal(d, ids[run[0] : run[1]])
    return out


def build_header(lm: LoadedModel, s: CramSettings, plan: Plan, ledger: Ledger, body: Assembly, size: int,
                 budget: Budget | None) -> Header:
    method = ({"method": "capacity", "budget_nats": round(budget.nats, 3), "fill": budget.fill,
               "max_tokens": budget.max_tokens} if budget else {"method": "fixed", "chunk_tokens": size})
    model = lm.describe()
    # A predicted archive records what decides its chunks; the vector search's settings would be noise.
    cram = ({"mode": s.mode, "margin": s.margin, "chunk_tokens": size} if s.mode == "predict" else
            {**s.record(), "chunk_tokens": size, "min_chunk_tokens": ledger.min_chunk_tokens})
    return Header(
        software=software_versions(),
        model=ModelRecord.from_json(model),
        vectors=VectorsRecord(s.vectors, s.vector_dtype, lm.hidden_size, len(body.rows), s.rank,
                              s.basis_seed if s.rank else None),
        cram=cram,
        plan=method | {"chunks_planned": len(plan.spans), "retries": ledger.retries},
        decode=DecodeRecord("greedy-kv", model["dtype"], s.margin),
        documents=plan.documents,
        chunks=body.chunks,
    )


# ---------------------------------------------------------------- packing


def pack_documents(
    docs: Sequence[tuple[str, bytes]],
    lm: LoadedModel,
    settings: CramSettings | None = None,
    chunk_tokens: int | None = None,
    min_chunk_tokens: int = MIN_CHUNK_TOKENS,
    progress: Progress | None = None,
    budget: Budget | None = None,
    journal: Journal | None = None,
    checkpoint_every: float = 60.0,
    trace: Trace | None = None,
    engine: RayEngine | None = None,
) -> PackResult:
    """Build a verified archive in memory (output None: nothing is written).

    Chunks are cut by `budget` (the capacity plan) unless `chunk_tokens` is given
    or there is no budget, in which case they are equal spans of chunk_tokens.
    With a journal, finished chunks and snapshots of the optimiser are recorded
    as they happen, and a journal left by an interrupted run is continued. An
    engine (Ray) computes the chunks elsewhere; they are checked the same way.
    """
    t0 = time.perf_counter()
    s = (settings or CramSettings()).resolved(lm.hidden_size, lm.fast_bf16())  # checks --rank before planning
    predicted = s.mode == "predict"
    k = 0 if predicted else s.vectors
    size = min(chunk_tokens or (PREDICT_TOKENS if predicted else chunk_tokens_for(k)), lm.chunk_limit(k))
    if size < 1:
        raise VecarcError("chunk size must be at least one token")
    budget = None if chunk_tokens is not None or predicted else budget
    plan = plan_documents(docs, lm, size, budget, progress)
    # Recorded as decided (on / off), in the header and the journal's identity.
    s = replace(s, compile="on" if not predicted and wants_compile(s, lm.device, len(plan.spans)) else "off")
    ledger = Ledger(plan, min_chunk_tokens, journal)
    state = None
    if journal is not None:
        journal.start(identity(
            vecarc=__version__, documents=[(x.name, x.sha256) for x in plan.documents],
            model=lm.fingerprint, settings=s.record(), chunk_tokens=size, min_chunk_tokens=min_chunk_tokens,
            budget=vars(budget) if budget else None, spans=plan.spans))
        ledger.replay(journal.results)
        if (state := journal.state) is not None:
            emit(progress, event="resume", done=len(ledger.kept), step=state["step"])
    emit(progress, event="plan", chunks=len(plan.spans))
    if engine is not None:
        _on_engine(engine, lm, s, ledger, progress)
    elif predicted:
        _predict_all(lm, s, ledger, progress)
    else:
        spans = plan.spans
        if state is not None and "slots" not in state:  # marks of shards (another engine), not a snapshot
            state, spans = None, ledger.todo()
        jobs = (ledger.job(*x) for x in spans)  # drawn lazily: a long input is not copied chunk by chunk
        cram(lm, jobs, s, progress, on_result=ledger.judge, resume=state, rebuild=lambda t: ledger.job(*t),
             total=len(spans), snapshot=journal.add_state if journal is not None else None,
             snapshot_every=checkpoint_every, trace=trace)
    body = assemble(plan, ledger)
    archive = Archive(header=build_header(lm, s, plan, ledger, body, size, budget), literals=body.literals,
                      fixes=body.fixes, stored=torch.stack(body.coords if s.rank else body.rows) if body.rows else None)
    if body.rows:
        archive.vectors = torch.stack(body.rows)  # as the search verified them: checked against the reread
    data, back = checked_bytes(archive, lm, body.decoded)
    return PackResult(None, back, len(data), time.perf_counter() - t0, ledger.retries, ledger.steps, data)


def _predict_all(lm: LoadedModel, s: CramSettings, ledger: Ledger, progress: Progress | None) -> None:
    """Predict every chunk the ledger does not hold yet; each batch is final once journaled
    (a journal keeps the results up to its last snapshot, and these need no optimiser state)."""
    plan, journal = ledger.plan, ledger.journal
    todo = [((d, a, b), plan.tokens[d][a:b]) for d, a, b in ledger.todo()]
    mark = (lambda: journal.add_state({"step": 0})) if journal is not None else None
    predict(lm, todo, s.margin, ledger.judge_predicted, progress, total=len(plan.spans), on_batch=mark)
    keep_within_cap(ledger)


def _on_engine(engine: RayEngine, lm: LoadedModel, s: CramSettings, ledger: Ledger,
               progress: Progress | None) -> None:
    """Hand the chunks the ledger does not cover to the engine; each shard that comes back is
    journaled and then marked final (a resume keeps the records up to the last mark)."""
    plan, journal = ledger.plan, ledger.journal
    items = [((d, a, b), plan.tokens[d][a:b]) for d, a, b in ledger.todo()]

    def on_shard(records) -> None:
        ledger.take(records)
        if journal is not None:
            journal.add_state({"step": 0, "shard": True})

    engine.run(lm, s, items, ledger.min_chunk_tokens, on_shard, progress)
    if s.mode == "predict":
        keep_within_cap(ledger)


def keep_within_cap(ledger: Ledger) -> None:
    """Make literal blocks of the most predictable predicted chunks while the archive would ask a
    reader to decode more tokens than its corrections' bytes allow (format.greedy_cap): a text the
    model knows almost by heart (zstd packs those well too)."""
    pred = sorted((k for k, v in ledger.kept.items() if v.record.kind == "predicted"),
                  key=lambda k: (ledger.kept[k].record.corrections / ledger.kept[k].record.tokens, k))
    while pred:
        fixes = [ledger.kept[k].fixes for k in sorted(pred) if ledger.kept[k].fixes]
        stored = len(fixcodec.encode(fixes)) if fixes else 0
        over = sum(ledger.kept[k].record.tokens for k in pred) - greedy_cap(stored)
        if over <= 0:
            return
        while over > 0 and pred:  # the estimate ignores the bytes each demotion takes away; the loop re-measures
            k = pred.pop(0)
            over -= ledger.kept[k].record.tokens
            ledger.kept[k] = Settled(Chunk(k[0], "tokens", ledger.kept[k].record.tokens))


def checked_bytes(archive: Archive, lm: LoadedModel, decoded: dict[int, list[int]]) -> tuple[bytes, Archive]:
    """Serialize, read back, and check that what will be written is what was verified.

    decoded: the tokens this process's greedy checks gave for some vector chunks; every
    other vector chunk (one restored from a journal, say) is decoded here, at the margin.
    Returns the file bytes and the archive as a reader will see it.
    """
    data = serialize(archive)
    back = parse_archive(data)
    if (archive.vectors is None) != (back.vectors is None) or (
        archive.vectors is not None and not torch.equal(archive.vectors, back.vectors)
    ):
        raise VerificationError("internal error: vectors changed on serialization; nothing written")
    result = decode_archive(back, lm, known=decoded)
    if not result.ok:
        raise VerificationError(result.problems[0] + "; nothing written")
    need = required_margin(back)
    low = sorted(i for i, m in result.margins.items() if m < need)
    if low:
        raise VerificationError(f"chunk {low[0]} decodes with a margin of {result.margins[low[0]]:.4f}, "
                                f"below the required {need:g}; nothing written")
    return data, back


def pack(
    inputs: Sequence[str | Path],
    output: str | Path | None = None,
    *,
    model: str | LoadedModel | None = None,
    device: str = "auto",
    settings: CramSettings | None = None,
    chunk_tokens: int | None = None,
    min_chunk_tokens: int = MIN_CHUNK_TOKENS,
    force: bool = False,
    progress: Progress | None = None,
    fill: float = DEFAULT_FILL,
    warn: Callable[[str], None] | None = None,
    resume: bool = False,
    checkpoint_every: float = 60.0,
    trace: Trace | None = None,
    engine: RayEngine | None = None,
    volume_size: int = DEFAULT_VOLUME_SIZE,
) -> PackResult:
    """Pack files into one .vec archive; output defaults to FIRST_INPUT.vec.

    Chunks follow the model's measured capacity (its stored profile; calibrated
    first, and stored, when there is none) unless chunk_tokens fixes their size.
    Work in progress is kept in OUTPUT.journal; resume=True continues it after
    an interruption, and the journal is removed once the archive is written.
    Inputs of more than volume_size bytes (0: no limit) become volumes OUTPUT.0001,
    OUTPUT.0002, ... and an index at OUTPUT (vecarc.volumes), so that memory follows
    the volume, not the corpus.
    """
    output = output_for(inputs, output)
    if output.exists() and not force:
        raise VecarcError(f"{output} exists (use -f to overwrite)")
    if any(Path(i).resolve() == output.resolve() for i in inputs):
        raise VecarcError(f"output {output} is also an input")
    named = named_inputs(inputs)
    sizes = [p.stat().st_size for p, _ in named]
    if volume_size and sum(sizes) > volume_size:
        return _pack_volumes([(p, n, z) for (p, n), z in zip(named, sizes)], output, volume_size, model, device,
                             settings, fill, progress, warn, resume, force,
                             dict(chunk_tokens=chunk_tokens, min_chunk_tokens=min_chunk_tokens, progress=progress,
                                  checkpoint_every=checkpoint_every, trace=trace, engine=engine))
    docs = read_inputs(inputs)
    journal = Journal.open(output, resume, force)
    if resume and not journal.existed and warn:
        warn(f"no journal {journal.path}; starting from the beginning")
    t0 = time.perf_counter()
    try:
        lm, s, budget = _prepare(model, device, settings, chunk_tokens, fill, progress, warn, engine)
        r = _pack_journaled(docs, lm, s, budget, journal, chunk_tokens=chunk_tokens, min_chunk_tokens=min_chunk_tokens,
                            progress=progress, checkpoint_every=checkpoint_every, trace=trace, engine=engine)
        write_atomic(output, r.data, force=force)
        journal.remove()
    finally:
        journal.close()
    return replace(r, output=output, seconds=time.perf_counter() - t0)


def _prepare(model, device, settings, chunk_tokens, fill, progress, warn, engine):
    """The model, the resolved settings, and the capacity budget (vectors mode with a plan) of a pack."""
    lm = resolve_model(model, device)
    s = (settings or CramSettings()).resolved(lm.hidden_size, lm.fast_bf16())  # checks --rank before calibrating
    plain = chunk_tokens is not None or s.mode == "predict"
    return lm, s, None if plain else capacity_budget(lm, s, fill, progress, warn, engine)


def _pack_journaled(docs, lm, s, budget, journal: Journal, **kw) -> PackResult:
    try:
        return pack_documents(docs, lm, s, budget=budget, journal=journal, **kw)
    except VerificationError as e:
        if not journal.results:
            raise
        raise VerificationError(f"{e}: the journal {journal.path} holds work that does not decode "
                                f"(damaged, or another pack's); pack again with -f to start over") from None


def _pack_volumes(inputs, output: Path, volume_size: int, model, device, settings, fill, progress, warn, resume,
                  force, kw: dict) -> PackResult:
    """Volumes of about volume_size input bytes, each packed and checked like one archive, and an index."""
    from .volumes import pack_volumes

    t0 = time.perf_counter()
    lm, s, budget = _prepare(model, device, settings, kw["chunk_tokens"], fill, progress, warn, kw["engine"])
    stats = {"retries": 0, "steps": []}

    def one(docs, journal: Journal) -> bytes:
        r = _pack_journaled(docs, lm, s, budget, journal, **kw)
        stats["retries"] += r.retries
        stats["steps"] += r.steps
        return r.data

    index = pack_volumes(inputs, output, volume_size, one, resume=resume, force=force, progress=progress)
    total = output.stat().st_size + sum(v.size for v in index.volumes)
    return PackResult(output, None, total, time.perf_counter() - t0, stats["retries"], stats["steps"], index=index)


def output_for(inputs: Sequence[str | Path], output: str | Path | None = None) -> Path:
    """The archive path pack writes: the one given, else FIRST_INPUT.vec for a single input."""
    if not inputs:
        raise VecarcError("nothing to pack")
    if output is None:
        if len(inputs) > 1:
            raise VecarcError("several inputs need -o/--output")
        output = Path(str(inputs[0]) + ".vec")
    return Path(output)


def capacity_budget(
    lm: LoadedModel,
    s: CramSettings,
    fill: float = DEFAULT_FILL,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
    engine: RayEngine | None = None,
) -> Budget | None:
    """The planning budget from this model's profile; calibrates (and stores) when there is none.

    A model that cannot hold even the shortest calibration sample stops the pack with what to do
    instead: packing on would spend every step and store everything as literals.
    """
    rep = profile_key(s)
    found = load_entry(lm, rep, warn)
    if found is None:
        if warn:
            warn(f"no capacity profile for {lm.name} ({rep}); calibrating first (vecarc calibrate)")
        try:
            entry = calibrate(lm, s, progress=progress, engine=engine)
        except VecarcError as e:
            raise VecarcError(f"{e}, so {lm.name} cannot be planned at these settings: pack with --chunk-tokens N "
                              f"(chunks that fail are kept losslessly), or calibrate on your own text first "
                              f"(vecarc calibrate --model ... --text FILE)") from None
        save_entry(lm, entry)
    else:
        entry = found[0]
    return budget_for(lm, entry, s, fill)
