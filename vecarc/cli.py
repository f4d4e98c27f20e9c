"""Command line: thin wrappers over vecarc.api with zstd-like verbs and flags.

Exit codes: 0 ok, 1 verification failed, 2 usage or input error, 130 interrupted.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
import warnings
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from . import api, capacity
from .capacity import DEFAULT_FILL
from .engine import engine_for
from .errors import VecarcError
from .format import read_archive
from .format.index import is_index, read_index
from .journal import journal_path
from .plan import MIN_CHUNK_TOKENS
from .predict import PREDICT_TOKENS
from .search import MODES, SEARCH_DTYPES, VECTOR_DTYPES, CramSettings
from .volumes import DEFAULT_VOLUME_SIZE

# Ctrl-C inside a backward pass makes autograd warn with the forward call's traceback: noise, not news.
warnings.filterwarnings("ignore", message="Error detected in", category=UserWarning)

# Lines are never wrapped to a width: piped, a path or a name must stay on its line.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

model_opt = click.option("--model", default=None, metavar="NAME_OR_PATH",
                         help="Hub id[@rev], local folder or .gguf (default: embedded SmolLM2-135M).")
device_opt = click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
quiet_opt = click.option("-q", "--quiet", is_flag=True, help="No progress or summary.")
verbose_opt = click.option("-v", "--verbose", is_flag=True, help="More detail; tracebacks on internal errors.")
seed_opt = click.option("--seed", default=0, show_default=True, type=int)


def _byte_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        n = float(t[: len(t) - len(unit)])
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 64M or 1G") from None
    if not 0 <= n < 1 << 50:
        raise click.BadParameter(f"{text!r} is out of range")
    return int(n * units[unit])


def engine_options(fn):
    """Where the chunks are computed: this process, or a Ray cluster (pip install 'vecarc[ray]')."""
    fn = click.option("--workers", default=0, type=click.IntRange(0), metavar="N",
                      help="Ray workers (default: one per GPU, or one per CPU core less one).")(fn)
    fn = click.option("--address", default=None, metavar="ADDR",
                      help="Ray cluster to join ('auto': this node's); default: start a local one.")(fn)
    return click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
                        help="local: this process; ray: a pool of Ray workers.")(fn)


def _finite_positive(ctx, param, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a finite number above 0, got {value}")
    return value


_SEARCH_OPTIONS = [
    seed_opt,
    click.option("--vectors", default=1, show_default=True, type=click.IntRange(1, 64),
                 help="Memory vectors per chunk."),
    click.option("--vector-dtype", default=CramSettings.vector_dtype, show_default=True,
                 type=click.Choice(list(VECTOR_DTYPES))),
    click.option("--rank", default=None, type=click.IntRange(0),
                 help="Store R numbers per vector (the vector is P @ z for a fixed ±1 P); 0 stores whole vectors. "
                      "Default: 256 for models at least 512 wide (the default model), else 0."),
    click.option("--margin", default=CramSettings.margin, show_default=True, type=float, callback=_finite_positive,
                 help="Required logit margin."),
    click.option("--max-steps", default=CramSettings.max_steps, show_default=True, type=click.IntRange(1)),
    click.option("--batch-size", default=CramSettings.batch_size, show_default=True, type=click.IntRange(1)),
    click.option("--search-dtype", default=CramSettings.search_dtype, show_default=True,
                 type=click.Choice(["auto", *SEARCH_DTYPES]),
                 help="Model copy the search runs on (auto: bf16 where the hardware has it); "
                      "the float32 model always confirms the margin."),
]


def search_options(fn):
    """The options that make a CramSettings, shared by pack and calibrate."""
    for opt in reversed(_SEARCH_OPTIONS):
        fn = opt(fn)
    return fn


def handled(fn):
    """Turn every failure into one line on stderr and a trustworthy exit code."""

    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VecarcError as e:
            err.print(f"vecarc: error: {e}", markup=False, highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("vecarc: interrupted; nothing written", highlight=False)
            sys.exit(130)
        except BrokenPipeError:  # `vecarc info A | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as e:  # a bug: still one line unless -v
            if kwargs.get("verbose"):
                traceback.print_exc()
            first = (str(e).splitlines() or [""])[0]
            err.print(f"vecarc: internal error: {type(e).__name__}: {first}", markup=False, soft_wrap=True)
            sys.exit(2)

    return run


@contextmanager
def progress_bar(quiet: bool):
    """Rich progress on a terminal; nothing when piped or quiet."""
    if quiet or not err.is_terminal:
        yield None
        return
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=err, transient=False) as bar:
        tasks: dict[str, int] = {}

        def on(e: dict) -> None:
            kind = e["event"]
            if kind == "plan":
                if "cal" in tasks:
                    bar.remove_task(tasks.pop("cal"))
                tasks["cram"] = bar.add_task("packing", total=e["chunks"], info="")
            elif kind == "step" and "cram" in tasks:
                bar.update(tasks["cram"], completed=e["done"], total=e["total"],
                           info=f"step {e['step']} · {e['active']} active · acc {e['accuracy']:.0%} · "
                                f"loss {e['loss']:.3f}")
            elif kind in ("predict", "shard") and "cram" in tasks:
                bar.update(tasks["cram"], completed=e["done"], total=e["total"],
                           info="predicted and checked" if kind == "predict" else "crammed and checked")
            elif kind == "calibrate":
                if "cal" not in tasks:
                    tasks["cal"] = bar.add_task("calibrating", total=None, info="")
                bar.console.print(_try_line(e), markup=False, highlight=False)
                bar.update(tasks["cal"], info=f"sample {e['sample']} · {e['tokens']} tokens")
            elif kind == "note":
                bar.console.print(f"vecarc: {e['message']}", markup=False, highlight=False)
            elif kind == "decode":
                if "decode" not in tasks:
                    tasks["decode"] = bar.add_task("decoding", total=e["total"], info="")
                bar.update(tasks["decode"], completed=e["done"], total=e["total"])
                if e["done"] >= e["total"]:
                    tasks.pop("decode")

        yield on


def _warner(quiet: bool):
    def warn(msg: str) -> None:
        if not quiet:
            err.print(f"vecarc: {msg}", markup=False, highlight=False, soft_wrap=True)

    return warn


def show_table(console: Console, columns: list[str] | None, rows: list[list[str]], title: str | None = None) -> None:
    """A rich table on a terminal; piped, plain tab-separated lines that keep every field whole.

    Values are printed as text, never as markup: a document name is data.
    """
    if not console.is_terminal:
        if title:
            console.file.write(f"# {title}\n")
        for row in ([columns] if columns else []) + rows:
            console.file.write("\t".join(row) + "\n")
        return
    t = Table(*(columns or []), show_header=columns is not None, box=None if columns is None else box.HEAVY_HEAD,
              title=title, title_justify="left")
    if columns is None:
        t.add_column(no_wrap=True)
        t.add_column()
    for col in t.columns:
        col.overflow = "fold"
    for row in rows:
        t.add_row(*(Text(x) for x in row))
    console.print(t, highlight=False)


def _size(n: int) -> str:
    return f"{n:,} B"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vecarc")
def main() -> None:
    """Archive text as memory vectors of a frozen language model, verified by greedy decoding."""


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Archive path (default: INPUT.vec).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing archive.")
@model_opt
@device_opt
@click.option("--mode", default=CramSettings.mode, show_default=True, type=click.Choice(list(MODES)),
              help="predict: the model decodes each chunk alone and the tokens it gets wrong are stored "
                   "(smallest); vectors: memory vectors found per chunk.")
@search_options
@click.option("--chunk-tokens", default=None, type=click.IntRange(1),
              help=f"Equal chunks of N tokens (predict mode's default: {PREDICT_TOKENS}; vectors mode: instead "
                   f"of the capacity plan).")
@click.option("--min-chunk-tokens", default=MIN_CHUNK_TOKENS, show_default=True, type=click.IntRange(1),
              help="A chunk that fails is split in halves down to this size, then stored as literal tokens.")
@click.option("--fill", default=DEFAULT_FILL, show_default=True, type=click.FloatRange(0, 4, min_open=True),
              help="Plan chunks to this fraction of the calibrated budget.")
@click.option("--compile", "compile_", default=CramSettings.compile, show_default=True,
              type=click.Choice(["auto", "on", "off"]),
              help="torch.compile the search copy: ~20% cheaper steps after a compile (~230 s the first time, "
                   "~20 s once cached); auto: on the CPU for long jobs.")
@click.option("--resume", is_flag=True, help="Continue the interrupted pack whose work is in OUTPUT.journal.")
@click.option("--checkpoint-every", default=60.0, show_default=True, type=click.FloatRange(0), metavar="SECONDS",
              help="How often the optimiser's state goes to the journal (work lost on a kill is at most this).")
@click.option("--volume-size", default=str(DEFAULT_VOLUME_SIZE >> 20) + "M", show_default=True, metavar="SIZE",
              callback=lambda ctx, p, v: _byte_size(v),
              help="Inputs larger than this become volumes OUTPUT.0001, ... of about this many input bytes and an "
                   "index at OUTPUT, so memory follows the volume (K, M, G suffixes; 0: one archive).")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print the archive summary as JSON.")
@quiet_opt
@verbose_opt
@handled
def pack(inputs, output, force, model, device, mode, seed, vectors, vector_dtype, rank, chunk_tokens, min_chunk_tokens,
         fill, margin, max_steps, batch_size, search_dtype, compile_, resume, checkpoint_every, volume_size, engine,
         address, workers, as_json, quiet, verbose):
    """Pack text files into one .vec archive.

    Chunks follow the model's measured capacity (see `vecarc calibrate`); a model
    without a stored profile is calibrated first.
    """
    settings = CramSettings(mode=mode, vectors=vectors, vector_dtype=vector_dtype, rank=rank, margin=margin,
                            max_steps=max_steps, batch_size=batch_size, seed=seed, search_dtype=search_dtype,
                            compile=compile_)
    target = api.output_for(inputs, output)
    where = engine_for(engine, address, workers)
    try:
        with progress_bar(quiet) as on:
            r = api.pack(list(inputs), output, model=model, device=device, settings=settings,
                         chunk_tokens=chunk_tokens, min_chunk_tokens=min_chunk_tokens, force=force, progress=on,
                         fill=fill, warn=_warner(quiet),
                         resume=resume, checkpoint_every=checkpoint_every, engine=where, volume_size=volume_size)
    except KeyboardInterrupt:
        j = journal_path(target)
        kept = f"; finished work is kept in {j} (run the same command with --resume)" if j.exists() else ""
        err.print(f"vecarc: interrupted; no archive written{kept}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(130)
    if r.index is not None:
        original = sum(d.size for d in r.index.documents)
        if as_json:
            click.echo(json.dumps({"index": str(r.output), "volumes": [v.file for v in r.index.volumes],
                                   "original_bytes": original, "archive_bytes": r.archive_bytes,
                                   "seconds": r.seconds, "retries": r.retries}, indent=2))
        elif not quiet:
            err.print(f"{r.output}: {_size(original)} -> {_size(r.archive_bytes)} (ratio "
                      f"{original / r.archive_bytes:.3f}) in {_count(len(r.index.volumes), 'volume')} "
                      f"({r.output}.0001 ...), {r.retries} retries, {r.seconds:.1f} s", highlight=False, markup=False)
        return
    s = api.summary(r.archive)
    if as_json:
        click.echo(json.dumps({**s, "seconds": r.seconds, "retries": r.retries, "output": str(r.output)}, indent=2))
    elif not quiet:
        if verbose:
            show_table(err, ["chunk", "document", "kind", "tokens", "steps", "margin"], [
                [str(i), r.archive.documents[ch.doc].name, ch.kind, str(ch.tokens or ""),
                 "" if ch.steps is None else str(ch.steps), "" if ch.margin is None else f"{ch.margin:.3f}"]
                for i, ch in enumerate(r.archive.chunks)])
        c = s["chunks"]
        err.print(f"{r.output}: {_size(s['original_bytes'])} -> {_size(r.archive_bytes)} "
                  f"(ratio {s['original_bytes'] / r.archive_bytes:.3f}); {c['vector']} vector / {c['predicted']} "
                  f"predicted ({c['corrections']} corrections) / {c['tokens'] + c['bytes']} literal chunks, "
                  f"{r.retries} retries, {r.seconds:.1f} s",
                  highlight=False, markup=False)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "outdir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the documents into.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
@model_opt
@device_opt
@quiet_opt
@verbose_opt
@handled
def unpack(archive, outdir, force, model, device, quiet, verbose):
    """Decode an archive (or a volume index), check every hash, then write the documents."""
    with progress_bar(quiet) as on:
        paths = api.unpack(archive, outdir, model=model, device=device, force=force, progress=on)
    if not quiet:
        for p in paths:
            err.print(f"wrote {p}", highlight=False, markup=False)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@model_opt
@device_opt
@click.option("--strict", is_flag=True,
              help="Also require the recorded margin at every token, and the same tokens with another thread "
                   "count, attention kernel and batch shape (a bf16 model is reported).")
@click.option("--json", "as_json", is_flag=True)
@quiet_opt
@verbose_opt
@handled
def verify(archive, model, device, strict, as_json, quiet, verbose):
    """Decode everything in memory (a volume index: volume by volume) and check it; exit 1 if anything differs."""
    a = None if is_index(archive) else read_archive(archive)  # an index: each volume verified in turn
    with progress_bar(quiet or as_json) as on:
        r = api.verify(archive if a is None else a, model=model, device=device, progress=on, strict=strict)
    if a is None:
        docs, chunks, margin = len(read_index(archive).documents), None, None
    else:
        docs, chunks, margin = len(a.documents), len(a.chunks), api.required_margin(a)
    if as_json:
        click.echo(json.dumps({"ok": r.ok, "problems": r.problems, "documents": docs,
                               "min_decode_margin": None if r.min_margin == float("inf") else r.min_margin,
                               **({"required_margin": margin,
                                   "conditions": [c.as_dict() for c in r.stress]} if strict else {})}))
    elif not quiet:
        if r.stress:
            show_table(err, ["condition", "chunks", "flips", "min decode margin", "max drift", "binding"],
                       [[c.name, str(c.chunks), str(c.flips), f"{c.min_margin:.4f}", f"{c.max_drift:.2e}",
                         "yes" if c.binding else "report"] if c.skipped is None else
                        [c.name, "", "", "", "", f"skipped: {c.skipped}"] for c in r.stress],
                       title="decoding under other conditions"
                             + (f" (recorded margin {margin:g})" if margin is not None else ""))
        for p in r.problems:
            err.print(f"FAILED {p}", markup=False, highlight=False)
        if r.ok:
            what = _count(docs, "document") + (f", {_count(chunks, 'chunk')}" if chunks is not None else "")
            err.print(f"{archive}: OK ({what})", markup=False, highlight=False)
    sys.exit(0 if r.ok else 1)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@verbose_opt
@handled
def info(archive, as_json, verbose):
    """Show header, model, documents and chunks (of an index: its volumes), without loading the model."""
    if is_index(archive):
        return _info_index(archive, as_json)
    a = read_archive(archive, load_vectors=False)
    s = api.summary(a)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    m, v, c = s["model"], s["vectors"], s["chunks"]
    layers = f" · layers {m['num_layers']}" if "num_layers" in m else ""  # informational: may be missing
    t = [
        ["archive", f"{archive}  {_size(s['archive_bytes'])}"],
        ["original", f"{_size(s['original_bytes'])}  ratio {s['ratio']:.3f}" if s["ratio"] else "0 B"],
        ["split", f"vectors {_size(s['vector_bytes'])} · corrections {_size(s['corrections_bytes'])} · "
                  f"literal {_size(s['literal_bytes'])} · header+checksum {_size(s['overhead_bytes'])}"],
        ["format", f"version {s['format_version']}"],
        ["model", m["name"]],
        ["source", m["source"]],
        ["fingerprint", m["fingerprint"]],
        ["dims", f"hidden {m['hidden_size']} · vocab {m['vocab_size']}{layers} · {m['dtype']}"],
        ["vectors", "none" if not v["count"] else f"{v['count']} × {v['per_chunk']} × {v['hidden_size']} {v['dtype']}"
                    + (f", stored as {v['rank']} coordinates each (rank {v['rank']})" if v["rank"] else "")],
    ]
    tpv, plan = c["tokens_per_vector"], s.get("plan") or {}
    if plan.get("method") == "capacity":
        pn = c["planned_nats_per_vector"] or {}
        t.append(["plan", f"capacity: budget {plan['budget_nats']:.1f} nats × fill {plan['fill']} · "
                          f"planned nats/vector min {_num(pn.get('min'), '{:.1f}')} "
                          f"median {_num(pn.get('median'), '{:.1f}')} max {_num(pn.get('max'), '{:.1f}')} · "
                          f"{plan['chunks_planned']} planned, {plan['retries']} retries"])
    elif plan:
        t.append(["plan", f"fixed: {plan['chunk_tokens']} tokens · {plan['chunks_planned']} planned, "
                          f"{plan['retries']} retries"])
    if c["predicted"]:
        t.append(["predicted", f"{_count(c['predicted'], 'chunk')} · {c['predicted_tokens']:,} tokens · "
                               f"{c['corrections']:,} corrections ({c['corrections'] / c['predicted_tokens']:.0%})"])
    t.append(["chunks", f"{c['total']}: {c['vector']} vector, {c['predicted']} predicted, {c['tokens']} literal-token, "
                        f"{c['bytes']} literal-bytes"
              + (f" · tokens/vector min {tpv['min']} median {tpv['median']} max {tpv['max']}" if tpv else "")
              + (f" · min margin {c['min_margin']:.3f}" if c["min_margin"] is not None else "")])
    show_table(out, None, t)
    show_table(out, ["document", "bytes", "stored as", "chunks", "tokens", "sha256"], [
        [doc["name"], f"{doc['size']:,}",
         "literal zstd" if doc["encoding"] == "bytes" else _stored_as(doc),
         str(doc["chunks"]), str(doc["tokens"]), doc["sha256"][:16]] for doc in s["documents"]],
        title=_count(len(s["documents"]), "document"))


def _info_index(path: str, as_json: bool) -> None:
    from .volumes import index_summary

    s = index_summary(Path(path))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    ratio = f"  ratio {s['original_bytes'] / s['archive_bytes']:.3f}" if s["archive_bytes"] else ""
    show_table(out, None, [["index", f"{path}  {_count(len(s['volumes']), 'volume')}"],
                           ["stored", f"{_size(s['archive_bytes'])} (index and volumes)"],
                           ["original", f"{_size(s['original_bytes'])}{ratio}"]])
    show_table(out, ["volume", "bytes", "original", "documents", "chunks"],
               [[v["file"], f"{v['bytes']:,}", f"{v['original_bytes']:,}", str(v["documents"]), str(v["chunks"])]
                for v in s["volumes"]], title=_count(len(s["volumes"]), "volume"))
    show_table(out, ["document", "bytes", "volumes", "sha256"],
               [[d["name"], f"{d['size']:,}", ", ".join(d["parts"]), d["sha256"][:16]] for d in s["documents"]],
               title=_count(len(s["documents"]), "document"))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _stored_as(doc: dict) -> str:
    parts = [f"{doc[k + '_chunks']} {k}" for k in ("vector", "predicted") if doc[k + "_chunks"]]
    return " + ".join(parts + [f"{doc['literal_chunks']} literal"])


def _num(x, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write every number to this JSON file.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="Write a PNG plot (needs matplotlib).")
@click.option("--zstd-levels", default="3,19", show_default=True,
              help="Comma-separated zstd levels (22 is always added).")
@click.option("--vector-dtypes", default="predict", show_default=True,
              help="Comma-separated: predict (predicted chunks, what pack does by default); vectors (the vectors "
                   "mode's default form); fp32,fp16,bf16,int8,int4, each optionally low-rank (int8r64 is rank 64).")
@click.option("--archive", type=click.Path(), help="Reuse (or create) packed archive(s) here: a .vec or a folder.")
@click.option("--reps", default=5, show_default=True, type=click.IntRange(1), help="Repetitions for zstd/xz times.")
@click.option("--chunk-tokens", default=None, type=click.IntRange(1))
@seed_opt
@model_opt
@device_opt
@quiet_opt
@verbose_opt
@handled
def bench(inputs, json_out, plot_out, zstd_levels, vector_dtypes, archive, reps, chunk_tokens, seed, model, device,
          quiet, verbose):
    """Compare vecarc with zstd and xz on the same files: sizes, times, the model's own limit."""
    from . import bench as B
    from .models import load_model

    try:
        levels = [int(x) for x in zstd_levels.split(",") if x.strip()]
    except ValueError:
        raise VecarcError(f"--zstd-levels must be integers, got {zstd_levels!r}") from None
    if any(not 1 <= lv <= 22 for lv in levels):
        raise VecarcError("zstd levels run from 1 to 22")
    dtypes = [x.strip() for x in vector_dtypes.split(",") if x.strip()]
    B.check_dtypes(dtypes)
    for p in inputs:
        api.check_input(p)  # before the model loads: a typo should not cost seconds
    lm = load_model(model, device)
    results = []
    with progress_bar(quiet) as on:
        for p in inputs:
            results.append(B.bench_file(p, lm, zstd_levels=levels, vector_dtypes=dtypes,
                                        settings=CramSettings(seed=seed), archive=archive,
                                        single=len(inputs) == 1, reps=reps, progress=on,
                                        chunk_tokens=chunk_tokens))
    if json_out:
        from .format import write_atomic

        write_atomic(Path(json_out), json.dumps(results, indent=2).encode(), force=True)
    if plot_out:
        B.plot(results, plot_out)
    if quiet:
        return
    for res in results:
        t = Table(title=f"{res['input']} · {res['bytes']:,} B · {_num(res['tokens'])} tokens", title_justify="left")
        for col in ("method", "bytes", "ratio", "compress s", "decompress s"):
            t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
        notes = []
        for m in res["methods"]:
            t.add_row(m["method"], f"{m['bytes']:,}", _num(m["ratio"], "{:.3f}"), _num(m["compress_s"], "{:.3g}"),
                      _num(m["decompress_s"], "{:.3g}"))
            if m["method"] == "vecarc predicted":
                n, toks = m["corrections"], m["predicted_tokens"]
                notes.append(
                    f"{m['method']}: corrections {m['corrections_bytes']:,} B + header {m['header_bytes']:,} B + "
                    f"literal {m['literal_bytes']:,} B; {n:,} corrections for {toks:,} predicted tokens"
                    + (f" ({m['corrections_bytes'] * 8 / n:.1f} bits each)" if n else "")
                    + f", verify {'ok' if m['verify_ok'] else 'FAILED'}"
                    + ("; reused archive" if m["reused_archive"] else ""))
            elif m["method"].startswith("vecarc"):
                tpv = m["tokens_per_vector"] or {}
                notes.append(
                    f"{m['method']}: vectors {m['vector_bytes']:,} B + header {m['header_bytes']:,} B + literal "
                    f"{m['literal_bytes']:,} B; {m['vectors']} vectors ({m['vectors_per_kb']:.1f} per KB), "
                    f"tokens/vector {tpv.get('median', '—')}, steps/chunk {_num(m['steps_median'])}, "
                    f"{_num(m['gain_bits_per_vector_median'])} of {m['bits_stored_per_vector']:,} stored bits "
                    f"removed per vector (utilisation {_num(m['utilisation'], '{:.1%}')}), verify "
                    f"{'ok' if m['verify_ok'] else 'FAILED'}" + ("; reused archive" if m["reused_archive"] else ""))
            elif m["method"].startswith("model limit"):
                notes.append(f"model limit: {m['ce_bits']:,.0f} bits of cross-entropy without vectors, "
                             f"{m['bits_per_byte']:.2f} bits per byte")
        out.print(t, highlight=False)
        for n in notes:
            out.print("  " + n, highlight=False, markup=False)
    mach, mod = results[0]["machine"], results[0]["model"]
    out.print(f"model {mod['name']} · {mod['fingerprint']} · device {mach['device']} · {mach['torch_threads']} "
              f"threads · torch {mach['torch']} · transformers {mach['transformers']} · zstandard "
              f"{mach['zstandard']} · vecarc {mach['vecarc']}", highlight=False, markup=False)


