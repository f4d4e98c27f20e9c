"""Coded archives across devices: pack on the CPU and unpack on CUDA, and the other way round.

    python -m benchmarks.device_check [--size 4096] [--json out.json]

Compares the integer model's frequency tables (SHA-256 of every position's table, whole
sequence and KV-cached steps) between the CPU and the GPU, then packs the fixed slice on
each device and unpacks it on the other, timing both. Without a CUDA device it runs the CPU
half and says so. Exit status 1 if any table or document differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.corpora import corpus_slice
from vecarc import PackConfig, load_model, pack, unpack
from vecarc.chunks.coded import integer_model
from vecarc.text import tokenize_exact


def table_digest(lm, ids: list[int], steps: int) -> dict:
    """SHA-256 of the frequency tables of [sink] + ids, whole and (the first `steps` positions) stepped."""
    im = integer_model(lm)
    seq = torch.tensor([[lm.sink_id] + ids])
    t = time.perf_counter()
    whole = im.forward(seq).cpu()
    whole_s = time.perf_counter() - t
    caches = [[] for _ in im.layers]
    t = time.perf_counter()
    stepped = torch.cat([im.forward(seq[:, i : i + 1], caches, start=i).cpu() for i in range(steps)], 1)
    step_ms = (time.perf_counter() - t) / steps * 1000
    digest = hashlib.sha256(whole.numpy().astype("<i8").tobytes()).hexdigest()
    same = torch.equal(stepped, whole[:, :steps])
    return {"sha256": digest, "kv_steps_match": same, "whole_pass_s": round(whole_s, 3), "step_ms": round(step_ms, 2)}


def round_trip(data: bytes, pack_lm, unpack_lm, folder: Path) -> dict:
    src = folder / "slice.txt"
    src.write_bytes(data)
    out = folder / f"slice-{pack_lm.device.type}.vec"
    t = time.perf_counter()
    pack([src], out, PackConfig(), model=pack_lm, force=True)
    packed = time.perf_counter() - t
    dest = folder / f"out-{pack_lm.device.type}-{unpack_lm.device.type}"
    t = time.perf_counter()
    written = unpack(out, dest, model=unpack_lm, force=True)
    unpacked = time.perf_counter() - t
    return {"pack_on": pack_lm.device.type, "unpack_on": unpack_lm.device.type, "archive_bytes": out.stat().st_size,
            "pack_s": round(packed, 2), "unpack_s": round(unpacked, 2), "identical": written[0].read_bytes() == data}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()
    data = corpus_slice("jargon.txt", args.size, 0.1)
    cpu = load_model(None, device="cpu")
    ids = list(tokenize_exact(cpu, data))[:511]
    devices = {"cpu": cpu}
    if torch.cuda.is_available():
        devices["cuda"] = load_model(None, device="cuda")
    report: dict = {"torch": torch.__version__, "slice_bytes": len(data),
                    "gpu": torch.cuda.get_device_name(0) if "cuda" in devices else None,
                    "tables": {k: table_digest(lm, ids, args.steps) for k, lm in devices.items()}}
    with tempfile.TemporaryDirectory() as d:
        pairs = [("cpu", "cuda"), ("cuda", "cpu")] if "cuda" in devices else [("cpu", "cpu")]
        report["round_trips"] = [round_trip(data, devices[a], devices[b], Path(d)) for a, b in pairs]
    digests = {v["sha256"] for v in report["tables"].values()}
    ok = len(digests) == 1 and all(v["kv_steps_match"] for v in report["tables"].values()) and all(
        r["identical"] for r in report["round_trips"])
    report["ok"] = ok
    if "cuda" not in devices:
        report["note"] = "no CUDA device here: the CPU half only"
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
