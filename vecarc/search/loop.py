"""The search loop: many chunks optimised as one batch (continuous batching).

Each chunk has its own vectors and its own Adam state, so chunks that finish leave
the batch and waiting ones take their place. A chunk is done only when the float32
greedy decode of its stored vectors gives back its tokens with the margin: the check
unpack will make. Chunks that reach the margin under teacher forcing wait and are
decoded together, because a greedy step costs about the same for one row as for many.

The state the loop keeps (queues, rows in flight, their optimiser state) is written by
`snapshot_state` and read by `Search.restore`, side by side, so an interrupted run can
finish with the same bits as one that was never stopped.
"""

from __future__ import annotations

import ctypes
import functools
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..decode import greedy_decode
from ..errors import VerificationError, describe
from ..events import Progress, Trace, emit
from ..format import basis
from ..format.quant import in_memory
from ..models import LoadedModel
from .settings import SEARCH_DTYPES, SearchSettings, wants_compile
from .step import Adam, RowStep, by_length, group_step


@dataclass
class Job:
    """One chunk to cram. `tag` is the caller's, returned untouched."""

    tokens: Sequence[int]
    key: int
    tag: Any = None


@dataclass
class CramResult:
    vectors: torch.Tensor  # (k, d) in the storage dtype (float32 when low-rank), on the CPU: the last vectors evaluated
    ok: bool  # its float32 greedy decode gave the tokens back with the margin
    steps: int
    search_margin: float  # min teacher-forced margin at the step it stopped (on the model it ran on)
    search_steps: int = 0  # of `steps`, how many ran on the search model
    coords: torch.Tensor | None = None  # (k, r) stored coordinates when low-rank: vectors = expand(coords)
    decode_margin: float = float("-inf")  # min margin of the float32 greedy decode (ok: its tokens were right)
    decodes: int = 0  # greedy checks this chunk took (more than one: a check failed and it went on)


def chunk_key(*parts: int) -> int:
    return zlib.crc32(",".join(map(str, parts)).encode())


def _init_vectors(key: int, seed: int, k: int, d: int, std: float) -> torch.Tensor:
    # Seeded per chunk, not per batch, so a chunk's result does not depend on its neighbours.
    g = torch.Generator().manual_seed((seed * 1_000_003 + key) % (2**63))
    return torch.randn(k, d, generator=g) * std


