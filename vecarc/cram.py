"""Optimising memory vectors: the expensive half of vecarc.

Input to the frozen model is [sink, mem_1..mem_k, t_1..t_{n-1}]; the logits at
mem_k .. t_{n-1} must predict t_1..t_n. Only the k vectors are trained.

Many chunks are optimised as one batch, each with its own vectors and its own
Adam state, so chunks that finish leave the batch and waiting ones take their
place (continuous batching). Adam is written out by hand for that reason: a
per-row step count is all it takes.

A chunk is done only when the float32 greedy decode of its stored vectors gives
back its tokens with the margin: the check unpack will make. Chunks that reach
the margin under teacher forcing wait and are decoded together, because a greedy
step costs about the same for one row as for many (it reads all the weights).
"""

from __future__ import annotations

import ctypes
import functools
import time
import zlib
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from . import basis
from .decode import greedy_decode
from .errors import VecarcError
from .models import LoadedModel
from .quant import FORMS, in_memory, quantize

VECTOR_DTYPES = FORMS  # storage forms: vecarc.quant
AUTO_RANK = 256
AUTO_MIN_WIDTH = 512
SEARCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
COMPILE_MIN_CHUNKS = 128


@dataclass
class CramSettings:
    vectors: int = 1  # memory vectors per chunk
    lr: float = 0.5  # the paper's 0.01 was far too slow here; 0.5 with init_scale 20 halved steps vs 0.3 and 1
    beta1: float = 0.9
    beta2: float = 0.9
    margin: float = 0.5  # required min(correct logit - best other logit)
    max_steps: int = 400  # a chunk not solved by then is split: cheaper than pushing on
    patience: int = 150  # give up (and let pack split the chunk) after this many steps without a lower loss
    batch_size: int = 8
    seed: int = 0
    vector_dtype: str = "int8"  # storage form (vecarc.quant): what is stored, and what the model sees while training
    init_scale: float = 20.0  # initial std in units of the embedding std: solved vectors end up about this large
    # Model copy for the search; the float32 greedy decode confirms the margin, so this never
    # decides what is stored. "auto": bf16 where it runs in hardware (LoadedModel.fast_bf16),
    # where its steps cost ~half and the default representation needed as many of them.
    search_dtype: str = "auto"
    # Margin above `margin` the search must reach before the float32 check. 0.5 let all 6 chunks
    # of a 1 KiB slice pass their first check (3 of 6 at 0), but cost 8.5 % more steps than the
    # float32 steps the 3 needed.
    search_extra: float = 0.0
    # 0: whole vectors are stored; r: each vector is P @ z with r stored numbers (vecarc.basis);
    # None: AUTO_RANK where the model is wide enough (see resolved()).
    rank: int | None = None
    # A random subspace needs far bigger steps: at rank 256 (fp32 search), lr 0.5 / 1 / 2 / 3 solved
    # 1 / 4 / 5 / 6 of 6 Jargon chunks. With the bf16 search, 2 / 3 / 4.5 / 6 took 2,103 / 1,712 /
    # 1,505 / 1,782 steps on 12 chunks of two corpora, 4.5 the only one to solve all (docs/benchmarks.md).
    rank_lr: float = 4.5
    basis_seed: int = 0  # seed of P, recorded in the header
    # torch.compile the search copy: steps ~20 % cheaper, after a compile of ~230 s the first time on a
    # machine (~20 s later, from inductor's cache). "auto": on the CPU for jobs of COMPILE_MIN_CHUNKS
    # chunks or more, where even the first compile pays; "on" pays from ~10 chunks once cached.
    compile: str = "auto"

    def record(self) -> dict:
        return {"optimizer": "adam", **asdict(self)}

    def resolved(self, d: int, fast_bf16: bool = False) -> "CramSettings":
        """These settings with the rank and search dtype made concrete, and checked, for a
        model of width d on a device where bf16 is (or is not) fast.

        int8 at rank 256 was measured on the default model (d = 576): it held every 32-token
        chunk of the sweep in fewer steps than fp16 whole vectors, at 258 bytes instead of 1,152.
        Narrower models keep whole vectors; wider ones get 256 too (not measured there).
        """
        if self.search_dtype == "auto":
            return replace(self, search_dtype="bf16" if fast_bf16 else "fp32").resolved(d)
        if self.compile not in ("auto", "on", "off"):
            raise VecarcError(f"unknown compile setting {self.compile!r} (auto, on or off)")
        if self.search_dtype not in SEARCH_DTYPES:
            raise VecarcError(f"unknown search dtype {self.search_dtype!r} (one of auto, {', '.join(SEARCH_DTYPES)})")
        if self.rank is None:
            return replace(self, rank=AUTO_RANK if d >= AUTO_MIN_WIDTH else 0)
        if not 0 <= self.rank <= d:
            raise VecarcError(f"--rank {self.rank} is larger than the model dimension {d}" if self.rank > d else
                              f"--rank must not be negative (0 stores whole vectors), got {self.rank}")
        return self


