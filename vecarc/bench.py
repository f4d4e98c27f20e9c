"""Side-by-side measurement of vecarc against zstd and xz on the same bytes.

Besides sizes and times it reports the model's own limit: the text's
cross-entropy under the model without vectors, which is the size an ideal
arithmetic coder driven by the same model would reach, and how many of the
bits stored in each vector actually remove uncertainty (utilisation).
"""

from __future__ import annotations

import hashlib
import lzma
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
import zstandard

from . import api
from .config import PackConfig
from .entropy import bits, text_nll, token_nll
from .errors import VecarcError
from .format import Archive, read_archive
from .inputs import check_input
from .models import LoadedModel
from .search import VECTOR_DTYPES, SearchSettings
from .summary import summary
from .text import tokenize_exact
from .unpacking import decode_archive, model_for
from .version import __version__

Timer = Callable[[], object]


def _median_time(fn: Timer, reps: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def _row(method: str, original: int, size: int, comp: float, decomp: float, **extra) -> dict:
    return {"method": method, "bytes": size, "ratio": original / size if size else None,
            "compress_s": comp, "decompress_s": decomp, **extra}


def classic_rows(data: bytes, zstd_levels: Sequence[int], reps: int = 5) -> list[dict]:
    """zstd at each level (22 means --ultra -22) and xz -9, times as medians over reps."""
    rows = []
    for level in sorted(set(zstd_levels) | {22}):
        cctx = zstandard.ZstdCompressor(level=level)
        comp_t, frame = _median_time(lambda c=cctx: c.compress(data), reps)
        dctx = zstandard.ZstdDecompressor()
        dec_t, back = _median_time(lambda d=dctx, f=frame: d.decompress(f, max_output_size=len(data) or 1), reps)
        assert back == data
        name = f"zstd --ultra -{level}" if level > 19 else f"zstd -{level}"
        rows.append(_row(name, len(data), len(frame), comp_t, dec_t, level=level))
    comp_t, xz = _median_time(lambda: lzma.compress(data, preset=9), reps)
    dec_t, back = _median_time(lambda: lzma.decompress(xz), reps)
    assert back == data
    rows.append(_row("xz -9", len(data), len(xz), comp_t, dec_t))
    return rows


def model_limit(lm: LoadedModel, data: bytes) -> dict | None:
    """Bits an ideal coder driven by this model needs for `data` (None if not text)."""
    ids = tokenize_exact(lm, data)
    if ids is None:
        return None
    t = time.perf_counter()
    nll = text_nll(lm, ids)
    total = bits(sum(nll))
    return {"tokens": len(ids), "ce_bits": total, "ideal_bytes": total / 8,
            "bits_per_byte": total / len(data) if data else 0.0,
            "ideal_ratio": len(data) / (total / 8) if total else None, "seconds": time.perf_counter() - t}


def integer_limit(lm: LoadedModel, data: bytes, window: int = 1024) -> dict | None:
    """The integer model's own cross-entropy of `data` in bits, read as model_limit reads (windows of
    `window` tokens after the sink): what coded chunks of that length would cost with an ideal coder."""
    from .chunks.coded import integer_model
    from .exact.model import not_covered

    ids = tokenize_exact(lm, data)
    if ids is None or not_covered(lm.model) or not len(ids):
        return None
    im, total = integer_model(lm), 0.0
    for a in range(0, len(ids), window):
        part = torch.tensor([list(ids[a : a + window])])
        sym = im.symbols(torch.cat([torch.tensor([[lm.sink_id]]), part[:, :-1]], 1), part)[0].double()
        total += float(-torch.log2(sym[:, 1] / sym[:, 2]).sum())
    return {"tokens": len(ids), "ce_bits": total}


def chunk_gains(lm: LoadedModel, archive: Archive, tokens: dict[int, list[int]]) -> list[dict]:
    """Per vector chunk: tokens held, cross-entropy without and with its vectors, in bits."""
    idx = [i for i, c in enumerate(archive.chunks) if c.kind == "vector"]
    chunks = [tokens[i] for i in idx]
    vecs = [archive.row(archive.chunks[i]) for i in idx]
    without = token_nll(lm, chunks)
    with_v = token_nll(lm, chunks, vecs)
    return [{"chunk": i, "tokens": len(c), "steps": archive.chunks[i].steps,
             "ce_without_bits": bits(sum(a)), "ce_with_bits": bits(sum(b)), "gain_bits": bits(sum(a) - sum(b))}
            for i, c, a, b in zip(idx, chunks, without, with_v)]


def _archive_path(archive: str | Path | None, name: str, dtype: str, single: bool) -> Path | None:
    if archive is None:
        return None
    p = Path(archive)
    if single and p.suffix == ".vec":
        return p
    p.mkdir(parents=True, exist_ok=True)  # pack's default archive as pack names it (so it stores no name)
    return p / (f"{Path(name).name}.vec" if dtype in ("default", "coded") else f"{Path(name).name}.{dtype}.vec")


def vecarc_row(
    path: Path, data: bytes, lm: LoadedModel, cfg: PackConfig, archive_path: Path | None = None, progress=None,
) -> tuple[dict, Archive, dict[int, list[int]]]:
    """Pack (or reuse a packed archive), time a decode, and take the archive apart."""
    reused = archive_path is not None and archive_path.exists()
    if reused:
        archive = read_archive(archive_path)
        doc = archive.documents[0] if len(archive.documents) == 1 else None
        if doc is None or doc.sha256 != hashlib.sha256(data).hexdigest():
            raise VecarcError(f"{archive_path} does not hold exactly {path}; delete it or pick another --archive")
        lm = model_for(archive, lm)  # with what its coded chunks read (a dictionary: the reader says which)
        pack_s, retries = None, None
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = archive_path or Path(tmp) / f"{path.name}.vec"  # as pack names it: the name is not stored
            one = replace(cfg, volume_size=0)  # one archive, whatever the size: that is what is measured
            r = api.pack([path], out, one, model=lm, force=True, progress=progress)
            archive, pack_s, retries = r.archive, r.seconds, r.retries
    t = time.perf_counter()
    decoded = decode_archive(archive, lm, progress=progress)
    unpack_s = time.perf_counter() - t
    s = summary(archive)
    steps = [c.steps for c in archive.chunks if c.kind == "vector" and c.steps is not None]
    row = _row(
        {"coded": "vecarc coded"}.get(archive.header.cram.get("mode"), "vecarc predicted") if cfg.predicted else
        f"vecarc {archive.header.vectors.dtype}" + (f" rank {r}" if (r := archive.header.vectors.rank) else ""),
        len(data), archive.size, pack_s, unpack_s,
        vector_bytes=s["vector_bytes"], literal_bytes=s["literal_bytes"], header_bytes=s["overhead_bytes"],
        coded_bytes=s["coded_bytes"],
        corrections_bytes=s["corrections_bytes"], corrections=s["chunks"]["corrections"],
        predicted_tokens=s["chunks"]["predicted_tokens"], coded_tokens=s["chunks"]["coded_tokens"],
        vectors=archive.header.vectors.count, per_chunk=archive.header.vectors.per_chunk,
        literal_chunks=s["chunks"]["tokens"] + s["chunks"]["bytes"],
        tokens_per_vector=s["chunks"]["tokens_per_vector"],
        vectors_per_kb=archive.header.vectors.count / (len(data) / 1024) if data else 0.0,
        steps_median=statistics.median(steps) if steps else None, retries=retries,
        verify_ok=decoded.ok, reused_archive=reused,
    )
    return row, archive, decoded.tokens


def machine(lm: LoadedModel) -> dict:
    import tokenizers
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "device": str(lm.device) + (f" ({torch.cuda.get_device_name()})" if lm.device.type == "cuda" else ""),
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "vecarc": __version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "zstandard": zstandard.__version__,
    }