@functools.cache
def _keep_heap() -> None:
    """Ask glibc to serve big blocks from a heap it keeps, not fresh mmaps.

    Each step allocates several positions x vocabulary tensors (~100 MB for a batch of
    16); fresh pages cost a fault each, ~45 ms per 100 MB on the VMs measured, and a fifth
    of a bf16 step. Reused heap pages cost nothing; the price is that the process keeps
    its peak memory until it exits. A no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return
    libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap'd blocks
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: keep freed memory


class Slot:
    """One chunk in flight: its tokens, its optimiser, and where it stands."""

    def __init__(self, job: Job, tokens: torch.Tensor, text_emb: torch.Tensor, opt: Adam, polish: bool):
        self.job, self.tokens, self.text_emb, self.opt = job, tokens, text_emb, opt
        self.polish = polish  # optimising on the float32 model
        self.extra = 0.0  # margin to reach above the required one, raised when a greedy check fails
        self.decodes = 0
        self.cand: tuple | None = None  # (stored values, margin, accuracy, loss) while awaiting the greedy check
        self.search_steps: int | None = None
        self.t = 0
        self.best, self.best_t = float("inf"), 0

    def stalled(self, s: SearchSettings) -> bool:
        return self.t - self.best_t >= s.patience or self.t >= s.max_steps


class Search:
    """The queues and rows of one cram call; `run` drives it to the end."""

    def __init__(self, lm: LoadedModel, jobs: Iterable[Job], s: SearchSettings, total: int,
                 on_result: Callable[[Job, CramResult], Sequence[Job]] | None, progress: Progress | None,
                 trace: Trace | None):
        self.lm, self.s, self.total = lm, s, total
        self.on_result, self.progress, self.trace = on_result, progress, trace
        self.search = lm.search_model(SEARCH_DTYPES[s.search_dtype])
        # Groups of one row stay eager: a size-1 batch would be another compile.
        compiled = wants_compile(s, lm.device, total) and self.search is not lm.model
        self.fast = lm.compiled(self.search) if compiled else self.search
        emb = lm.model.get_input_embeddings()
        self.emb = emb
        # P keeps the scale (entries +-1/sqrt(r)), so z starts as large as a whole vector would.
        self.std = float(emb.weight.detach().float().std()) * s.init_scale
        self.source: Iterator[Job] = iter(jobs)
        self.pending: deque[Job] = deque()  # follow-up jobs, served before the source
        self.back: deque[Slot] = deque()  # rows a greedy check sent back, served first
        self.slots: list[Slot] = []
        self.waiting: list[Slot] = []  # rows at the margin, awaiting the greedy check
        self.results: list[tuple[Job, CramResult]] = []
        self.taken = self.finished = self.step = 0  # jobs drawn from the source, settled, batch steps run
        self.exhausted = False

    # ---- rows in and out

    def new_slot(self, job: Job, p: torch.Tensor | None = None) -> Slot:
        dev, s = self.lm.device, self.s
        toks = torch.tensor(list(job.tokens), dtype=torch.long, device=dev)
        with torch.no_grad():
            text_emb = self.emb(toks[:-1]).to(torch.float32)
        if p is None:
            p = _init_vectors(job.key, s.seed, s.vectors, s.rank or self.lm.hidden_size, self.std).to(dev)
        return Slot(job, toks, text_emb, Adam(p, s), polish=self.search is self.lm.model)

    def refill(self) -> None:
        while len(self.slots) < self.s.batch_size:
            if self.back:
                self.slots.append(self.back.popleft())
            elif self.pending:
                self.slots.append(self.new_slot(self.pending.popleft()))
            elif not self.exhausted and (job := next(self.source, None)) is not None:
                self.taken += 1
                self.slots.append(self.new_slot(job))
            else:
                self.exhausted = True
                return

    def kept(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what is stored, the vectors it stands for), made on the CPU as unpack makes them."""
        stored = in_memory(q, self.s.vector_dtype).cpu()
        return stored, basis.expand(stored, self.lm.hidden_size, self.s.basis_seed) if self.s.rank else stored

    def finish(self, sl: Slot, values: tuple[torch.Tensor, torch.Tensor], margin: float, ok: bool,
               dmargin: float) -> None:
        """Hand over a chunk's result; values: kept() of what it was last evaluated at."""
        stored, vectors = values
        res = CramResult(vectors=vectors, coords=stored if self.s.rank else None, ok=ok, steps=sl.t,
                         search_margin=margin, search_steps=sl.search_steps if sl.search_steps is not None else sl.t,
                         decode_margin=dmargin, decodes=sl.decodes)
        self.finished += 1
        if self.on_result is None:
            self.results.append((sl.job, res))
            return
        more = list(self.on_result(sl.job, res))
        self.pending.extendleft(reversed(more))
        self.total += len(more)

    # ---- the two kinds of work: a batch step and a greedy check

    def check(self) -> None:
        """Greedy-decode every waiting chunk in one batch; the ones that fail go on, on the float32 model."""
        values = [self.kept(sl.cand[0]) for sl in self.waiting]
        t0 = time.perf_counter()
        got, dmargins = greedy_decode(self.lm, torch.stack([v for _, v in values]),
                                      [len(sl.tokens) for sl in self.waiting])
        if self.trace is not None:
            self.trace({"event": "check", "rows": len(values), "tokens": max(len(sl.tokens) for sl in self.waiting),
                        "seconds": time.perf_counter() - t0})
        for sl, val, toks, dm in zip(self.waiting, values, got, dmargins):
            sl.decodes += 1
            ok = dm >= self.s.margin and toks == sl.tokens.tolist()
            if ok or sl.stalled(self.s):
                self.finish(sl, val, sl.cand[1], ok=ok, dmargin=dm)
                continue
            # Teacher forcing in the search dtype (or, rarely, float32 with a cache) was not
            # the greedy decode: go on in float32, a little further each time.
            if sl.polish:
                sl.extra += 0.25
            sl.polish, sl.cand = True, None
            self.back.append(sl)
        self.waiting.clear()

    def run_group(self, model: Any, rows: Sequence[Slot]) -> list[RowStep]:
        t0 = time.perf_counter()
        out = group_step(self.lm, model, [sl.opt.p for sl in rows], [sl.text_emb for sl in rows],
                         [sl.tokens for sl in rows], self.s)
        if self.trace is not None:
            self.trace({"event": "group", "float32": model is self.lm.model, "seconds": time.perf_counter() - t0,
                        "rows": [(sl.job.tag, sl.t + 1, len(sl.tokens), r.margin, r.accuracy, r.loss)
                                 for sl, r in zip(rows, out)]})
        return out

    def forward_backward(self) -> list[RowStep]:
        """One step for every row in the batch: searching rows on the cheap model, polishing rows in float32."""
        stats: dict[int, RowStep] = {}
        k = self.s.vectors
        for polish in (False, True):
            rows = [r for r, sl in enumerate(self.slots) if sl.polish == polish]
            for group in by_length(rows, [len(self.slots[r].tokens) + k for r in rows]):
                model = self.lm.model if polish else self.fast if len(group) > 1 else self.search
                part = [self.slots[r] for r in group]
                try:
                    stats.update(zip(group, self.run_group(model, part)))
                except Exception as e:  # noqa: BLE001 - a compiler missing or failing costs speed, not the pack
                    if model is self.search or model is self.lm.model:
                        raise
                    self.fast = self.search
                    emit(self.progress, event="note",
                         message=f"torch.compile failed ({describe(e)[:160]}); going on without it")
                    stats.update(zip(group, self.run_group(self.search, part)))
        return [stats[r] for r in range(len(self.slots))]

    def advance(self, stats: Sequence[RowStep]) -> None:
        """Count the step for every row: rows at the margin go to the check, stalled ones give up, the rest step."""
        s, keep = self.s, []
        for sl, st in zip(self.slots, stats):
            sl.t += 1
            if st.loss < sl.best:
                sl.best, sl.best_t = st.loss, sl.t
            if st.margin >= s.margin + sl.extra + (0.0 if sl.polish else s.search_extra):
                if not sl.polish:
                    sl.search_steps = sl.t
                sl.cand = (st.values, st.margin, st.accuracy, st.loss)
                self.waiting.append(sl)
            elif sl.stalled(s):
                self.finish(sl, self.kept(st.values), st.margin, ok=False, dmargin=float("-inf"))
            else:
                sl.opt.update(st.grad, sl.t)
                keep.append(sl)
        self.slots = keep

    # ---- the loop

    def run(self, snapshot: Callable[[dict], None] | None, snapshot_every: float) -> list[tuple[Job, CramResult]]:
        last_snapshot = time.monotonic()
        if self.lm.device.type == "cpu":
            _keep_heap()
        while True:
            self.refill()
            if not self.slots:
                if not self.waiting:
                    return self.results
                self.check()
                continue
            stats = self.forward_backward()
            self.step += 1
            self.advance(stats)
            if len(self.waiting) >= self.s.batch_size:
                self.check()
            if snapshot is not None and time.monotonic() - last_snapshot >= snapshot_every:
                snapshot(self.snapshot_state())
                last_snapshot = time.monotonic()
            emit(self.progress, event="step", step=self.step, done=self.finished, total=self.total,
                 active=len(self.slots), accuracy=min((x.accuracy for x in stats), default=1.0),
                 loss=max((x.loss for x in stats), default=0.0))

    # ---- snapshot and restore, side by side

    def snapshot_state(self) -> dict:
        """Everything the loop needs to continue exactly: float32 tensors, not rounded copies."""
        rows = self.slots + list(self.back) + self.waiting
        tensors = {}
        if rows:
            tensors = {name: torch.stack([getattr(sl.opt, name).detach().cpu() for sl in rows])
                       for name in ("p", "m", "v")}
            # What each row awaiting its check was evaluated at (p + (round(p) - p) need not be round(p) bit for bit).
            q = [sl.cand[0].detach().cpu() for sl in rows if sl.cand]
            if q:
                tensors["q"] = torch.stack(q)
        return {
            "step": self.step, "total": self.total, "done": self.finished, "taken": self.taken,
            "pending": [j.tag for j in self.pending],
            "slots": [{"tag": sl.job.tag, "t": sl.t, "best": sl.best, "best_t": sl.best_t, "polish": sl.polish,
                       "search_steps": sl.search_steps, "extra": sl.extra, "decodes": sl.decodes,
                       "cand": list(sl.cand[1:]) if sl.cand else None} for sl in rows],
            "tensors": tensors,
        }

    def restore(self, state: dict, rebuild: Callable[[Any], Job]) -> None:
        """Continue from snapshot_state's record (checked as well-formed by the journal): its rows must
        be this search's shape, and it cannot have drawn more jobs than there are."""
        dev, s = self.lm.device, self.s
        row = (s.vectors, s.rank or self.lm.hidden_size)
        ten = state["tensors"]
        if any(tuple(t.shape[1:]) != row for name, t in ten.items() if name in ("p", "m", "v", "q")):
            raise VerificationError(f"the journal's snapshot holds rows of another shape than {row}")
        self.step, self.total, self.finished, self.taken = state["step"], state["total"], state["done"], state["taken"]
        for _ in range(self.taken):
            if next(self.source, None) is None:
                raise VerificationError("the journal's snapshot drew more chunks than are planned")
        self.pending = deque(rebuild(_tag(t)) for t in state["pending"])
        for i, rec in enumerate(state["slots"]):
            sl = self.new_slot(rebuild(_tag(rec["tag"])), ten["p"][i].to(dev).clone())
            sl.opt.m, sl.opt.v = ten["m"][i].to(dev).clone(), ten["v"][i].to(dev).clone()
            sl.t, sl.best, sl.best_t = rec["t"], rec["best"], rec["best_t"]
            sl.polish, sl.search_steps = rec["polish"], rec["search_steps"]
            sl.extra, sl.decodes = rec.get("extra", 0.0), rec.get("decodes", 0)
            if rec.get("cand") is not None:  # at the margin, not yet checked
                sl.cand = (ten["q"][len(self.waiting)].to(dev), *rec["cand"])
                self.waiting.append(sl)
            else:
                (self.slots if len(self.slots) < self.s.batch_size else self.back).append(sl)


