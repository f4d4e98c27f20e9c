"""Run `vecarc bench` on fixed slices of each corpus in ../shared/corpora and write
docs/benchmarks-bench.json (every number) plus a markdown table on stdout.

    python -m benchmarks.corpora [--sizes 1024,4096,16384] [--pack-max 1024] [--out DIR]

A slice starts at the first line start after 10 % of the file and ends at the
last line end within SIZE bytes, so every run compares the same bytes. Slices
larger than --pack-max get the classic compressors and the model limit only:
packing them with the default model on 2 CPU cores would take hours today.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vecarc import CramSettings, load_model
from vecarc.bench import bench_file, classic_rows, machine, model_limit

CORPORA = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
FILES = ("jargon.txt", "python-tutorial.rst", "fortunes.txt")


def fixed_slice(data: bytes, size: int) -> bytes:
    start = data.index(b"\n", len(data) // 10) + 1
    piece = data[start : start + size]
    return piece[: piece.rindex(b"\n") + 1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,4096,16384")
    ap.add_argument("--pack-max", type=int, default=1024)
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--corpora", default=str(CORPORA))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_model(None, "cpu")
    results = []
    for name in FILES:
        data = (Path(args.corpora) / name).read_bytes()
        for size in map(int, args.sizes.split(",")):
            piece = fixed_slice(data, size)
            path = out / f"{name}.{size}"
            path.write_bytes(piece)
            t = time.perf_counter()
            if size <= args.pack_max:
                res = bench_file(path, lm, archive=out / f"{path.name}.vec", settings=CramSettings())
            else:
                rows = classic_rows(piece, (3, 19))
                lim = model_limit(lm, piece)
                res = {"input": str(path), "bytes": len(piece), "tokens": lim["tokens"], "model": lm.describe(),
                       "machine": machine(lm), "model_limit": lim, "methods": rows, "chunks": {}}
            res["wall_s"] = time.perf_counter() - t
            results.append(res)
            print(f"done {path.name} in {res['wall_s']:.0f} s", flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))


def table(results: list[dict]) -> str:
    lines = ["| input | bytes | tokens | zstd -19 | xz -9 | vecarc fp16 | model limit | tokens/vector | steps/chunk | "
             "utilisation | pack s |", "|" + "---|" * 11]
    for r in results:
        by = {m["method"]: m for m in r["methods"]}
        v = by.get("vecarc fp16")
        lim = r["model_limit"]
        cell = lambda m: f"{m['bytes']:,} ({m['ratio']:.2f}x)"  # noqa: E731
        lines.append(
            f"| {Path(r['input']).name} | {r['bytes']:,} | {r['tokens']:,} | {cell(by['zstd -19'])} | "
            f"{cell(by['xz -9'])} | {cell(v) if v else 'not packed'} | "
            f"{lim['ideal_bytes']:,.0f} ({r['bytes'] / lim['ideal_bytes']:.2f}x) | "
            f"{v['tokens_per_vector']['median'] if v else '—'} | {v['steps_median'] if v else '—'} | "
            f"{format(v['utilisation'], '.1%') if v and v['utilisation'] else '—'} | "
            f"{format(v['compress_s'], '.0f') if v and v['compress_s'] else '—'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
