"""Command line: thin wrappers over vecarc.api with zstd-like verbs and flags.

Exit codes: 0 ok, 1 verification failed, 2 usage or input error, 130 interrupted.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import click

from . import api, capacity, display
from . import bench as B
from . import dictionary as dictionaries
from .config import CODED_TOKENS, DEFAULT_FILL, DEFAULT_VOLUME_SIZE, MODES, PREDICT_TOKENS, PackConfig
from .display import progress_bar, say, show_table, warner
from .engine import engine_for
from .errors import VecarcError
from .exact.model import SPEC, not_covered
from .format import write_atomic
from .inputs import check_input, named_inputs, output_for, read_named
from .journal import journal_path
from .models import load_model
from .options import (
    byte_size,
    device_opt,
    dict_opt,
    engine_options,
    handled,
    model_opt,
    quiet_opt,
    reader_options,
    search_options,
    seed_opt,
    verbose_opt,
)
from .plan import MIN_CHUNK_TOKENS
from .search import SearchSettings
from .stdio import archive_to_stdout, streams
from .summary import listing, summary
from .unpacking import reads_dictionary, select
from .volumes import Indexed, open_any

# Ctrl-C inside a backward pass makes autograd warn with the forward call's traceback: noise, not news.
warnings.filterwarnings("ignore", message="Error detected in", category=UserWarning)

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vecarc")
def main() -> None:
    """Archive text as memory vectors of a frozen language model, verified by greedy decoding."""


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Archive path (default: INPUT.vec; - : standard output, once the archive is complete and checked).")
@click.option("--name", default="stdin", show_default=True,
              help="The name standard input (an input of -) is stored under.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Leave out files (or folders) under a folder input whose name or path matches (repeatable).")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing archive.")
@model_opt
@device_opt
@click.option("--mode", default=PackConfig.mode, show_default=True, type=click.Choice(list(MODES)),
              help="coded: tokens range-coded under the integer model (smallest; Llama-family models, else "
                   "predict); predict: the model decodes each chunk alone and the tokens it gets wrong are "
                   "stored; vectors: memory vectors found per chunk.")
@search_options
@click.option("--chunk-tokens", default=None, type=click.IntRange(1),
              help=f"Equal chunks of up to N tokens (default: coded {CODED_TOKENS}, predict {PREDICT_TOKENS}; vectors "
                   f"mode: instead of the capacity plan).")
@click.option("--context", "context_tokens", default=0, show_default=True, type=click.IntRange(0),
              help="Coded chunks: code each chunk after the last N tokens before it in its document (smaller; a "
                   "document's chunks then unpack one after another, not side by side).")
@dict_opt
@click.option("--learn-prefix", default=0, show_default=True, type=click.IntRange(0, 64), metavar="K",
              help="Coded chunks: learn K vectors on the input itself, store them in the archive and code every "
                   "chunk after them, where the archive comes out smaller (large inputs); 0: never.")
@click.option("--min-chunk-tokens", default=MIN_CHUNK_TOKENS, show_default=True, type=click.IntRange(1),
              help="A chunk that fails is split in halves down to this size, then stored as literal tokens.")
@click.option("--fill", default=DEFAULT_FILL, show_default=True, type=click.FloatRange(0, 4, min_open=True),
              help="Plan chunks to this fraction of the calibrated budget.")
@click.option("--compile", "compile_", default=SearchSettings.compile, show_default=True,
              type=click.Choice(["auto", "on", "off"]),
              help="torch.compile the search copy: ~20% cheaper steps after a compile (~230 s the first time, "
                   "~20 s once cached); auto: on the CPU for long jobs.")
@click.option("--resume", is_flag=True, help="Continue the interrupted pack whose work is in OUTPUT.journal.")
@click.option("--checkpoint-every", default=60.0, show_default=True, type=click.FloatRange(0), metavar="SECONDS",
              help="How often the optimiser's state goes to the journal (work lost on a kill is at most this).")
@click.option("--volume-size", default=str(DEFAULT_VOLUME_SIZE >> 20) + "M", show_default=True, metavar="SIZE",
              callback=lambda ctx, p, v: byte_size(v),
              help="Inputs larger than this become volumes OUTPUT.0001, ... of about this many input bytes and an "
                   "index at OUTPUT, so memory follows the volume (K, M, G suffixes; 0: one archive).")
@engine_options
@click.option("--json", "as_json", is_flag=True, help="Print the archive summary as JSON.")
@quiet_opt
@verbose_opt
@handled
def pack(inputs, output, name, exclude, force, model, device, mode, seed, vectors, vector_dtype, rank, chunk_tokens,
         context_tokens, dictionary, learn_prefix, min_chunk_tokens, fill, margin, max_steps, batch_size,
         search_dtype, compile_, resume, checkpoint_every, volume_size, engine, address, workers, as_json, quiet,
         verbose):
    """Pack text files (a folder: every regular file under it, as tar names them) into one .vec archive.

    Chunks follow the model's measured capacity (see `vecarc calibrate`); a model
    without a stored profile is calibrated first.
    """
    search = SearchSettings(vectors=vectors, vector_dtype=vector_dtype, rank=rank, max_steps=max_steps,
                            batch_size=batch_size, seed=seed, search_dtype=search_dtype, compile=compile_)
    config = PackConfig(mode=mode, margin=margin, search=search, chunk_tokens=chunk_tokens,
                        context_tokens=context_tokens, learn_prefix=learn_prefix, min_chunk_tokens=min_chunk_tokens,
                        fill=fill,
                        checkpoint_every=checkpoint_every, volume_size=volume_size,
                        engine=engine_for(engine, address, workers))
    if as_json and output == "-":
        raise VecarcError("--json and -o - both want standard output: give -o FILE for --json")
    with streams(list(inputs), output, name, resume) as (ins, out):
        target = output_for(ins, out)
        try:
            with progress_bar(quiet) as on:
                r = api.pack(ins, out, config, model=model, device=device, force=force, resume=resume, exclude=exclude,
                             progress=on, warn=warner(quiet), dictionary=dictionary, named_by_file=output != "-")
        except KeyboardInterrupt:
            j = journal_path(target)
            kept = f"; finished work is kept in {j} (run the same command with --resume)" if j.exists() else ""
            say(f"vecarc: interrupted; no archive written{kept}")
            sys.exit(130)
        if output == "-":
            archive_to_stdout(r)
            r = replace(r, output=Path("-"))  # the summary names standard output, not the temporary file
    s = summary(r.archive) if r.archive is not None else None
    if as_json:
        if s is None:
            original = sum(d.size for d in r.index.documents)
            click.echo(json.dumps({"index": str(r.output), "volumes": [v.file for v in r.index.volumes],
                                   "original_bytes": original, "archive_bytes": r.archive_bytes,
                                   "seconds": r.seconds, "retries": r.retries}, indent=2))
        else:
            click.echo(json.dumps({**s, "seconds": r.seconds, "retries": r.retries, "output": str(r.output)},
                                  indent=2))
    elif not quiet:
        display.packed(r, s, verbose)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.argument("members", nargs=-1, metavar="[MEMBER]...")
@click.option("-o", "--output", "outdir", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder to write the documents into.")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
@click.option("-c", "--stdout", "to_stdout", is_flag=True,
              help="Write the documents' bytes to standard output instead (as vecarc cat).")
@reader_options
@quiet_opt
@verbose_opt
@handled
def unpack(archive, members, outdir, force, to_stdout, model, device, dictionary, engine, address, workers, quiet,
           verbose):
    """Decode an archive (or a volume index), check every hash, then write the documents.

    MEMBERS (document names or shell globs, as tar takes them) unpack only those documents: only
    their chunks (and an index's volumes that hold them) are decoded.
    """
    where = engine_for(engine, address, workers)
    _say_unused_dictionary(archive, dictionary, quiet)
    if to_stdout:
        return _cat(archive, members, model, device, where, quiet, dictionary)
    with progress_bar(quiet) as on:
        paths = api.unpack(archive, outdir, members, model=model, device=device, force=force, progress=on,
                           engine=where, dictionary=dictionary)
    if not quiet:
        for p in paths:
            say(f"wrote {p}")


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.argument("members", nargs=-1, metavar="[MEMBER]...")
@reader_options
@click.option("--strict", is_flag=True,
              help="Also require the recorded margin at every token, and the same tokens with another thread "
                   "count, attention kernel and batch shape (a bf16 model is reported).")
@click.option("--json", "as_json", is_flag=True)
@quiet_opt
@verbose_opt
@handled
def verify(archive, members, model, device, dictionary, strict, engine, address, workers, as_json, quiet, verbose):
    """Decode everything in memory (a volume index: volume by volume) and check it; exit 1 if anything differs.

    MEMBERS (document names or shell globs) verify only those documents.
    """
    a = open_any(archive)
    _say_unused_dictionary(a, dictionary, quiet or as_json)
    with progress_bar(quiet or as_json) as on:
        r = api.verify(a, members, model=model, device=device, progress=on, strict=strict,
                       engine=engine_for(engine, address, workers), dictionary=dictionary)
    names = [d.name for d in (a.index.documents if isinstance(a, Indexed) else a.documents)]
    wanted = set(names) if not members else select(names, members)
    docs, chunks, margin = len(wanted), None, None
    if not isinstance(a, Indexed):
        chunks = sum(a.documents[c.doc].name in wanted for c in a.chunks)
        margin = a.header.required_margin
    if as_json:
        click.echo(json.dumps({"ok": r.ok, "problems": r.problems, "documents": docs,
                               "min_decode_margin": None if r.min_margin == float("inf") else r.min_margin,
                               **({"required_margin": margin,
                                   "conditions": [c.as_dict() for c in r.stress]} if strict else {})}))
    elif not quiet:
        display.verified(archive, r, docs, chunks, margin)
    sys.exit(0 if r.ok else 1)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@verbose_opt
@handled
def info(archive, as_json, verbose):
    """Show header, model, documents and chunks (of an index: its volumes), without loading the model."""
    a = open_any(archive, load_vectors=False)
    s = summary(a)
    if as_json:
        click.echo(json.dumps(s, indent=2))
    elif isinstance(a, Indexed):
        display.info_index(archive, s)
    else:
        display.info_archive(archive, s)


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.argument("members", nargs=-1, metavar="[MEMBER]...")
@reader_options
@quiet_opt
@verbose_opt
@handled
def cat(archive, members, model, device, dictionary, engine, address, workers, quiet, verbose):
    """Write the documents' bytes (or the MEMBERS', names or globs) to standard output, in archive order,
    once every one has matched its SHA-256: never part of a document."""
    _say_unused_dictionary(archive, dictionary, quiet)
    _cat(archive, members, model, device, engine_for(engine, address, workers), quiet, dictionary)


def _say_unused_dictionary(archive, dictionary, quiet: bool) -> None:
    """A --dict that the archive does not read is harmless, but likely a mistake: say so."""
    if dictionary is not None and not quiet and not reads_dictionary(archive):
        say(f"vecarc: --dict {dictionary} ignored: the archive was packed without a dictionary")


def _cat(archive, members, model, device, engine, quiet, dictionary=None) -> None:
    with progress_bar(quiet) as on:
        api.cat(archive, members, model=model, device=device, progress=on, engine=engine, dictionary=dictionary)


@main.command(name="list")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@verbose_opt
@handled
def list_(archive, as_json, verbose):
    """One line per document: name, size, bytes stored, chunks, how it is stored (no model load)."""
    rows = listing(open_any(archive, load_vectors=False))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    show_table(display.out, ["name", "size", "stored", "chunks", "kind"],
               [[r["name"], str(r["size"]), str(r["stored"]), str(r["chunks"]), "+".join(r["kinds"]) or "empty"]
                for r in rows])


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write every number to this JSON file.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), help="Write a PNG plot (needs matplotlib).")
@click.option("--zstd-levels", default="3,19", show_default=True,
              help="Comma-separated zstd levels (22 is always added).")
@click.option("--vector-dtypes", default="default", show_default=True,
              help="Comma-separated: default (what pack does: coded chunks where the integer path covers the "
                   "model); coded; predict (predicted chunks); vectors (the vectors mode's default form); "
                   "fp32,fp16,bf16,int8,int4, each optionally low-rank (int8r64 is rank 64).")
@click.option("--archive", type=click.Path(), help="Reuse (or create) packed archive(s) here: a .vec or a folder.")
@click.option("--reps", default=5, show_default=True, type=click.IntRange(1), help="Repetitions for zstd/xz times.")
@click.option("--chunk-tokens", default=None, type=click.IntRange(1))
@click.option("--context", "context_tokens", default=0, type=click.IntRange(0), help="As pack's --context.")
@dict_opt
@seed_opt
@model_opt
@device_opt
@quiet_opt
@verbose_opt
@handled
def bench(inputs, json_out, plot_out, zstd_levels, vector_dtypes, archive, reps, chunk_tokens, context_tokens,
          dictionary, seed, model, device, quiet, verbose):
    """Compare vecarc with zstd and xz on the same files: sizes, times, the model's own limit."""
    try:
        levels = [int(x) for x in zstd_levels.split(",") if x.strip()]
    except ValueError:
        raise VecarcError(f"--zstd-levels must be integers, got {zstd_levels!r}") from None
    if any(not 1 <= lv <= 22 for lv in levels):
        raise VecarcError("zstd levels run from 1 to 22")
    dtypes = [x.strip() for x in vector_dtypes.split(",") if x.strip()]
    B.check_dtypes(dtypes)
    for p in inputs:
        check_input(p)  # before the model loads: a typo should not cost seconds
    d = dictionaries.read(dictionary) if dictionary else None
    lm = load_model(model, device)
    lm = dictionaries.attach(lm, d) if d is not None else lm  # coded archives packed and decoded after it
    config = PackConfig(search=SearchSettings(seed=seed), chunk_tokens=chunk_tokens, context_tokens=context_tokens)
    with progress_bar(quiet) as on:
        results = [B.bench_file(p, lm, zstd_levels=levels, vector_dtypes=dtypes, config=config, archive=archive,
                                single=len(inputs) == 1, reps=reps, progress=on) for p in inputs]
    if json_out:
        write_atomic(Path(json_out), json.dumps(results, indent=2).encode(), force=True)
    if plot_out:
        B.plot(results, plot_out)
    if not quiet:
        display.bench_tables(results)


