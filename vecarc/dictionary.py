"""Dictionaries: memory vectors trained across a corpus, read by every coded chunk after the sink.

Inside one chunk a memory vector never pays for its bytes (docs/benchmarks.md). Shared by
every chunk of a corpus, and kept outside the archives as zstd keeps its dictionaries, it
can: `train` finds k vectors that lower the frozen model's cross-entropy on a corpus's
chunks, `pack --dict` codes every chunk after the sink and those vectors, and the archive
records which dictionary it needs. The vectors are stored as the integer model takes its
inputs (Q16 integers), so a dictionary decodes exactly on every machine.

The file (docs/format.md, "Dictionary files"): magic, version, the model's fingerprint, the
vectors, a JSON record of how they were trained, and a SHA-256 of all that; the first 8
bytes of the SHA-256 name the dictionary in archives.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy
import torch

from .chunks.coded import integer_model, intervals
from .chunks.coded import prefix as coded_prefix
from .errors import VecarcError
from .events import emit
from .format.compact import DEFAULT_CHUNK, Prefix, Reader, spans, varint
from .models import LoadedModel
from .text import tokenize_exact

MAGIC = b"\x89VCD"
VERSION = 1
FORM_Q16 = 0  # int32 little-endian values in Q16: the integer model's own input scale
FP_BYTES, ID_BYTES = 32, 8
MAX_VECTORS = 64
MAX_VALUE = 1 << 24  # |v| < 256 in Q16: far above any embedding, and every product stays exact
MAX_INFO = 1 << 16
MAX_FILE = 4 + 2 + FP_BYTES + 3 + 1 + 4 * MAX_VECTORS * (1 << 16) + 3 + MAX_INFO + 32


@dataclass(frozen=True)
class Dictionary:
    vectors: torch.Tensor  # (k, hidden) int64, Q16: the inputs after the sink of every coded chunk
    fingerprint: str  # the model's ("fp2:" + 64 hex digits): a dictionary serves that model only
    info: dict  # how it was trained (informational)
    digest: bytes  # SHA-256 of the file before its last 32 bytes

    @property
    def id(self) -> str:
        """What archives record: the first 8 bytes of the SHA-256, in hex."""
        return self.digest[:ID_BYTES].hex()


def serialize(vectors: torch.Tensor, fingerprint: str, info: dict) -> bytes:
    """The file's bytes: header, vectors, training record, SHA-256."""
    k, d = vectors.shape
    if not 1 <= k <= MAX_VECTORS or int(vectors.abs().max()) >= MAX_VALUE:
        raise VecarcError(f"a dictionary holds 1 to {MAX_VECTORS} vectors of values below 2^24 in Q16")
    scheme, _, digest = fingerprint.partition(":")
    if scheme != "fp2" or len(digest) != 2 * FP_BYTES:
        raise VecarcError(f"dictionaries are made for fingerprints of scheme fp2, not {fingerprint!r}")
    meta = json.dumps(info, sort_keys=True, separators=(",", ":")).encode()
    out = bytearray(MAGIC + bytes([VERSION, FORM_Q16]) + bytes.fromhex(digest))
    out += varint(d) + varint(k) + vectors.to(torch.int32).numpy().astype("<i4").tobytes()
    out += varint(len(meta)) + meta
    return bytes(out + hashlib.sha256(out).digest())


def parse(data: bytes, name: str = "dictionary") -> Dictionary:
    """A dictionary file's contents, or VecarcError naming what is wrong (checked before allocating)."""

    def bad(why: str) -> VecarcError:
        return VecarcError(f"{name}: not a usable vecarc dictionary ({why})")

    if data[:4] != MAGIC:
        raise bad("no dictionary magic")
    if len(data) < 4 + 2 + FP_BYTES + 3 + 32:
        raise bad("truncated")
    if data[4] != VERSION:
        raise bad(f"version {data[4]}; this vecarc reads version {VERSION}")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise bad("SHA-256 mismatch: the file is damaged")
    if body[5] != FORM_Q16:
        raise bad(f"unknown storage form {body[5]}")
    r = Reader(body, bad)
    r.take(6 + FP_BYTES, "the header")
    d, k = r.varint("the vectors' width", 1 << 16), r.varint("the vector count", MAX_VECTORS)
    r.need(d >= 1 and k >= 1, "vector sizes out of range")
    raw = numpy.frombuffer(r.take(4 * k * d, "the vectors"), dtype="<i4").reshape(k, d)
    meta = r.take(r.varint("the training record's length", MAX_INFO), "the training record")
    r.need(r.at == len(body), "its training record does not end the file")
    try:
        info = json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("its training record is not JSON") from None
    if not isinstance(info, dict):
        raise bad("its training record is not a JSON object")
    vectors = torch.from_numpy(raw.astype(numpy.int64))
    if int(vectors.abs().max()) >= MAX_VALUE:
        raise bad("a value out of range")
    return Dictionary(vectors, "fp2:" + body[6 : 6 + FP_BYTES].hex(), info, digest)


