"""The Python API: pack, unpack, verify, summary. The CLI is a thin layer over this.

`pack` is the one orchestrator of a pack: it checks the inputs and the output, loads
the model, resolves the config once, and packs one archive (vecarc.packing) or, for
inputs larger than a volume, one archive per volume (vecarc.volumes plans them) and
an index. Reading back lives in vecarc.unpacking, summaries in vecarc.summary.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from . import dictionary as dictionaries
from . import prefix
from .capacity import capacity_budget
from .config import PackConfig, fallback
from .dictionary import Dictionary
from .engine import releases_workers
from .errors import VecarcError, VerificationError
from .events import Progress, Trace, emit
from .fingerprint import sha256_file
from .format import write_atomic
from .format.container import TMP_SUFFIX
from .format.index import Index, Volume
from .inputs import Input, named_inputs, output_for, read_named
from .journal import Journal, journal_path
from .models import LoadedModel, resolve_model
from .packing import PackResult, pack_documents
from .plan import Budget
from .summary import summary
from .unpacking import cat, unpack, verify
from .volumes import Piece, VolumePlan, finished, index_documents, plan_volumes, read_piece, volume_path

__all__ = ["PackResult", "cat", "pack", "pack_documents", "summary", "unpack", "verify"]

Warn = Callable[[str], None]


@releases_workers
def pack(inputs: Sequence[Input], output: str | Path | None = None, config: PackConfig | None = None, *,
         model: str | LoadedModel | None = None, device: str = "auto", force: bool = False, resume: bool = False,
         exclude: Sequence[str] = (), progress: Progress | None = None, warn: Warn | None = None,
         trace: Trace | None = None, dictionary: Dictionary | str | Path | None = None,
         named_by_file: bool = True) -> PackResult:
    """Pack files (a folder: every regular file under it, less `exclude` patterns) into one .vec archive;
    output defaults to FIRST_INPUT.vec. With a dictionary (vecarc.dictionary), every coded chunk is
    coded after its vectors, and reading the archive needs it.

    A coded archive of one document written as NAME.vec stores no name: it takes its file's, as zstd's
    do. named_by_file=False stores the name whatever the output (the CLI's, for standard output).

    Work in progress is kept in OUTPUT.journal; resume=True continues it after an
    interruption, and the journal is removed once the archive is written. Inputs of
    more than config.volume_size bytes become volumes OUTPUT.0001, OUTPUT.0002, ... and
    an index at OUTPUT, so that memory follows the volume, not the corpus.
    """
    cfg = (config or PackConfig()).checked()
    d = dictionaries.load(dictionary)
    output = output_for(inputs, output)
    if output.exists() and not force:
        raise VecarcError(f"{output} exists (use -f to overwrite)")
    named = named_inputs(inputs, exclude, warn)
    if not named:
        raise VecarcError("nothing to pack: the folders given hold no regular file")
    sized = [(p, n, p.stat().st_size) for p, n in named]
    plans = plan_volumes(sized, cfg.volume_size) if cfg.volume_size and sum(z for *_, z in sized) > cfg.volume_size \
        else None
    _refuse_clobbering([p for p, _ in named], written_by(output, len(plans) if plans else 0))
    if plans is not None:
        return _pack_volumes(sized, plans, output, cfg, model, device, force, resume, progress, warn, trace, d)
    docs = read_named(named)
    journal = Journal.open(output, resume, force)
    if resume and not journal.existed and warn:
        warn(f"no journal {journal.path}; starting from the beginning")
    t0 = time.perf_counter()
    try:
        lm, cfg, budget = _prepare(model, device, cfg, progress, warn, d)
        r = _journaled(docs, lm, cfg, budget, journal, progress, trace, output.name if named_by_file else None)
        write_atomic(output, r.data, force=force)
        journal.remove()
    finally:
        journal.close()
    _say_untokenizable(r.untokenizable, warn)
    return replace(r, output=output, seconds=time.perf_counter() - t0)


def _say_untokenizable(names: Sequence[str], warn: Warn | None) -> None:
    """Text kept as literal bytes is lossless but not compressed by the model: say so, and why."""
    if names and warn:
        shown = ", ".join(sorted(set(names))[:5]) + (", ..." if len(set(names)) > 5 else "")
        warn(f"{len(set(names))} text document(s) kept as literal bytes: the model's tokenizer does not give "
             f"their text back exactly ({shown})")


def _prepare(model: str | LoadedModel | None, device: str, cfg: PackConfig, progress: Progress | None,
             warn: Warn | None, dictionary: Dictionary | None = None) -> tuple[LoadedModel, PackConfig, Budget | None]:
    """The model (with the dictionary, if any), the config resolved for it (once a pack), and the capacity
    plan's budget (if it plans)."""
    lm = resolve_model(model, device)
    cfg = fallback(cfg, lm, warn).resolved(lm)  # checks --rank before calibrating
    if dictionary is not None:
        if cfg.mode != "coded":
            raise VecarcError(f"--dict needs coded chunks, and this pack makes {cfg.mode} chunks")
        lm = dictionaries.attach(lm, dictionary)
    budget = capacity_budget(lm, cfg.search, cfg.fill, progress, warn, cfg.engine) if cfg.planned else None
    return lm, cfg, budget


def _journaled(docs: list[tuple[str, bytes]], lm: LoadedModel, cfg: PackConfig, budget: Budget | None,
               journal: Journal, progress: Progress | None, trace: Trace | None, stored_as: str | None) -> PackResult:
    """One archive of docs, journaled; with --learn-prefix, the smaller of it and one after its own vectors."""
    try:
        r = pack_documents(docs, lm, cfg, budget=budget, journal=journal, progress=progress, trace=trace,
                           stored_as=stored_as)
    except VerificationError as e:
        if not journal.results:
            raise
        raise VerificationError(f"{e}: the journal {journal.path} holds work that does not decode "
                      f"(damaged, or another pack's); pack again with -f to start over") from None
    return prefix.choose(docs, lm, cfg, r, progress) if cfg.learn_prefix else r


def written_by(output: Path, volumes: int = 0) -> list[Path]:
    """Every path a pack to `output` writes or removes: the archive (or index), its volumes, their journals."""
    paths = [output] + [volume_path(output, k) for k in range(volumes)]
    return paths + [journal_path(p) for p in paths]


def _refuse_clobbering(inputs: Sequence[Path], written: Sequence[Path]) -> None:
    """No input may be a file this pack writes: by path, by inode (a hard link), or as one of its temporaries."""
    by_path = {p.resolve(): p for p in written}
    by_inode = {}
    for p in written:
        try:
            st = p.stat()
        except OSError:
            continue
        by_inode[(st.st_dev, st.st_ino)] = p
    for path in inputs:
        st = path.stat()
        hit = by_path.get(path.resolve()) or by_inode.get((st.st_dev, st.st_ino))
        if hit is None and path.name.endswith(TMP_SUFFIX):
            hit = next((w for w in written if path.name.startswith(f".{w.name}.")
                        and path.parent.resolve() == w.parent.resolve()), None)
        if hit is not None:
            raise VecarcError(f"the input {path} is {hit}, which this pack writes; pack to another output")


def _pack_volumes(inputs: list[tuple[Path, str, int]], plans: list[VolumePlan], output: Path, cfg: PackConfig,
                  model, device: str, force: bool, resume: bool, progress: Progress | None, warn: Warn | None,
                  trace: Trace | None, dictionary: Dictionary | None) -> PackResult:
    """Volumes of about volume_size input bytes, each packed, checked and written before the next is
    read, then the index. With resume, a volume already written with its planned documents is kept.
    An input that changes meanwhile fails the pack before the index is written (tar's "file changed
    as we read it"): its parts would otherwise make a document that never existed."""
    t0 = time.perf_counter()
    stamps = {p: _stamp(p) for p, _, _ in inputs}
    for k in range(len(plans)):
        if volume_path(output, k).exists() and not (force or resume):
            raise VecarcError(f"{volume_path(output, k)} exists (use -f to overwrite, or --resume)")
    lm, cfg, budget = _prepare(model, device, cfg, progress, warn, dictionary)
    volumes, retries, steps, untokenizable = [], 0, [], []
    hashes = {name: hashlib.sha256() for _, name, _ in inputs}  # of what was packed, part by part
    for k, plan in enumerate(plans):
        path = volume_path(output, k)
        docs = [(p.name, _read_unchanged(p, stamps)) for p in plan.pieces]
        for name, data in docs:
            hashes[name].update(data)
        emit(progress, event="note", message=f"volume {k + 1} of {len(plans)}: {path.name} "
                                             f"({sum(len(b) for _, b in docs):,} bytes)")
        if resume and finished(path, docs, lm.fingerprint, cfg.mode, cfg.margin, dictionary and dictionary.id):
            data = path.read_bytes()
        else:
            journal = Journal.open(path, resume, force)
            try:
                r = _journaled(docs, lm, cfg, budget, journal, progress, trace, path.name)
                write_atomic(path, r.data, force=True)
                journal.remove()
            finally:
                journal.close()
            data, retries, steps = r.data, retries + r.retries, steps + r.steps
            untokenizable += r.untokenizable
        volumes.append(Volume(path.name, len(data), hashlib.sha256(data).hexdigest()))
    sha = {n: h.hexdigest() for n, h in hashes.items()}
    for path, name, _ in inputs:  # every part was read from the same file: it hashes whole as its parts did
        if _stamp(path) != stamps[path] or sha256_file(path) != sha[name]:
            raise _changed(path)
    index = Index(volumes, index_documents(inputs, plans, sha))
    write_atomic(output, index.to_bytes(), force=True)
    _say_untokenizable(untokenizable, warn)
    total = output.stat().st_size + sum(v.size for v in index.volumes)
    return PackResult(output, None, total, time.perf_counter() - t0, retries, steps, index=index)


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _changed(path: Path) -> VecarcError:
    return VecarcError(f"{path} changed while it was packed (file changed as we read it); no index written: "
                       f"pack again once it is still")


def _read_unchanged(piece: Piece, stamps: dict[Path, tuple]) -> bytes:
    data = read_piece(piece)
    if _stamp(piece.path) != stamps[piece.path]:
        raise _changed(piece.path)
    return data