@main.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The dictionary file to write.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--exclude", multiple=True, metavar="PATTERN", help="As pack's --exclude, for folders of the corpus.")
@click.option("--vectors", default=dictionaries.TrainConfig.vectors, show_default=True,
              type=click.IntRange(1, dictionaries.MAX_VECTORS), help="Memory vectors in the dictionary.")
@click.option("--steps", default=dictionaries.TrainConfig.steps, show_default=True, type=click.IntRange(0),
              help="Optimiser steps (a chunk of the corpus each).")
@click.option("--lr", default=dictionaries.TrainConfig.lr, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--batch", default=dictionaries.TrainConfig.batch, show_default=True, type=click.IntRange(1),
              help="Chunks per step.")
@click.option("--held-out", default=dictionaries.TrainConfig.held_out, show_default=True, type=click.IntRange(0),
              help="Chunks kept out of training, spread over the corpus, on which the gain is measured.")
@seed_opt
@model_opt
@device_opt
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@quiet_opt
@verbose_opt
@handled
def train(corpus, output, force, exclude, vectors, steps, lr, batch, held_out, seed, model, device, as_json, quiet,
          verbose):
    """Learn a dictionary: memory vectors that every coded chunk of `pack --dict FILE` is coded after.

    Trained on the corpus (files, or folders of them) for the model given; the gain is measured
    exactly on held-out chunks of it."""
    out = Path(output)
    if out.exists() and not force:
        raise VecarcError(f"{out} exists (use -f to overwrite)")
    cfg = dictionaries.TrainConfig(vectors, steps, lr, batch=batch, held_out=held_out, seed=seed).checked()
    texts = [data for _, data in read_named(named_inputs(list(corpus), exclude, warner(quiet)))]
    lm = load_model(model, device)
    with progress_bar(quiet or as_json) as on:
        t = dictionaries.train(lm, texts, cfg, on, info={"corpus_bytes": sum(map(len, texts))})
    dictionaries.write(out, t.data, force=force)
    report = dictionaries.train_report(t) | {"output": str(out)}
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not quiet:
        display.trained(report)


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
    loaded = []
    for p in texts:
        check_input(p)
        try:
            loaded.append((Path(p).name, Path(p).read_bytes().decode("utf-8")))
        except UnicodeDecodeError:
            raise VecarcError(f"{p}: calibration text must be UTF-8") from None
    settings = SearchSettings(vectors=vectors, vector_dtype=vector_dtype, rank=rank, margin=margin,
                              max_steps=max_steps, batch_size=batch_size, seed=seed, search_dtype=search_dtype)
    lm = load_model(model, device)
    show = not (quiet or as_json)
    if show:
        say(f"calibrating {lm.name} · {capacity.profile_key(settings.resolved(lm.hidden_size))} · {samples} samples")

    def on(e: dict) -> None:
        if show and e["event"] == "calibrate":
            say(display.try_line(e))

    where = engine_for(engine, address, workers)
    try:
        entry = capacity.calibrate(lm, settings, texts=loaded or None, samples=samples, first_tokens=first_tokens,
                                   percentile=percentile, progress=on, engine=where)
    finally:
        if where is not None:
            where.close()
    path = capacity.save_entry(lm, entry)
    if as_json:
        click.echo(json.dumps({"profile": str(path), "model": lm.name, "fingerprint": lm.fingerprint, **entry},
                              indent=2))
    elif not quiet:
        display.calibrated(entry, path)