def _tag(x: Any) -> Any:
    return tuple(_tag(v) for v in x) if isinstance(x, list) else x


def cram(
    lm: LoadedModel,
    jobs: Iterable[Job],
    s: SearchSettings,
    progress: Progress | None = None,
    on_result: Callable[[Job, CramResult], Sequence[Job]] | None = None,
    snapshot: Callable[[dict], None] | None = None,
    snapshot_every: float = 60.0,
    resume: dict | None = None,
    rebuild: Callable[[Any], Job] | None = None,
    total: int | None = None,
    trace: Trace | None = None,
) -> list[tuple[Job, CramResult]]:
    """Find memory vectors for each job; returns (job, result) in completion order.

    A result is ok only if the float32 greedy decode of its stored vectors gave
    the chunk back with the margin. on_result sees each result as soon as its chunk
    is settled and may return follow-up jobs (pack returns the two halves of a chunk
    that failed), which join the running batch at once. With on_result, results are
    handed over and not kept (the list returned is empty), and jobs are drawn from
    the iterable only as slots free up, so a long input costs memory for the batch.

    snapshot receives the whole in-flight state (at a step boundary, at most every
    snapshot_every seconds); cram(resume=that state, rebuild=tag -> Job) continues
    from it exactly. Tags must then be JSON values. trace, for benchmarks, sees every
    group step and greedy check with its timing.
    """
    s = s.resolved(lm.hidden_size, lm.fast_bf16())
    total = total if total is not None else len(jobs)  # type: ignore[arg-type]
    run = Search(lm, jobs, s, total, on_result, progress, trace)
    if resume is not None:
        run.restore(resume, rebuild)
    return run.run(snapshot, snapshot_every)