def read(path: str | Path) -> Dictionary:
    path = Path(path)
    try:
        with open(path, "rb") as f:  # at most what the largest dictionary holds: a device or pipe is cut there
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise VecarcError(f"cannot read dictionary {path}: {e.strerror or e}") from None
    if len(data) > MAX_FILE:
        raise VecarcError(f"{path}: too large for a vecarc dictionary")
    return parse(data, str(path))


def load(d: Dictionary | str | Path | None) -> Dictionary | None:
    """A dictionary given as a file or already read (None: none)."""
    return read(d) if isinstance(d, (str, Path)) else d


def write(path: str | Path, data: bytes, force: bool = False) -> Path:
    """Written whole or not at all; an existing file is kept unless `force`."""
    path = Path(path)
    if path.exists() and not force:
        raise VecarcError(f"{path} exists (use --force to overwrite)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise VecarcError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def attach(lm: LoadedModel, d: Dictionary | None, own: Prefix | None = None) -> LoadedModel:
    """The model as coded chunks see it after the sink: the dictionary's vectors, then the archive's own
    (format 5's prefix), each an extra input of the integer model (ids vocab, vocab + 1, ...)."""
    if d is not None and d.fingerprint != lm.fingerprint:
        raise VecarcError(f"the dictionary {d.id} was trained for another model (fingerprint {d.fingerprint[:20]}…, "
                          f"not {lm.name}'s {lm.fingerprint[:20]}…)")
    if (getattr(of(lm), "id", None), own_prefix(lm)) == (getattr(d, "id", None), own):
        return lm
    base = lm._variants.get("base") or integer_model(lm)
    rows = [] if d is None else [d.vectors]
    rows += [] if own is None else [torch.tensor(own.values(), dtype=torch.int64)]
    for v in rows:
        if v.shape[1] != base.shape.hidden:
            raise VecarcError(f"vectors of {v.shape[1]} values; {lm.name} takes {base.shape.hidden}")
    if not rows:
        return replace(lm, _variants={"integer": base})
    im = copy.copy(base)
    im.embed = torch.cat([base.embed, *(v.to(base.embed.device) for v in rows)])
    extra = sum(v.shape[0] for v in rows)
    return replace(lm, _variants={"integer": im, "dictionary": d, "own": own, "base": base, "extra": extra})


def of(lm: LoadedModel) -> Dictionary | None:
    """The dictionary coded chunks read, if any."""
    return lm._variants.get("dictionary")


def own_prefix(lm: LoadedModel) -> Prefix | None:
    """The archive's own vectors coded chunks read, if any."""
    return lm._variants.get("own")


def for_archive(lm: LoadedModel, wanted: str | None, given: Dictionary | None, own: Prefix | None) -> LoadedModel:
    """The model an archive's coded chunks decode with: with the dictionary it records, which must be the
    one given (or, given none, the one attached to lm), and the vectors it holds."""
    given = given if given is not None else of(lm)
    if wanted is not None and given is None:
        raise VecarcError(f"this archive was packed with dictionary {wanted}: pass it with --dict FILE")
    if wanted is not None and given.id != wanted:
        raise VecarcError(f"this archive was packed with dictionary {wanted}, not {given.id} (the --dict given)")
    return attach(lm, given if wanted is not None else None, own)


# Training ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    # chosen on held-out chunks of the python tutorial's second half (docs/benchmarks.md, "Dictionaries")
    vectors: int = 16
    steps: int = 150
    lr: float = 0.05
    chunk_tokens: int = DEFAULT_CHUNK  # what pack's coded chunks hold, so that training sees what they will
    batch: int = 1  # chunks per step
    held_out: int = 8  # chunks kept out of training to estimate the gain (every n-th chunk)
    seed: int = 0

    def checked(self) -> TrainConfig:
        if not 1 <= self.vectors <= MAX_VECTORS:
            raise VecarcError(f"--vectors must be from 1 to {MAX_VECTORS}")
        if self.steps < 0 or self.batch < 1 or self.held_out < 0 or self.chunk_tokens < 8:
            raise VecarcError("--steps and --held-out must not be negative, --batch at least 1, chunks at least "
                              "8 tokens")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise VecarcError("--lr must be a number above 0")
        return self


@dataclass(frozen=True)
class Trained:
    dictionary: Dictionary
    data: bytes  # the file's bytes
    train_chunks: int
    held_chunks: int
    bits_without: float  # the held-out chunks' coded size without and with the dictionary (ideal bits)
    bits_with: float
    seconds: float

    @property
    def gain(self) -> float:
        return 1 - self.bits_with / self.bits_without if self.bits_without else 0.0


def chunks_of(lm: LoadedModel, texts: Sequence[bytes], size: int) -> list[list[int]]:
    """The corpus cut as pack cuts documents: near-equal chunks of at most `size` tokens."""
    out = []
    for data in texts:
        ids = tokenize_exact(lm, data)
        if ids is None:
            continue
        at = 0
        for n in spans(len(ids), size):
            out.append(list(ids[at : at + n]))
            at += n
    return out


def split(chunks: list[list[int]], held: int) -> tuple[list[list[int]], list[list[int]]]:
    """Every n-th chunk held out (`held` of them, spread over the corpus), the rest for training."""
    if held <= 0 or len(chunks) < 2:
        return chunks, []
    every = max(2, len(chunks) // held)
    out = [c for i, c in enumerate(chunks) if i % every == every - 1][:held]
    keep = [c for i, c in enumerate(chunks) if not (i % every == every - 1 and i // every < held)]
    return keep, out


def coded_bits(lm: LoadedModel, chunks: Sequence[Sequence[int]]) -> float:
    """The chunks' ideal coded size in bits under the integer model (after the prefix lm decodes from)."""
    im, total = integer_model(lm), 0.0
    for c in chunks:
        sym = intervals(im, coded_prefix(lm), [list(c)])[0]
        total += float((sym[:, 2].double().log2() - sym[:, 1].double().log2()).sum())
    return total


def fit(lm: LoadedModel, chunks: Sequence[Sequence[int]], cfg: TrainConfig, progress=None,
        after: torch.Tensor | None = None) -> torch.Tensor:
    """k vectors (k, hidden) in Q16 that lower the frozen float model's cross-entropy on the chunks, each
    read after the sink, the fixed Q16 vectors `after` (a dictionary's) and the k vectors: Adam, a random
    chunk (or `batch`) a step, from embeddings of the chunks' own tokens."""
    model = lm.model
    emb = model.get_input_embeddings().weight.detach()
    rng = random.Random(cfg.seed)
    starts = [rng.choice(rng.choice(chunks)) for _ in range(cfg.vectors)]
    vec = emb[starts].clone().float().requires_grad_(True)
    opt = torch.optim.Adam([vec], lr=cfg.lr)
    sink = emb[lm.sink_id][None].float()
    if after is not None:
        sink = torch.cat([sink, (after.double() / (1 << 16)).float().to(emb.device)])
    for step in range(cfg.steps):
        loss = 0.0
        opt.zero_grad()
        for c in (rng.choice(chunks) for _ in range(cfg.batch)):
            ids = torch.tensor(c, device=emb.device)
            x = torch.cat([sink, vec, emb[ids[:-1]].float()])[None]
            logits = model(inputs_embeds=x.to(emb.dtype)).logits[0, len(sink) + cfg.vectors - 1 :].float()
            part = torch.nn.functional.cross_entropy(logits, ids) / cfg.batch
            part.backward()
            loss += float(part.detach())
        opt.step()
        emit(progress, event="train", done=step + 1, total=cfg.steps, bits=loss / math.log(2))
    return torch.round(vec.detach().double() * (1 << 16)).to(torch.int64).cpu()


def train(lm: LoadedModel, texts: Sequence[bytes], cfg: TrainConfig = TrainConfig(), progress=None,
          info: dict | None = None) -> Trained:
    """A dictionary for the corpus `texts` (fit), its gain measured exactly on held-out chunks by the
    integer model, with and without it."""
    cfg = cfg.checked()
    t0 = time.perf_counter()
    if not lm.fingerprint.startswith("fp2:"):
        raise VecarcError(f"{lm.name}: dictionaries need a model fingerprint of scheme fp2")
    integer_model(lm, progress)  # a model the integer path does not cover is refused before training
    size = min(cfg.chunk_tokens, lm.chunk_limit(cfg.vectors))  # as pack cuts them after the vectors
    chunks = [c for c in chunks_of(lm, texts, size) if len(c) >= 2]
    if not chunks:
        raise VecarcError("nothing to train on: the corpus has no text the model's tokenizer round-trips")
    kept, held = split(chunks, cfg.held_out)
    q16 = fit(lm, kept, cfg, progress)
    record = {"vectors": cfg.vectors, "steps": cfg.steps, "lr": cfg.lr, "batch": cfg.batch, "seed": cfg.seed,
              "chunk_tokens": size, "train_chunks": len(kept), "held_chunks": len(held)} | (info or {})
    if held:
        emit(progress, event="note", message=f"measuring the gain on {len(held)} held-out chunks")
    without = coded_bits(lm, held)
    record["held_bits_without"] = round(without, 1)
    trial = Dictionary(q16, lm.fingerprint, record, b"\0" * 32)
    with_ = coded_bits(attach(lm, trial), held)
    record["held_bits_with"] = round(with_, 1)
    data = serialize(q16, lm.fingerprint, record)
    return Trained(parse(data), data, len(kept), len(held), without, with_, time.perf_counter() - t0)


def train_report(t: Trained) -> dict:
    return {"dictionary": t.dictionary.id, "vectors": int(t.dictionary.vectors.shape[0]), "file_bytes": len(t.data),
            "train_chunks": t.train_chunks, "held_chunks": t.held_chunks,
            "held_bytes_without": round(t.bits_without / 8), "held_bytes_with": round(t.bits_with / 8),
            "gain": round(t.gain, 4), "seconds": round(t.seconds, 1)}

