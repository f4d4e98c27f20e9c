"""Packing one archive: plan chunks, compute them, settle each chunk's fate, assemble, check.

Packing never returns an archive whose every chunk has not been decoded by the
same greedy decoder that unpack uses, whatever path the chunk came by (this
process, a Ray worker, or a journal left by an interrupted pack).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import zstandard

from . import dictionary
from .chunks import MODES, Hooks, Settled, coded
from .chunks.record import Dims
from .config import PackConfig
from .errors import VecarcError, VerificationError
from .events import Progress, Trace, emit
from .format import (
    MAX_LITERAL_TOKENS,
    VERSION,
    Archive,
    Chunk,
    DecodeRecord,
    Header,
    ModelRecord,
    VectorsRecord,
    encode_tokens,
    parse_archive,
    serialize,
    token_hash,
)
from .format.compact import VERSION as COMPACT
from .format.corrections import Correction
from .format.index import Index
from .journal import Journal, identity
from .ledger import Ledger
from .models import LoadedModel
from .plan import Budget, Plan, plan_documents
from .search import wants_compile
from .unpacking import decode_archive
from .version import __version__


@dataclass
class PackResult:
    output: Path | None  # the path written; None while in memory
    archive: Archive | None  # as a reader sees it; None for a pack cut into volumes (see index)
    archive_bytes: int
    seconds: float
    retries: int = 0
    steps: list[int] = field(default_factory=list)  # optimisation steps per vector chunk, in settling order
    data: bytes = b""  # the checked file bytes
    index: Index | None = None  # a pack cut into volumes: the index written at output
    # UTF-8 documents kept as literal bytes because the tokenizer does not give their text back.
    untokenizable: list[str] = field(default_factory=list)


def software_versions() -> dict:
    import tokenizers
    import transformers

    return {"vecarc": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__}


def pack_documents(docs: Sequence[tuple[str, bytes]], lm: LoadedModel, config: PackConfig | None = None, *,
                   budget: Budget | None = None, journal: Journal | None = None, progress: Progress | None = None,
                   trace: Trace | None = None, stored_as: str | None = None) -> PackResult:
    """Build a verified archive in memory (output None: nothing is written).

    stored_as: the file name the archive will be written under, if known and kept (not standard output): a
    coded archive of one document it names (NAME.vec) then stores no name.

    Chunks are cut by `budget` (the capacity plan) when the config plans them, else in
    equal spans. With a journal, finished chunks (and the search's snapshots) are recorded
    as they happen, and a journal left by an interrupted pack is continued.
    """
    t0 = time.perf_counter()
    cfg = (config or PackConfig()).resolved(lm)
    size = cfg.chunk_size(lm)
    plan = plan_documents(docs, lm, size, budget if cfg.planned else None, progress)
    # Recorded as decided (on / off), in the header and the journal's identity.
    compiled = not cfg.predicted and wants_compile(cfg.search, lm.device, len(plan.spans))
    cfg = replace(cfg, search=replace(cfg.search, compile="on" if compiled else "off"))
    k, r = cfg.search.vectors, cfg.search.rank
    dims = Dims(lm.vocab_size, (k, lm.hidden_size), (k, r) if r else None)
    ledger = Ledger(plan, dims, MODES[cfg.mode].OUTCOMES, journal)
    state = _resume(journal, ledger, lm, cfg, size, budget if cfg.planned else None, progress)
    emit(progress, event="plan", chunks=len(plan.spans))
    _compute(lm, cfg, ledger, state, progress, trace)
    body = assemble(plan, ledger, merge=cfg.mode != "coded")
    header = replace(build_header(lm, cfg, plan, ledger, body, size, budget if cfg.planned else None),
                     stored_as=stored_as)
    archive = Archive(header=header, literals=body.literals, corrections=body.corrections,
                      stored=torch.stack(body.coords if cfg.search.rank else body.rows) if body.rows else None)
    if body.rows:
        archive.vectors = torch.stack(body.rows)  # as the search verified them: checked against the reread
    data, back = checked_bytes(archive, lm, body.decoded, body.claimed)
    return PackResult(None, back, len(data), time.perf_counter() - t0, ledger.retries, ledger.steps, data,
                      untokenizable=[plan.documents[d].name for d, raw in plan.literal.items() if _utf8(raw)])


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _resume(journal: Journal | None, ledger: Ledger, lm: LoadedModel, cfg: PackConfig, size: int,
            budget: Budget | None, progress: Progress | None) -> dict | None:
    """Start the journal; settle what a previous run left in it. Returns the search's snapshot, if any."""
    if journal is None:
        return None
    plan = ledger.plan
    journal.start(identity(
        vecarc=__version__, documents=[(x.name, x.sha256) for x in plan.documents], model=lm.fingerprint,
        settings={**cfg.search.record(), "mode": cfg.mode} | (
            {"context_tokens": cfg.context_tokens} if cfg.context_tokens else {}) | _dictionary(lm, cfg),
        chunk_tokens=size,
        min_chunk_tokens=cfg.min_chunk_tokens, budget=vars(budget) if budget else None, spans=plan.spans))
    ledger.replay(journal.results)
    if journal.state is not None:
        emit(progress, event="resume", done=len(ledger.kept), step=journal.state["step"])
    return journal.state


def _compute(lm: LoadedModel, cfg: PackConfig, ledger: Ledger, state: dict | None, progress: Progress | None,
             trace: Trace | None) -> None:
    """Every chunk the ledger does not hold yet, here or on the engine; then the mode's last word."""
    kind, plan, journal = MODES[cfg.mode], ledger.plan, ledger.journal
    # A search's snapshot continues here; marks of finished batches or shards (or any state, on the
    # engine) leave only the chunks the ledger does not cover.
    snapshot = state is not None and "slots" in state and cfg.engine is None
    spans = plan.spans if snapshot else ledger.todo()
    # A chunk's item holds its tokens, after the context it is coded under (coded chunks with --context)
    items = [((d, a, b), plan.tokens[d][max(0, a - cfg.context_tokens) : b]) for d, a, b in spans]
    if cfg.engine is not None:
        cfg.engine.run(lm, cfg, items, lambda shard, records: _take_shard(ledger, shard, records), progress)
    else:
        hooks = Hooks(progress, total=len(plan.spans), final=journal.add_state if journal is not None else None,
                      every=cfg.checkpoint_every, resume=state if snapshot else None, rebuild=ledger.tokens_of,
                      trace=trace)
        kind.compute(lm, cfg, items, ledger.take, hooks)
    if missing := ledger.todo():
        raise VecarcError(f"{len(missing)} planned chunk(s) came back without a result (the first: "
                          f"{list(missing[0])}); nothing written (finished work is in the journal: --resume)")
    kind.finish(ledger.kept)


def _take_shard(ledger: Ledger, shard: Sequence, records: Sequence) -> None:
    """A worker's records, settled and journaled, then marked final; a reply that does not settle its
    whole shard is refused (the chunks it did settle stay journaled for --resume)."""
    try:
        for rec in records:
            ledger.take(rec, origin="worker")
    except VecarcError as e:
        raise VerificationError(f"a worker's reply is malformed ({e}); nothing written") from None
    if missing := [tag for tag, _ in shard if not ledger.covers(*tag)]:
        raise VerificationError(f"a worker's reply leaves {len(missing)} chunk(s) of its shard without a result "
                                f"(the first: {list(missing[0])}); nothing written")
    if ledger.journal is not None:
        ledger.journal.add_state({"step": 0, "shard": True})


# ---------------------------------------------------------------- assembly


@dataclass
class Assembly:
    """The archive's chunk list and sections, in document order."""

    chunks: list[Chunk] = field(default_factory=list)
    rows: list[torch.Tensor] = field(default_factory=list)
    coords: list[torch.Tensor] = field(default_factory=list)
    literals: dict[int, bytes] = field(default_factory=dict)  # chunk index -> zstd frame
    corrections: dict[int, list[Correction]] = field(default_factory=dict)  # predicted chunk index -> its corrections
    decoded: dict[int, list[int]] = field(default_factory=dict)  # chunk index -> tokens this run's checks decoded
    claimed: dict[int, Sequence[int]] = field(default_factory=dict)  # coded chunks from a worker or a journal

    def add(self, s: Settled, toks: Sequence[int]) -> None:
        """A vector or predicted chunk, with what its sections hold."""
        if s.record.kind == "vector":
            s.record.row = len(self.rows)
            self.rows.append(s.vectors)
            if s.coords is not None:
                self.coords.append(s.coords)
        elif s.record.kind == "coded":
            self.literals[len(self.chunks)] = s.stream or b""
        elif s.corrections:
            self.corrections[len(self.chunks)] = s.corrections
        if not s.replayed:
            self.decoded[len(self.chunks)] = toks  # the plan's slice (4 bytes a token), not a list
        elif s.record.kind == "coded":
            self.claimed[len(self.chunks)] = toks
        self.chunks.append(s.record)

    def add_literal(self, d: int, toks: Sequence[int]) -> None:
        self.literals[len(self.chunks)] = encode_tokens(toks)
        self.chunks.append(Chunk(d, "tokens", len(toks), token_hash(toks)))

    def add_bytes(self, d: int, data: bytes) -> None:
        self.literals[len(self.chunks)] = zstandard.ZstdCompressor(level=19).compress(data)
        self.chunks.append(Chunk(d, "bytes", size=len(data)))


def assemble(plan: Plan, ledger: Ledger, merge: bool = True) -> Assembly:
    """Chunks in document order; neighbouring literal chunks become one block (one zstd frame
    compresses far better than many), unless merge is off (format 5 derives its chunks' spans)."""
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
            if merge and s.record.kind == "tokens" and run is not None and b - run[0] <= MAX_LITERAL_TOKENS:
                run = (run[0], b)
                continue
            if run is not None:
                out.add_literal(d, ids[run[0] : run[1]])
                run = None
            if s.record.kind == "tokens":
                run = (a, b)
            else:
                out.add(s, ids[a:b])
        if run is not None:
            out.add_literal(d, ids[run[0] : run[1]])
    return out


def _dictionary(lm: LoadedModel, cfg: PackConfig) -> dict:
    """The header's (and the journal's) record of the dictionary coded chunks read, if any (other kinds of
    chunk read none)."""
    d = dictionary.of(lm)
    return {"dictionary": d.id} if d is not None and cfg.mode == "coded" else {}


def build_header(lm: LoadedModel, cfg: PackConfig, plan: Plan, ledger: Ledger, body: Assembly, size: int,
                 budget: Budget | None) -> Header:
    method = ({"method": "capacity", "budget_nats": round(budget.nats, 3), "fill": budget.fill,
               "max_tokens": budget.max_tokens} if budget else {"method": "fixed", "chunk_tokens": size})
    model = lm.describe()
    s = cfg.search
    return Header(
        software=software_versions(),
        model=ModelRecord.from_json(model),
        vectors=VectorsRecord(s.vectors, s.vector_dtype, lm.hidden_size, len(body.rows), s.rank,
                              s.basis_seed if s.rank else None),
        cram=cfg.record(size) | _dictionary(lm, cfg),
        plan=method | {"chunks_planned": len(plan.spans), "retries": ledger.retries},
        prefix=dictionary.own_prefix(lm) if cfg.mode == "coded" else None,
        decode=DecodeRecord("integer", "int", None) if cfg.mode == "coded" else
        DecodeRecord("greedy-kv", model["dtype"], cfg.margin),
        documents=plan.documents,
        chunks=body.chunks,
        version=COMPACT if cfg.mode == "coded" else VERSION,
    )


def checked_bytes(archive: Archive, lm: LoadedModel, decoded: dict[int, list[int]],
                  claimed: dict[int, Sequence[int]] | None = None) -> tuple[bytes, Archive]:
    """Serialize, read back, and check that what will be written is what was verified.

    decoded: the tokens this process's greedy checks gave for some chunks; every other
    greedy chunk (one restored from a journal or sent by a worker) is decoded here, at the
    margin. claimed: coded chunks from a worker or a journal, with the tokens they should
    hold: confirmed by one teacher-forced pass here (coded.confirm), not by decoding them.
    Returns the file bytes and the archive as a reader will see it.
    """
    data = serialize(archive)
    back = parse_archive(data, stored_as=archive.header.stored_as)
    if (archive.vectors is None) != (back.vectors is None) or (
        archive.vectors is not None and not torch.equal(archive.vectors, back.vectors)
    ):
        raise VerificationError("internal error: vectors changed on serialization; nothing written")
    # decoded as a reader will: with what the header says coded chunks read, not what pack attached
    lm = dictionary.for_archive(lm, back.header.cram.get("dictionary"), dictionary.of(lm), back.header.prefix)
    if claimed:
        coded.confirm(lm, back, claimed, decoded)
        decoded = {**decoded, **claimed}
    result = decode_archive(back, lm, known=decoded)
    if not result.ok:
        raise VerificationError(result.problems[0] + "; nothing written")
    need = back.header.required_margin
    low = sorted(i for i, m in result.margins.items() if m < need)
    if low:
        raise VerificationError(f"chunk {low[0]} decodes with a margin of {result.margins[low[0]]:.4f}, "
                                f"below the required {need:g}; nothing written")
    return data, back