@main.command()
@click.option("--model", default=None, metavar="NAME_OR_PATH",
              help="Also say which path pack takes for this model (loads it; 'default': the default model).")
@click.option("--json", "as_json", is_flag=True)
@verbose_opt
@handled
def models(model, as_json, verbose):
    """Models with stored capacity profiles, and (--model) whether a model gets coded chunks."""
    rows = capacity.list_profiles(warn=warner(as_json))
    path = None
    if model is not None:
        lm = load_model(None if model == "default" else model, "cpu")
        why = not_covered(lm.model)
        path = {"model": lm.name, "fingerprint": lm.fingerprint, "pack": "predict" if why else "coded",
                "integer_path": None if why else f"specification {SPEC}", "why_not": why}
    if as_json:
        click.echo(json.dumps(rows if path is None else {"path": path, "profiles": rows}, indent=2))
        return
    if path is not None:
        say(f"{path['model']}: " + (f"coded chunks (integer model, {path['integer_path']})" if not path["why_not"]
                                    else f"predicted chunks: the integer path does not cover it ({path['why_not']})"))
    if not rows:
        say("no capacity profiles yet (run vecarc calibrate)")
        return
    show_table(display.out, ["model", "fingerprint", "representation", "budget nats",
                             "tokens held (min/median/max)", "where"],
               [[r["model"], r["fingerprint"], r["representation"], f"{r['budget_nats']:.1f}",
                 "{min}/{median}/{max}".format(**r["tokens"]), r["where"]] for r in rows])


if __name__ == "__main__":
    main()
