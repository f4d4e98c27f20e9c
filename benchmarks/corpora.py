"""Run `vecarc bench` (the default pack) on fixed slices of each corpus; a markdown table on
stdout, every number in --json, the ratio plot in --plot. docs/benchmarks.md's table:

    python -m benchmarks.corpora --sizes 1024,4096,16384 --pack-max 4096 \
        --json docs/benchmarks-bench.json --plot docs/benchmarks-ratio.png

A slice starts at the first line start after 10 % of the file and ends at the
last line end within SIZE bytes, so every run compares the same bytes. Slices
larger than --pack-max get the classic compressors and the model limit only:
packing them with the default model on 2 CPU cores would take hours today.

The slices come from benchmarks/slices/ (README there: the cutting rule, sources,
licences), which holds every slice up to 64 KiB at offset 10 % and up to 16 KiB at
30, 50 and 70 %. Only larger slices, and other offsets, need the whole corpora
(jargon.txt, python-tutorial.rst, fortunes.txt) in ../shared/corpora or --corpora.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from vecarc import PackConfig, load_model
from vecarc.bench import bench_file, classic_rows, machine, model_limit, plot

HERE = Path(__file__).resolve().parent
CORPORA = HERE.parent.parent / "shared" / "corpora"  # the whole corpora, outside the repository
SLICES = HERE / "slices"  # the vendored slices: benchmarks/slices/README.md


@contextmanager
def chdir(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)
FILES = ("jargon.txt", "python-tutorial.rst", "fortunes.txt")
# offset -> how many bytes of the corpus its vendored slice was cut from (then cut after its last line)
SLICE_BYTES = {0.1: 65536, 0.3: 16384, 0.5: 16384, 0.7: 16384}


def corpus_bytes(name: str, corpora: Path | str | None = None) -> bytes:
    """The whole corpus file `name` from `corpora` (default CORPORA), or SystemExit saying where to put it."""
    path = Path(corpora if corpora is not None else CORPORA) / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SystemExit(f"{path} is missing: this needs the whole corpus {name}, not only the slices in "
                         f"{SLICES}; place {name} (sources in {SLICES / 'README.md'}) in {path.parent}") from None


def vendored_slice(name: str, offset: float) -> bytes | None:
    """benchmarks/slices/NAME@PERCENT.txt: corpus_slice(name, SLICE_BYTES[offset], offset), or None."""
    path = SLICES / f"{name}@{round(offset * 100)}.txt"
    return path.read_bytes() if offset in SLICE_BYTES and path.is_file() else None


def corpus_window(name: str, size: int, offset: float = 0.1, corpora: Path | str | None = None) -> bytes:
    """`size` bytes of corpus `name` from its first line start after `offset` (a fraction of its length).

    Read from the vendored slice when it holds them all, else from the whole corpus."""
    vendored = vendored_slice(name, offset)
    if vendored is not None and size <= len(vendored):
        return vendored[:size]
    data = corpus_bytes(name, corpora)
    at = len(data) // 10 if offset == 0.1 else int(len(data) * offset)
    start = data.index(b"\n", at) + 1
    return data[start : start + size]


def corpus_slice(name: str, size: int, offset: float = 0.1, corpora: Path | str | None = None) -> bytes:
    """The fixed slice: corpus_window(name, size, offset) cut after its last line end.

    Offset 0.1 gives the reported slices; 0.3, 0.5 and 0.7 the tuning ones. Every slice up to
    SLICE_BYTES[offset] comes from benchmarks/slices/ (the vendored slice is that size's cut, and a
    smaller size's cut is the cut of its first `size` bytes); others need the whole corpus."""
    vendored = vendored_slice(name, offset)
    if vendored is not None and size <= SLICE_BYTES[offset]:
        piece = vendored[:size]
    else:
        piece = corpus_window(name, size, offset, corpora)
    return piece[: piece.rindex(b"\n") + 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,4096,16384")
    ap.add_argument("--pack-max", type=int, default=1024)
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--corpora", default=str(CORPORA),
                    help="folder of the whole corpora, read only for slices larger than the vendored ones")
    ap.add_argument("--json", help="also write every number here (docs/benchmarks-bench.json)")
    ap.add_argument("--plot", help="also write the ratio plot here (docs/benchmarks-ratio.png; needs matplotlib)")
    ap.add_argument("--forms", default="coded,predict", help="what to pack, as `vecarc bench --vector-dtypes`")
    ap.add_argument("--offset", type=float, default=0.1, help="0.1: the reported slices; 0.3/0.5/0.7: tuning")
    ap.add_argument("--context", type=int, default=0, help="coded chunks after this many tokens before them")
    ap.add_argument("--chunk-tokens", type=int, help="coded chunks of at most this many tokens (default: pack's; "
                    "predicted ones keep pack's default, as with --context)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(None, "cpu")
    results = []
    for name in FILES:
        for size in map(int, args.sizes.split(",")):
            piece = corpus_slice(name, size, args.offset, corpora=args.corpora)
            path = out / f"{name}.{size}"
            path.write_bytes(piece)
            t = time.perf_counter()
            if size <= args.pack_max:  # from its folder, as `vecarc bench NAME` there: the stored name is NAME
                with chdir(out):
                    config = PackConfig(context_tokens=args.context, chunk_tokens=args.chunk_tokens)
                    res = bench_forms(path.name, lm, args.forms.split(","), config)
            else:
                rows = classic_rows(piece, (3, 19))
                lim = model_limit(lm, piece)
                res = {"input": str(path), "bytes": len(piece), "tokens": lim["tokens"], "model": lm.describe(),
                       "machine": machine(lm), "model_limit": lim, "methods": rows, "chunks": {}}
            res["wall_s"] = time.perf_counter() - t
            results.append(res)
            print(f"done {path.name} in {res['wall_s']:.0f} s", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot([r for r in results if any(m["method"].startswith("vecarc") for m in r["methods"])], args.plot)
    print(table(results))


def bench_forms(name: str, lm, forms: list[str], coded: PackConfig) -> dict:
    """bench_file's result for every form, coded ones (and pack's default) packed with `coded`'s chunk size
    and context, the others with pack's defaults: one process, so that their times compare."""
    groups = [([f for f in forms if f in ("coded", "default")], coded),
              ([f for f in forms if f not in ("coded", "default")], PackConfig())]
    res = None
    for group, config in groups:
        if group:
            got = bench_file(name, lm, config=config, vector_dtypes=group)
            if res is None:
                res = got
            else:
                res["methods"] += [m for m in got["methods"] if m["method"].startswith("vecarc")]
                res["chunks"].update(got["chunks"])
    return res


def table(results: list[dict]) -> str:
    """The markdown table docs/benchmarks.md shows: coded and predicted archives beside zstd, xz, the float
    model's limit and the integer model's own cross-entropy, with pack and unpack times."""
    lines = ["| input | bytes | tokens | zstd -19 | xz -9 | vecarc coded | vecarc predict | float limit | "
             "integer limit | coded / float limit | pack s coded / predict | unpack s coded / predict |",
             "|" + "---|" * 12]
    for r in results:
        by = {m["method"]: m for m in r["methods"]}
        c, p, lim, own = by.get("vecarc coded"), by.get("vecarc predicted"), r["model_limit"], by.get(
            "integer model limit")
        cell = lambda m: f"{m['bytes']:,} ({m['ratio']:.2f}x)" if m else "—"  # noqa: E731
        secs = lambda k, pair=(c, p): " / ".join(  # noqa: E731
            format(m[k], ".1f") if m and m[k] else "—" for m in pair)
        lines.append(
            f"| {Path(r['input']).name} | {r['bytes']:,} | {r['tokens']:,} | {cell(by['zstd -19'])} | "
            f"{cell(by['xz -9'])} | {cell(c)} | {cell(p)} | {lim['ideal_bytes']:,.0f} | "
            f"{format(own['bytes'], ',') if own else '—'} | "
            f"{format(c['bytes'] / lim['ideal_bytes'], '.2f') + 'x' if c else '—'} | {secs('compress_s')} | "
            f"{secs('decompress_s')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