PREDICT_FORMS = ("coded", "predict", "default")  # chunks decoded from the sink; "default": what pack does


def parse_form(text: str) -> tuple[str, int | None]:
    """'int8' -> ('int8', 0); 'int4r64' -> ('int4', 64); 'vectors' -> the vectors mode's default form."""
    if text == "vectors":
        return SearchSettings.vector_dtype, None
    m = re.fullmatch(rf"({'|'.join(VECTOR_DTYPES)})(?:r([1-9][0-9]{{0,4}}))?", text)
    if m is None:
        raise VecarcError(f"unknown vector representation {text!r}: one of {', '.join(VECTOR_DTYPES)}, "
                          "optionally with rN for rank N (e.g. int8r64)")
    return m[1], int(m[2] or 0)


def check_dtypes(dtypes: Sequence[str]) -> None:
    for dt in dtypes:
        if dt not in PREDICT_FORMS:
            parse_form(dt)


def _config_for(base: PackConfig, form: str) -> PackConfig:
    if form in PREDICT_FORMS:  # --context applies to coded chunks alone
        mode = {"default": PackConfig.mode}.get(form, form)
        return replace(base, mode=mode, context_tokens=base.context_tokens if mode == "coded" else 0)
    dtype, rank = parse_form(form)
    return replace(base, mode="vectors", search=replace(base.search, vector_dtype=dtype, rank=rank), context_tokens=0)


