"""What the CLI shows: progress on a terminal, tables, and the summaries of each command.

On a terminal: rich progress and tables. Piped: no progress, and plain tab-separated
rows that keep every field whole (a name is never cut to fit a width).
"""

from __future__ import annotations

from contextlib import contextmanager

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

# Lines are never wrapped to a width: piped, a path or a name must stay on its line.
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def say(text: str, console: Console = err) -> None:
    """One line as it is: text, never markup (names are data)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def warner(quiet: bool):
    def warn(msg: str) -> None:
        if not quiet:
            say(f"vecarc: {msg}")

    return warn


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
        yield lambda e: _on_event(bar, tasks, e)


def _on_event(bar: Progress, tasks: dict[str, int], e: dict) -> None:
    kind = e["event"]
    if kind == "plan":
        if "cal" in tasks:
            bar.remove_task(tasks.pop("cal"))
        tasks["cram"] = bar.add_task("packing", total=e["chunks"], info="")
    elif kind == "step" and "cram" in tasks:
        bar.update(tasks["cram"], completed=e["done"], total=e["total"],
                   info=f"step {e['step']} · {e['active']} active · acc {e['accuracy']:.0%} · loss {e['loss']:.3f}")
    elif kind in ("predict", "shard") and "cram" in tasks:
        bar.update(tasks["cram"], completed=e["done"], total=e["total"],
                   info=("coded" if e.get("coded") else "predicted and checked") if kind == "predict" else
                   "crammed and checked")
    elif kind == "calibrate":
        if "cal" not in tasks:
            tasks["cal"] = bar.add_task("calibrating", total=None, info="")
        bar.console.print(try_line(e), markup=False, highlight=False)
        bar.update(tasks["cal"], info=f"sample {e['sample']} · {e['tokens']} tokens")
    elif kind == "note":
        bar.console.print(f"vecarc: {e['message']}", markup=False, highlight=False)
    elif kind in _COUNTED:  # tokens: greedy steps, every few: what moves while one batch decodes
        _count(bar, tasks, kind, e)


_COUNTED = {"tokens": "tokens", "decode": "decoding", "train": "training"}


def _count(bar: Progress, tasks: dict[str, int], kind: str, e: dict) -> None:
    """A bar that counts to e["total"] (removed once it gets there), with its speed or loss alongside."""
    if kind not in tasks:
        tasks[kind] = bar.add_task(_COUNTED[kind], total=e["total"], info="")
    bar.update(tasks[kind], completed=e["done"], total=e["total"])
    if kind == "tokens":
        speed = next(t.speed for t in bar.tasks if t.id == tasks[kind])
        bar.update(tasks[kind], info=f"{speed:,.0f} tokens/s" if speed else "")
    elif kind == "train":
        bar.update(tasks[kind], info=f"{e['bits']:.3f} bits a token")
    if e["done"] >= e["total"]:
        tasks.pop(kind)


def trained(r: dict) -> None:
    """vecarc train's summary: the file, and the gain measured on held-out chunks."""
    say(f"wrote {r['output']}: dictionary {r['dictionary']}, {r['vectors']} vectors ({r['file_bytes']:,} bytes), "
        f"trained on {r['train_chunks']} chunks in {r['seconds']:.0f} s; on {r['held_chunks']} held-out chunks "
        f"{r['held_bytes_without']:,} -> {r['held_bytes_with']:,} bytes ({r['gain']:.1%} smaller)")


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