@dataclass
class CramResult:
    vectors: torch.Tensor  # (k, d) in the storage dtype (float32 when low-rank), on the CPU: the last vectors evaluated
    ok: bool  # its float32 greedy decode gave the tokens back with the margin
    steps: int
    margin: float  # min logit margin over the chunk at the step it stopped (teacher forcing, its model)
    accuracy: float
    loss: float
    seconds: float
    search_steps: int = 0  # of `steps`, how many ran on the search model
    coords: torch.Tensor | None = None  # (k, r) stored coordinates when low-rank: vectors = expand(coords)
    decode_margin: float = float("-inf")  # min margin of the float32 greedy decode (ok: its tokens were right)
    decodes: int = 0  # greedy checks this chunk took (more than one: a check failed and it went on)


Progress = Callable[[dict], None]


def emit(progress: Progress | None, **event: Any) -> None:
    """Hand an event to the caller's progress callback, if there is one."""
    if progress is not None:
        progress(event)


@functools.cache
def _keep_heap() -> None:
    """Ask glibc to serve big blocks from a heap it keeps, not fresh mmaps.

    Each cram step allocates several positions x vocabulary tensors (~100 MB for a batch
    of 16); fresh pages cost a fault each, ~45 ms per 100 MB on the VMs measured, and a
    fifth of a bf16 step. Reused heap pages cost nothing; the price is that the process
    keeps its peak memory until it exits. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap'd blocks
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: keep freed memory


def _init_vectors(key: int, seed: int, k: int, d: int, std: float) -> torch.Tensor:
    # Seeded per chunk, not per batch, so a chunk's result does not depend on its neighbours.
    g = torch.Generator().manual_seed((seed * 1_000_003 + key) % (2**63))
    return torch.randn(k, d, generator=g) * std


def chunk_key(*parts: int) -> int:
    return zlib.crc32(",".join(map(str, parts)).encode())


class _Slot:
    def __init__(self, job: "Job", tokens: torch.Tensor, text_emb: torch.Tensor, p: torch.Tensor, polish: bool):
        self.job, self.tokens, self.text_emb = job, tokens, text_emb
        self.polish = polish  # optimising on the float32 model
        self.extra = 0.0  # margin to reach above the required one, raised when a greedy check fails
        self.decodes = 0
        self.cand: tuple | None = None  # (stored values, margin, accuracy, loss) while awaiting the greedy check
        self.search_steps: int | None = None
        self.p, self.m, self.v = p, torch.zeros_like(p), torch.zeros_like(p)
        self.t = 0
        self.best, self.best_t = float("inf"), 0
        self.start = time.perf_counter()


def chunk_forward(
    lm: LoadedModel,
    prefix: torch.Tensor,
    text_embs: Sequence[torch.Tensor],
    tokens: Sequence[torch.Tensor],
    model: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher-forced pass over [sink, prefix, text] for a batch of chunks.

    prefix: (B, k, d) float32 memory vectors (k may be 0). Chunks are right-padded,
    which needs no attention mask in a causal model. Returns logits (B, n_max, V)
    for the positions that predict the text, targets (-100 on padding) and
    per-token cross-entropy in nats. `model` defaults to lm.model (float32).
    """
    model = lm.model if model is None else model
    emb = lm.model.get_input_embeddings()
    B, k, d = prefix.shape
    dev = prefix.device
    maxn = max(len(t) for t in tokens)
    text = torch.zeros(B, maxn - 1, d, device=dev)
    targets = torch.full((B, maxn), -100, dtype=torch.long, device=dev)
    for r, (e, t) in enumerate(zip(text_embs, tokens)):
        text[r, : len(t) - 1] = e
        targets[r, : len(t)] = t
    sink = emb.weight[lm.sink_id].detach().to(torch.float32)
    x = torch.cat([sink.expand(B, 1, d), prefix, text], dim=1).to(model.dtype)
    # Logits for every position, then slice: keeping only the last n made the head
    # a broadcast bmm that copied the whole output matrix per row in bf16.
    # Cross-entropy over contiguous (position, vocabulary) rows: the transposed (B, V, n)
    # layout made log-softmax and its backward stride across memory, 2.3x slower on the CPU.
    logits = model(inputs_embeds=x, use_cache=False).logits[:, k:].float().contiguous()
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100, reduction="none")
    return logits, targets, ce.view(B, maxn)