def bench_file(
    path: str | Path,
    lm: LoadedModel,
    *,
    zstd_levels: Sequence[int] = (3, 19),
    vector_dtypes: Sequence[str] = ("default",),
    config: PackConfig | None = None,
    archive: str | Path | None = None,
    single: bool = True,
    reps: int = 5,
    progress=None,
) -> dict:
    """Every number `vecarc bench` reports for one input."""
    path = check_input(path)
    data = path.read_bytes()
    check_dtypes(vector_dtypes)
    base = config or PackConfig()
    rows = classic_rows(data, zstd_levels, reps)
    limit = model_limit(lm, data)
    per_chunk: dict[str, list[dict]] = {}
    for dt in vector_dtypes:
        cfg = _config_for(base, dt)
        apath = _archive_path(archive, str(path), dt, single and len(vector_dtypes) == 1)
        row, a, toks = vecarc_row(path, data, lm, cfg, apath, progress)
        gains = chunk_gains(lm, a, toks) if row["verify_ok"] and a.vectors is not None else []
        v = a.header.vectors
        # Bits actually stored per vector: the section as written (zstd-compressed for integer forms).
        stored = None if cfg.predicted else round(v.section[1] * 8 / v.count) if v.count else v.row_bytes * 8
        g = [c["gain_bits"] for c in gains]
        row["bits_stored_per_vector"] = stored
        row["gain_bits_per_vector_median"] = statistics.median(g) if g else None
        row["utilisation"] = (statistics.median(g) / stored) if g else None
        row["bits_per_token"] = (row["bytes"] * 8 / limit["tokens"]) if limit and limit["tokens"] else None
        rows.append(row)
        per_chunk[dt] = gains
    if limit:
        rows.append(_row("model limit (ideal coder)", len(data), max(1, round(limit["ideal_bytes"])), None, None,
                         ce_bits=limit["ce_bits"], bits_per_byte=limit["bits_per_byte"]))
        own = integer_limit(lm, data)
        if own:
            rows.append(_row("integer model limit", len(data), max(1, round(own["ce_bits"] / 8)), None, None,
                             ce_bits=own["ce_bits"], bits_per_byte=own["ce_bits"] / len(data)))
    return {"input": str(path), "bytes": len(data), "tokens": limit["tokens"] if limit else None,
            "model": lm.describe(), "machine": machine(lm), "model_limit": limit, "methods": rows,
            "chunks": per_chunk}


def plot(results: list[dict], out: str | Path) -> None:
    """Ratio per method and input, and tokens held against bits removed per chunk."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise VecarcError("--plot needs matplotlib: pip install 'vecarc[plot]'") from None
    vectors = any(gains for res in results for gains in res["chunks"].values())  # a second panel if any
    fig, axes = plt.subplots(1, 2 if vectors else 1, figsize=(13 if vectors else 8, 5), squeeze=False)
    ax1 = axes[0][0]
    methods = [r["method"] for r in results[0]["methods"]]
    width = 0.8 / max(1, len(results))
    for j, res in enumerate(results):
        ratios = [m["ratio"] or 0 for m in res["methods"]]
        ax1.bar([i + j * width for i in range(len(methods))], ratios, width, label=Path(res["input"]).name)
    ax1.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(methods))])
    ax1.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.set_ylabel("compression ratio (original / stored)")
    ax1.legend(fontsize=8)
    if vectors:
        _chunk_panel(axes[0][1], results)
    m = results[0]["model"]
    fig.suptitle(f"vecarc vs zstd/xz · {m['name']} · {m['fingerprint'][:19]}…", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _chunk_panel(ax, results: list[dict]) -> None:
    """Tokens each vector held against the cross-entropy it removed."""
    for res in results:
        for dt, gains in res["chunks"].items():
            if gains:
                ax.scatter([g["gain_bits"] for g in gains], [g["tokens"] for g in gains], s=12,
                           label=f"{Path(res['input']).name} {dt}")
    ax.set_xlabel("cross-entropy removed by the vector (bits)")
    ax.set_ylabel("tokens held")
    ax.legend(fontsize=8)