def size(n: int) -> str:
    return f"{n:,} B"


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def num(x, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def try_line(e: dict) -> str:
    margin = "     -" if e["margin"] is None else f"{e['margin']:>6.2f}"  # a Ray worker's try: not sent back
    return (f"  sample {e['sample']:>2}  {e['tokens']:>4} tokens  {e['steps']:>4} steps  "
            f"margin {margin}  {'pass' if e['ok'] else 'fail'}")


# ---------------------------------------------------------------- pack


def packed(r, s: dict | None, verbose: bool) -> None:
    """pack's closing line (and with -v, a row per chunk); s: the archive's summary, None for volumes."""
    if r.index is not None:
        original = sum(d.size for d in r.index.documents)
        say(f"{r.output}: {size(original)} -> {size(r.archive_bytes)} (ratio {original / r.archive_bytes:.3f}) in "
            f"{count(len(r.index.volumes), 'volume')} ({r.output}.0001 ...), {r.retries} retries, {r.seconds:.1f} s")
        return
    if verbose:
        show_table(err, ["chunk", "document", "kind", "tokens", "steps", "margin"], [
            [str(i), r.archive.documents[ch.doc].name, ch.kind, str(ch.tokens or ""),
             "" if ch.steps is None else str(ch.steps), "" if ch.margin is None else f"{ch.margin:.3f}"]
            for i, ch in enumerate(r.archive.chunks)])
    c = s["chunks"]
    say(f"{r.output}: {size(s['original_bytes'])} -> {size(r.archive_bytes)} "
        f"(ratio {s['original_bytes'] / r.archive_bytes:.3f}); "
        + (f"{c['coded']} coded" if c["coded"] or s["format_version"] in (5, 6) else
           f"{c['vector']} vector / {c['predicted']} predicted ({c['corrections']} corrections)")
        + f" / {c['tokens'] + c['bytes']} literal chunks, {r.retries} retries, {r.seconds:.1f} s")


# ---------------------------------------------------------------- verify


def verified(name: str, r, docs: int, chunks: int | None, margin: float | None) -> None:
    if r.stress:
        show_table(err, ["condition", "chunks", "flips", "min decode margin", "max drift", "binding"],
                   [[c.name, str(c.chunks), str(c.flips), f"{c.min_margin:.4f}", f"{c.max_drift:.2e}",
                     "yes" if c.binding else "report"] if c.skipped is None else
                    [c.name, "", "", "", "", f"skipped: {c.skipped}"] for c in r.stress],
                   title="decoding under other conditions"
                         + (f" (recorded margin {margin:g})" if margin is not None else ""))
    for p in r.problems:
        say(f"FAILED {p}")
    if r.ok:
        what = count(docs, "document") + (f", {count(chunks, 'chunk')}" if chunks is not None else "")
        say(f"{name}: OK ({what})")


# ---------------------------------------------------------------- info


def info_archive(name: str, s: dict) -> None:
    m, v, c = s["model"], s["vectors"], s["chunks"]
    layers = f" · layers {m['num_layers']}" if "num_layers" in m else ""  # informational: may be missing
    t = [
        ["archive", f"{name}  {size(s['archive_bytes'])}"],
        ["original", f"{size(s['original_bytes'])}  ratio {s['ratio']:.3f}" if s["ratio"] else "0 B"],
        ["split", f"vectors {size(s['vector_bytes'])} · corrections {size(s['corrections_bytes'])} · "
                  f"coded {size(s['coded_bytes'])} · literal {size(s['literal_bytes'])} · "
                  f"header+checksum {size(s['overhead_bytes'])}"],
        ["format", f"version {s['format_version']}" + (" · coded chunks under the integer model (specification 1)"
                                                        if s["format_version"] in (5, 6) else "")
         + (f" · each after the {ctx} tokens before it" if (ctx := s["cram"].get("context_tokens")) else "")
         + (f" · after dictionary {d} (unpack --dict FILE)" if (d := s["cram"].get("dictionary")) else "")
         + (f" · after its own {p['vectors']} vectors ({size(p['stored_bytes'])}; saved {size(p['saved_bytes'])})"
            if (p := s.get("prefix")) else "")
         + (" · its document named after the file (no name stored)" if s.get("name_from_file") else "")],
        ["model", m["name"]],
        ["source", m["source"]],
        ["fingerprint", m["fingerprint"]],
        ["dims", f"hidden {m['hidden_size']} · vocab {m['vocab_size']}{layers} · {m['dtype']}"],
        ["vectors", "none" if not v["count"] else f"{v['count']} × {v['per_chunk']} × {v['hidden_size']} {v['dtype']}"
                    + (f", stored as {v['rank']} coordinates each (rank {v['rank']})" if v["rank"] else "")],
    ]
    t += _plan_rows(s)
    tpv = c["tokens_per_vector"]
    t.append(["chunks", f"{c['total']}: {c['coded']} coded, {c['vector']} vector, {c['predicted']} predicted, "
                        f"{c['tokens']} literal-token, {c['bytes']} literal-bytes"
              + (f" · tokens/vector min {tpv['min']} median {tpv['median']} max {tpv['max']}" if tpv else "")
              + (f" · min margin {c['min_margin']:.3f}" if c["min_margin"] is not None else "")])
    show_table(out, None, t)
    show_table(out, ["document", "bytes", "stored as", "chunks", "tokens", "sha256"], [
        [doc["name"], f"{doc['size']:,}", "literal zstd" if doc["encoding"] == "bytes" else _stored_as(doc),
         str(doc["chunks"]), str(doc["tokens"]), doc["sha256"][:16]] for doc in s["documents"]],
        title=count(len(s["documents"]), "document"))


def _plan_rows(s: dict) -> list[list[str]]:
    c, plan, rows = s["chunks"], s.get("plan") or {}, []
    if plan.get("method") == "capacity":
        pn = c["planned_nats_per_vector"] or {}
        rows.append(["plan", f"capacity: budget {plan['budget_nats']:.1f} nats × fill {plan['fill']} · "
                             f"planned nats/vector min {num(pn.get('min'), '{:.1f}')} "
                             f"median {num(pn.get('median'), '{:.1f}')} max {num(pn.get('max'), '{:.1f}')} · "
                             f"{plan['chunks_planned']} planned, {plan['retries']} retries"])
    elif plan:
        rows.append(["plan", f"fixed: {plan['chunk_tokens']} tokens · {plan['chunks_planned']} planned, "
                             f"{plan['retries']} retries"])
    if c["predicted"]:
        rows.append(["predicted", f"{count(c['predicted'], 'chunk')} · {c['predicted_tokens']:,} tokens · "
                                  f"{c['corrections']:,} corrections ({c['corrections'] / c['predicted_tokens']:.0%})"])
    return rows


def _stored_as(doc: dict) -> str:
    parts = [f"{doc[k + '_chunks']} {k}" for k in ("coded", "vector", "predicted") if doc[k + "_chunks"]]
    return " + ".join(parts + [f"{doc['literal_chunks']} literal"])


def info_index(name: str, s: dict) -> None:
    ratio = f"  ratio {s['original_bytes'] / s['archive_bytes']:.3f}" if s["archive_bytes"] else ""
    show_table(out, None, [["index", f"{name}  {count(len(s['volumes']), 'volume')}"],
                           ["stored", f"{size(s['archive_bytes'])} (index and volumes)"],
                           ["original", f"{size(s['original_bytes'])}{ratio}"]])
    show_table(out, ["volume", "bytes", "original", "documents", "chunks"],
               [[v["file"], f"{v['bytes']:,}", f"{v['original_bytes']:,}", str(v["documents"]), str(v["chunks"])]
                for v in s["volumes"]], title=count(len(s["volumes"]), "volume"))
    show_table(out, ["document", "bytes", "volumes", "sha256"],
               [[d["name"], f"{d['size']:,}", ", ".join(d["parts"]), d["sha256"][:16]] for d in s["documents"]],
               title=count(len(s["documents"]), "document"))


# ---------------------------------------------------------------- bench and calibrate


def bench_tables(results: list[dict]) -> None:
    for res in results:
        t = Table(title=f"{res['input']} · {res['bytes']:,} B · {num(res['tokens'])} tokens", title_justify="left")
        for col in ("method", "bytes", "ratio", "compress s", "decompress s"):
            t.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
        for m in res["methods"]:
            t.add_row(m["method"], f"{m['bytes']:,}", num(m["ratio"], "{:.3f}"), num(m["compress_s"], "{:.3g}"),
                      num(m["decompress_s"], "{:.3g}"))
        out.print(t, highlight=False)
        for m in res["methods"]:
            if (note := _bench_note(m)) is not None:
                say("  " + note, out)
    mach, mod = results[0]["machine"], results[0]["model"]
    say(f"model {mod['name']} · {mod['fingerprint']} · device {mach['device']} · {mach['torch_threads']} "
        f"threads · torch {mach['torch']} · transformers {mach['transformers']} · zstandard "
        f"{mach['zstandard']} · vecarc {mach['vecarc']}", out)


def _bench_note(m: dict) -> str | None:
    check = f", verify {'ok' if m.get('verify_ok') else 'FAILED'}" + ("; reused archive" if m.get("reused_archive")
                                                                       else "")
    if m["method"] == "vecarc predicted":
        n, toks = m["corrections"], m["predicted_tokens"]
        return (f"{m['method']}: corrections {m['corrections_bytes']:,} B + header {m['header_bytes']:,} B + "
                f"literal {m['literal_bytes']:,} B; {n:,} corrections for {toks:,} predicted tokens"
                + (f" ({m['corrections_bytes'] * 8 / n:.1f} bits each)" if n else "") + check)
    if m["method"] == "vecarc coded":
        return (f"{m['method']}: coded {m['coded_bytes']:,} B + header {m['header_bytes']:,} B + literal "
                f"{m['literal_bytes']:,} B; {m['coded_bytes'] * 8 / max(1, m['coded_tokens']):.2f} bits "
                f"per token stored" + check)
    if m["method"].startswith("vecarc"):
        tpv = m["tokens_per_vector"] or {}
        return (f"{m['method']}: vectors {m['vector_bytes']:,} B + header {m['header_bytes']:,} B + literal "
                f"{m['literal_bytes']:,} B; {m['vectors']} vectors ({m['vectors_per_kb']:.1f} per KB), "
                f"tokens/vector {tpv.get('median', '—')}, steps/chunk {num(m['steps_median'])}, "
                f"{num(m['gain_bits_per_vector_median'])} of {m['bits_stored_per_vector']:,} stored bits "
                f"removed per vector (utilisation {num(m['utilisation'], '{:.1%}')})" + check)
    if m["method"].startswith("model limit"):
        return (f"model limit: {m['ce_bits']:,.0f} bits of cross-entropy without vectors, "
                f"{m['bits_per_byte']:.2f} bits per byte")
    if m["method"] == "integer model limit":
        return f"integer model limit: {m['ce_bits']:,.0f} bits of the integer model's own cross-entropy"
    return None


def calibrated(entry: dict, path) -> None:
    t = Table("sample", "source", "tokens held", "nats without", "nats with", "gain", "steps",
              title="capacity per sample", title_justify="left")
    t.columns[1].overflow = "fold"
    for i, x in enumerate(entry["samples"]):
        t.add_row(str(i), x["source"], str(x["tokens"]), f"{x['nats_without']:.1f}", f"{x['nats_with']:.1f}",
                  f"{x['gain']:.1f}", str(x["steps"]))
    out.print(t, highlight=False)
    tk, g = entry["tokens"], entry["gain_nats"]
    say(f"budget {entry['budget_nats']:.1f} nats (p{entry['percentile']:g} of gains; min {g['min']:.1f}, "
        f"median {g['median']:.1f}, max {g['max']:.1f}) · tokens held min {tk['min']} median {tk['median']} "
        f"max {tk['max']} · {entry['seconds']:.0f} s · saved {path}", out)