@torch.no_grad()
def logit_margins(logits: torch.Tensor, targets: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """Per position: the target's logit minus the best other one (meaningless where targets are -100).

    scratch=True lets it overwrite `logits` instead of copying them (a copy of the
    vocabulary-sized tensor is a noticeable part of a step).
    """
    tgt = targets.clamp(min=0)[..., None]
    correct = logits.gather(2, tgt).squeeze(2)
    other = (logits.scatter_ if scratch else logits.scatter)(2, tgt, float("-inf")).amax(2)
    return correct - other


GROUP_COST = 96  # a group step's fixed cost in (rows x positions): one bf16 row of ~50 costs 0.26 s, four 0.35 s


def by_length(rows: Sequence[int], lengths: Sequence[int], fixed: int = GROUP_COST) -> list[list[int]]:
    """Split rows into groups of similar length, to pay for padding or for another pass, whichever is less.

    A batch is right-padded to its longest row, and every padded position costs as much as a
    real one; with the capacity plan, chunk lengths in one batch differ by 3x. Each group costs
    fixed + rows x longest; the best split of the rows sorted by length is a small dynamic program.
    """
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            c = best[i] + fixed + (j - i) * lengths[order[j - 1]]
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(sorted(rows[x] for x in order[cut[j] : j]))
        j = cut[j]
    return groups[::-1]


def _group_step(lm: LoadedModel, model: Any, slots: Sequence["_Slot"], s: CramSettings) -> list[tuple]:
    """One forward/backward for some rows: (values stored, min margin, accuracy, loss, grad) per row."""
    params = torch.stack([sl.p for sl in slots]).requires_grad_(True)
    # Straight-through rounding: the model sees exactly what will be stored.
    q = params + (quantize(params, s.vector_dtype) - params).detach()
    full = basis.expand(q, lm.hidden_size, s.basis_seed) if s.rank else q
    logits, targets, ce = chunk_forward(lm, full, [sl.text_emb for sl in slots], [sl.tokens for sl in slots], model)
    valid = targets != -100
    lengths = valid.sum(1)
    row_loss = ce.sum(1) / lengths
    row_loss.sum().backward()
    with torch.no_grad():
        margin = logit_margins(logits, targets, scratch=True).masked_fill(~valid, float("inf"))
        row_margin = margin.amin(1).tolist()
        row_acc = (((margin > 0) & valid).sum(1) / lengths).tolist()
        row_loss_l = row_loss.tolist()
    grads = params.grad
    qd = q.detach()
    return [(qd[r], row_margin[r], row_acc[r], row_loss_l[r], grads[r]) for r in range(len(slots))]


@dataclass
class Job:
    """One chunk to cram. `tag` is the caller's, returned untouched."""

    tokens: Sequence[int]
    key: int
    tag: Any = None


def cram(
    lm: LoadedModel,
    jobs: Iterable[Job],
    s: CramSettings,
    progress: Progress | None = None,
    on_result: Callable[[Job, CramResult], Sequence[Job]] | None = None,
    snapshot: Callable[[dict], None] | None = None,
    snapshot_every: float = 60.0,
    resume: dict | None = None,
    rebuild: Callable[[Any], Job] | None = None,
    total: int | None = None,
) -> list[tuple[Job, CramResult]]:
    """Find memory vectors for each job; returns (job, result) in completion order.

    A result is ok only if the float32 greedy decode of its stored vectors gave
    the chunk back with the margin (see the module docstring).
    on_result sees each result as soon as its chunk is settled and may
    return follow-up jobs (pack returns the two halves of a chunk that failed),
    which join the running batch at once instead of waiting for a new round.
    With on_result, results are handed over and not kept (the list returned is
    empty), and jobs are drawn from the iterable only as slots free up, so a
    long input costs memory for the batch, not for every chunk.

    snapshot receives the whole in-flight state (at a step boundary, at most
    every snapshot_every seconds); cram(resume=that state, rebuild=tag -> Job)
    continues from it exactly, so an interrupted run can finish with the same
    bits as one that was never stopped. Tags must then be JSON values.
    """
    dev = lm.device
    emb = lm.model.get_input_embeddings()
    k, d = s.vectors, lm.hidden_size
    s = s.resolved(d, lm.fast_bf16())
    search = lm.search_model(SEARCH_DTYPES[s.search_dtype])
    total = total if total is not None else len(jobs)  # type: ignore[arg-type]
    # Groups of one row stay eager: a size-1 batch would be another compile.
    fast = lm.compiled(search) if wants_compile(s, dev, total) and search is not lm.model else search
    form = s.vector_dtype
    dim = s.rank or d  # numbers optimised (and stored) per vector
    lr = s.rank_lr if s.rank else s.lr
    # P keeps the scale (entries +-1/sqrt(r)), so z starts as large as a whole vector would.
    std = float(emb.weight.detach().float().std()) * s.init_scale
    source = iter(jobs)
    pending: deque[Job] = deque()  # follow-up jobs, served before the source
    taken = 0  # jobs drawn from the source
    results: list[tuple[Job, CramResult]] = []
    finished = 0
    slots: list[_Slot] = []
    back: deque[_Slot] = deque()  # rows a greedy check sent back, served first
    waiting: list[_Slot] = []  # rows at the margin, awaiting the greedy check
    step = 0

    def new_slot(job: Job, p: torch.Tensor | None = None) -> _Slot:
        toks = torch.tensor(list(job.tokens), dtype=torch.long, device=dev)
        with torch.no_grad():
            text_emb = emb(toks[:-1]).to(torch.float32)
        if p is None:
            p = _init_vectors(job.key, s.seed, k, dim, std).to(dev)
        return _Slot(job, toks, text_emb, p, polish=search is lm.model)

    if resume is not None:
        step, total, finished, taken = resume["step"], resume["total"], resume["done"], resume["taken"]
        for _ in range(taken):
            next(source)
        pending = deque(rebuild(_tag(t)) for t in resume["pending"])
        ten = resume["tensors"]
        for i, rec in enumerate(resume["slots"]):
            sl = new_slot(rebuild(_tag(rec["tag"])), ten["p"][i].to(dev).clone())
            sl.m, sl.v = ten["m"][i].to(dev).clone(), ten["v"][i].to(dev).clone()
            sl.t, sl.best, sl.best_t = rec["t"], rec["best"], rec["best_t"]
            sl.polish, sl.search_steps = rec["polish"], rec["search_steps"]
            sl.extra, sl.decodes = rec.get("extra", 0.0), rec.get("decodes", 0)
            if rec.get("cand") is not None:  # at the margin, not yet checked
                sl.cand = (ten["q"][len(waiting)].to(dev), *rec["cand"])
                waiting.append(sl)
            else:
                (slots if len(slots) < s.batch_size else back).append(sl)
    last_snapshot = time.monotonic()
    exhausted = False
    if dev.type == "cpu":
        _keep_heap()

    def kept(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what is stored, the vectors it stands for), made on the CPU as unpack makes them."""
        stored = in_memory(q, form).cpu()
        return stored, basis.expand(stored, d, s.basis_seed) if s.rank else stored

    def finish(sl: _Slot, values: tuple[torch.Tensor, torch.Tensor], margin: float, acc: float, loss: float,
               ok: bool, dmargin: float) -> None:
        """Hand over a chunk's result; values: kept() of what it was last evaluated at."""
        nonlocal finished, total
        stored, vectors = values
        res = CramResult(
            vectors=vectors,
            coords=stored if s.rank else None,
            ok=ok,
            steps=sl.t,
            margin=margin,
            accuracy=acc,
            loss=loss,
            seconds=time.perf_counter() - sl.start,
            search_steps=sl.search_steps if sl.search_steps is not None else sl.t,
            decode_margin=dmargin,
            decodes=sl.decodes,
        )
        finished += 1
        if on_result is None:
            results.append((sl.job, res))
        else:
            more = list(on_result(sl.job, res))
            pending.extendleft(reversed(more))
            total += len(more)

    def check() -> None:
        """Greedy-decode every waiting chunk in one batch; the ones that fail go on, on the float32 model."""
        values = [kept(sl.cand[0]) for sl in waiting]
        got, dmargins = greedy_decode(lm, torch.stack([v for _, v in values]), [len(sl.tokens) for sl in waiting])
        for sl, val, toks, dm in zip(waiting, values, got, dmargins):
            sl.decodes += 1
            ok = dm >= s.margin and toks == sl.tokens.tolist()
            if ok or sl.t >= s.max_steps or sl.t - sl.best_t >= s.patience:
                finish(sl, val, *sl.cand[1:], ok=ok, dmargin=dm)
                continue
            # Teacher forcing in the search dtype (or, rarely, float32 with a cache) was not
            # the greedy decode: go on in float32, a little further each time.
            if sl.polish:
                sl.extra += 0.25
            sl.polish, sl.cand = True, None
            back.append(sl)
        waiting.clear()

    while True:
        while len(slots) < s.batch_size:
            if back:
                slots.append(back.popleft())
            elif pending:
                slots.append(new_slot(pending.popleft()))
            elif not exhausted and (job := next(source, None)) is not None:
                taken += 1
                slots.append(new_slot(job))
            else:
                exhausted = True
                break
        if not slots:
            if not waiting:
                break
            check()
            continue
        # Rows still searching run on the cheap model; rows polishing run on the float32 model.
        stats: dict[int, tuple] = {}
        for polish in (False, True):
            rows = [r for r, sl in enumerate(slots) if sl.polish == polish]
            for group in by_length(rows, [len(slots[r].tokens) + k for r in rows]):
                model = lm.model if polish else fast if len(group) > 1 else search
                try:
                    stats.update(zip(group, _group_step(lm, model, [slots[r] for r in group], s)))
                except Exception as e:  # noqa: BLE001 - a compiler missing or failing costs speed, not the pack
                    if model is search or model is lm.model:
                        raise
                    fast = search
                    emit(progress, event="note", message=f"torch.compile failed ({type(e).__name__}: "
                                                         f"{str(e).splitlines()[0][:120]}); going on without it")
                    stats.update(zip(group, _group_step(lm, search, [slots[r] for r in group], s)))
        row_acc = [stats[r][2] for r in range(len(slots))]
        row_loss_l = [stats[r][3] for r in range(len(slots))]
        step += 1
        keep: list[_Slot] = []
        with torch.no_grad():
            for r, sl in enumerate(slots):
                q, margin, acc, loss, g = stats[r]
                sl.t += 1
                if loss < sl.best:
                    sl.best, sl.best_t = loss, sl.t
                if margin >= s.margin + sl.extra + (0.0 if sl.polish else s.search_extra):
                    if not sl.polish:
                        sl.search_steps = sl.t
                    sl.cand = (q, margin, acc, loss)
                    waiting.append(sl)
                    continue
                if sl.t - sl.best_t >= s.patience or sl.t >= s.max_steps:
                    finish(sl, kept(q), margin, acc, loss, ok=False, dmargin=float("-inf"))
                    continue
                sl.m.mul_(s.beta1).add_(g, alpha=1 - s.beta1)
                sl.v.mul_(s.beta2).addcmul_(g, g, value=1 - s.beta2)
                mhat = sl.m / (1 - s.beta1**sl.t)
                vhat = sl.v / (1 - s.beta2**sl.t)
                sl.p.sub_(lr * mhat / (vhat.sqrt() + 1e-8))
                keep.append(sl)
            slots = keep
        if len(waiting) >= s.batch_size:
            check()
        if snapshot is not None and time.monotonic() - last_snapshot >= snapshot_every:
            snapshot(_state(step, total, finished, taken, pending, slots + list(back) + waiting))
            last_snapshot = time.monotonic()
        if progress is not None:
            progress(
                {
                    "event": "step",
                    "step": step,
                    "done": finished,
                    "total": total,
                    "active": len(slots),
                    "accuracy": min(row_acc) if row_acc else 1.0,
                    "loss": max(row_loss_l) if row_loss_l else 0.0,
                }
            )
    return results


def wants_compile(s: CramSettings, device: torch.device, chunks: int) -> bool:
    """Whether the search runs compiled: decided by the job alone, so the same command
    makes the same archive however warm inductor's cache is."""
    return s.compile == "on" or (s.compile == "auto" and device.type == "cpu" and chunks >= COMPILE_MIN_CHUNKS)


def _tag(x: Any) -> Any:
    return tuple(_tag(v) for v in x) if isinstance(x, list) else x


def _state(step: int, total: int, done: int, taken: int, pending: Sequence[Job], slots: Sequence[_Slot]) -> dict:
    """Everything the loop needs to continue exactly: float32 tensors, not rounded copies."""
    return {
        "step": step,
        "total": total,
        "done": done,
        "taken": taken,
        "pending": [j.tag for j in pending],
        "slots": [{"tag": sl.job.tag, "t": sl.t, "best": sl.best, "best_t": sl.best_t, "polish": sl.polish,
                   "search_steps": sl.search_steps, "extra": sl.extra, "decodes": sl.decodes,
                   "cand": list(sl.cand[1:]) if sl.cand else None} for sl in slots],
        "tensors": {name: torch.stack([getattr(sl, name).detach().cpu() for sl in slots])
                    for name in ("p", "m", "v")} | _waiting_values(slots) if slots else {},
    }


def _waiting_values(slots: Sequence[_Slot]) -> dict:
    # What each row awaiting its check was evaluated at (p + (round(p) - p) need not be round(p) bit for bit).
    q = [sl.cand[0].detach().cpu() for sl in slots if sl.cand]
    return {"q": torch.stack(q)} if q else {}