def _try_line(e: dict) -> str:
    margin = "     -" if e["margin"] is None else f"{e['margin']:>6.2f}"  # a Ray worker's try: not sent back
    return (f"  sample {e['sample']:>2}  {e['tokens']:>4} tokens  {e['steps']:>4} steps  "
            f"margin {margin}  {'pass' if e['ok'] else 'fail'}")


@main.command()
@model_opt
@device_opt
@search_options
@click.option("--samples", default=capacity.DEFAULT_SAMPLES, show_default=True, type=click.IntRange(1, 256))
@click.option("--text", "texts", multiple=True, type=click.Path(dir_okay=False),
              help="Calibration text (repeatable; default: built-in English passages).")
@click.option("--percentile", default=capacity.DEFAULT_PERCENTILE, show_default=True,
              type=click.FloatRange(0, 100), help="Budget = this percentile of the samples' information gain.")
@click.option("--first-tokens", default=32, show_default=True, type=click.IntRange(2),
              help="First length tried; the search doubles, then bisects.")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print the profile entry as JSON.")
@quiet_opt
@verbose_opt
@handled
def calibrate(model, device, vectors, vector_dtype, rank, margin, samples, texts, percentile, first_tokens, max_steps,
              batch_size, search_dtype, seed, engine, address, workers, as_json, quiet, verbose):
    """Measure how much information one set of memory vectors holds; store it as a profile."""
    from .models import load_model

    loaded = []
    for p in texts:
        api.check_input(p)
        raw = Path(p).read_bytes()
        try:
            loaded.append((Path(p).name, raw.decode("utf-8")))
        except UnicodeDecodeError:
            raise VecarcError(f"{p}: calibration text must be UTF-8") from None
    settings = CramSettings(mode="vectors", vectors=vectors, vector_dtype=vector_dtype, rank=rank, margin=margin,
                            max_steps=max_steps, batch_size=batch_size, seed=seed, search_dtype=search_dtype)
    lm = load_model(model, device)
    show = not (quiet or as_json)
    if show:
        err.print(f"calibrating {lm.name} · {capacity.profile_key(settings.resolved(lm.hidden_size))} · "
                  f"{samples} samples",
                  markup=False, highlight=False)

    def on(e: dict) -> None:
        if show and e["event"] == "calibrate":
            err.print(_try_line(e), markup=False, highlight=False)

    entry = capacity.calibrate(lm, settings, texts=loaded or None, samples=samples, first_tokens=first_tokens,
                               percentile=percentile, progress=on, engine=engine_for(engine, address, workers))
    path = capacity.save_entry(lm, entry)
    if as_json:
        click.echo(json.dumps({"profile": str(path), "model": lm.name, "fingerprint": lm.fingerprint, **entry},
                              indent=2))
        return
    if quiet:
        return
    t = Table("sample", "source", "tokens held", "nats without", "nats with", "gain", "steps",
              title="capacity per sample", title_justify="left")
    t.columns[1].overflow = "fold"
    for i, x in enumerate(entry["samples"]):
        t.add_row(str(i), x["source"], str(x["tokens"]), f"{x['nats_without']:.1f}", f"{x['nats_with']:.1f}",
                  f"{x['gain']:.1f}", str(x["steps"]))
    out.print(t, highlight=False)
    tk, g = entry["tokens"], entry["gain_nats"]
    out.print(f"budget {entry['budget_nats']:.1f} nats (p{entry['percentile']:g} of gains; min {g['min']:.1f}, "
              f"median {g['median']:.1f}, max {g['max']:.1f}) · tokens held min {tk['min']} median {tk['median']} "
              f"max {tk['max']} · {entry['seconds']:.0f} s · saved {path}", highlight=False, markup=False)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@verbose_opt
@handled
def models(as_json, verbose):
    """Models with stored capacity profiles."""
    rows = capacity.list_profiles(warn=_warner(as_json))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        err.print("no capacity profiles yet (run vecarc calibrate)", highlight=False)
        return
    show_table(out, ["model", "fingerprint", "representation", "budget nats", "tokens held (min/median/max)", "where"],
               [[r["model"], r["fingerprint"], r["representation"], f"{r['budget_nats']:.1f}",
                 "{min}/{median}/{max}".format(**r["tokens"]), r["where"]] for r in rows])


if __name__ == "__main__":
    main()
