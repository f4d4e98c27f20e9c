"""Where chunks are computed beyond this process: a fixed pool of Ray actors.

The driver plans (a pure function of the inputs and settings) and hands out shards
of planned chunks; each worker loads the model once, runs the same search or
prediction and the same greedy check as a local pack, and sends back the chunks'
fates as compact records (the journal's form: coordinates and corrections, never
a batch's tensors). The driver journals each shard as it arrives, so a killed
driver loses only the shards in flight, and assembles the archive in plan order.

Ray Core actors rather than Ray Data: the plan is already made on the driver, the
results must reach the journal one shard at a time in any order, and a pool of
actors with `ray.wait` needs no read tasks that busy actors could starve.
Nothing here imports Ray until a RayEngine runs.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import dictionary as dictionaries
from .capacity import search_samples
from .chunks import MODES, ChunkRecord, Item, coded
from .config import PackConfig
from .decode import decode_many
from .dictionary import Dictionary
from .errors import VecarcError, VerificationError, describe
from .events import Progress, emit
from .format import Archive
from .format.compact import Prefix
from .models import LoadedModel, load_model
from .robust import ConditionReport, combine, stress
from .search import SearchSettings

Record = tuple[dict, dict]  # (meta, tensors): a ChunkRecord as the journal stores it
DecodeShard = tuple[list, list[int], list | None]  # prefix vectors, lengths, corrections of up to 64 chunks
CodedShard = tuple[list[int], list[bytes], list[int], list[list[int]]]  # indices, streams, lengths, contexts
StressShard = tuple[list, list[list[int]], list | None]  # prefix vectors, tokens, corrections of up to 64 chunks


def work_shard(lm: LoadedModel, cfg: PackConfig, items: Sequence[Item]) -> list[Record]:
    """The fates of a shard's chunks, computed as a local pack computes them, in the journal's form."""
    out: list[Record] = []
    MODES[cfg.mode].compute(lm, cfg, items, lambda rec: out.append(rec.to_journal()))
    return out


class ShardWorker:
    """One Ray actor: loads the model once, then computes shard after shard."""

    def __init__(self, source: str, fingerprint: str, sink: int, cfg: PackConfig, device: str, threads: int,
                 dictionary: Dictionary | None = None, own: Prefix | None = None):
        import torch

        torch.set_num_threads(threads)
        self.cfg, self.error = cfg, None
        try:  # an actor whose constructor raises dies without its reason: keep it for run() to raise
            lm = load_model(source, device)
            if lm.fingerprint != fingerprint:
                raise VecarcError(f"the worker loaded {source} as {lm.fingerprint[:19]}…, not the driver's "
                                  f"{fingerprint[:19]}…: every node needs the same model files")
            self.lm = replace(lm, sink_id=sink)
            if dictionary is not None or own is not None:  # what the driver's coded chunks read after the sink
                self.lm = dictionaries.attach(self.lm, dictionary, own)
        except Exception as e:
            self.error = e

    def run(self, items: Sequence[Item], fault_marker: str | None = None) -> list[Record]:
        self._ready(fault_marker)
        return work_shard(self.lm, self.cfg, items)

    def calibrate(self, windows: Sequence[tuple[str, list[int]]], first_tokens: int, tol: float,
                  fault_marker: str | None = None) -> tuple[list, list]:
        self._ready(fault_marker)
        return search_samples(self.lm, self.cfg.search, windows, first_tokens, tol)

    def decode(self, shard: DecodeShard, fault_marker: str | None = None) -> tuple[list[list[int]], list[float]]:
        self._ready(fault_marker)
        vectors, lengths, corrections = shard
        return decode_many(self.lm, vectors, lengths, corrections=corrections)

    def stress(self, shard: StressShard, fault_marker: str | None = None) -> list[ConditionReport]:
        self._ready(fault_marker)
        vectors, tokens, corrections = shard
        return stress(self.lm, vectors, tokens, corrections=corrections)

    def decode_coded(self, shard: CodedShard, fault_marker: str | None = None) -> list[list[int]]:
        self._ready(fault_marker)
        indices, streams, lengths, contexts = shard
        return coded.decode_streams(self.lm, streams, lengths, indices, contexts=contexts)

    def _ready(self, fault_marker: str | None) -> None:
        if self.error is not None:
            raise self.error
        if fault_marker is not None:  # tests: die once, as a lost node would; the worker that removes it dies
            try:
                os.unlink(fault_marker)
            except FileNotFoundError:
                return
            os._exit(1)


@dataclass
class RayEngine:
    """Pack, calibrate, unpack or verify on a Ray cluster: `address` None starts a local one (or uses the one this
    process has joined), "auto" joins the cluster of this node. workers 0: one per GPU, or on CPUs
    one per core less one (Ray's own processes need a core). A shard whose worker dies is retried
    on a fresh worker up to `retries` times; then the pack fails and writes nothing."""

    address: str | None = None
    workers: int = 0
    shard_chunks: int = 0  # chunks per shard; 0: a full batch, or an equal share when that is fewer
    retries: int = 2
    fault_marker: str | None = None  # tests only: a worker that finds this file removes it and exits
    # workers kept across the calls of one command (volumes, waves), by model and settings; close() stops them
    _pools: dict = field(default_factory=dict, repr=False, compare=False)

    def run(self, lm: LoadedModel, cfg: PackConfig, items: Sequence[Item],
            on_shard: Callable[[list[Item], list[ChunkRecord]], None], progress: Progress | None = None) -> None:
        """Compute every item; on_shard(shard, records) receives each shard's items and records as they
        arrive, the records checked as a journal's are (a worker is another process, maybe another machine)."""
        if not items:
            return
        pool = self._pool(lm, cfg)
        # A greedy step reads every weight whatever the rows, so a shard is a full batch (64
        # predicted chunks; four batches of vector chunks, to keep the slots busy), and a small
        # input is one shard per worker.
        full = 64 if cfg.predicted else 4 * cfg.search.batch_size
        size = self.shard_chunks or max(1, min(full, math.ceil(len(items) / pool.size)))
        shards = [list(items[i : i + size]) for i in range(0, len(items), size)]
        done = [0]

        def back(k: int, records: list[Record]) -> None:
            try:
                checked = [ChunkRecord.from_journal(meta, tensors) for meta, tensors in records]
            except VecarcError as e:
                raise VerificationError(f"a worker's reply for shard {k} is malformed ({e}); nothing written") \
                    from None
            on_shard(shards[k], checked)
            done[0] += len(shards[k])
            emit(progress, event="predict" if cfg.predicted else "shard", done=done[0], total=len(items))

        pool.drive(shards, lambda w, shard: w.run.remote(shard, self.fault_marker), back, progress, keep=True)

    def calibrate(self, lm: LoadedModel, s: SearchSettings, windows: Sequence[tuple[str, list[int]]],
                  first_tokens: int, tol: float, progress: Progress | None = None) -> tuple[list, list]:
        """capacity.search_samples, one sample a shard; the results in the samples' order."""
        pool = self._pool(lm, PackConfig(mode="vectors", margin=s.margin, search=s, min_chunk_tokens=1))
        found: list = [None] * len(windows)
        searches: list = [None] * len(windows)

        def back(k: int, result: tuple[list, list]) -> None:
            (found[k],), (searches[k],) = result
            for t in found[k].tries:
                emit(progress, event="calibrate", sample=k, source=found[k].source, tokens=t["tokens"],
                     steps=t["steps"], ok=t["ok"], margin=None)

        pool.drive([[w] for w in windows], lambda w, shard: w.calibrate.remote(shard, first_tokens, tol,
                                                                                self.fault_marker), back, progress,
                   keep=True)
        return found, searches

    def decode(self, lm: LoadedModel, jobs: Sequence[tuple[list[int], list, list | None]], lengths: Sequence[int],
               progress: Progress | None = None) -> tuple[dict[int, list[int]], dict[int, float]]:
        """Greedy-decode chunks on the pool, a batch (64 rows) a shard: jobs as unpacking.greedy_jobs makes
        them, lengths by chunk index. Returns tokens and smallest margins by chunk index; the driver checks
        every chunk's hash and every document's SHA-256 as a local unpack does."""
        shards: list[tuple[list[int], DecodeShard]] = [
            (part, (vecs, [lengths[c] for c in part], corrections)) for part, vecs, corrections in _batches(jobs)]
        tokens: dict[int, list[int]] = {}
        margins: dict[int, float] = {}
        if not shards:
            return tokens, margins

        def back(k: int, result: tuple[list[list[int]], list[float]]) -> None:
            tokens.update(zip(shards[k][0], result[0]))
            margins.update(zip(shards[k][0], result[1]))
            emit(progress, event="decode", done=len(tokens), total=sum(len(p) for p, _ in shards))

        pool = self._pool(lm, PackConfig())
        pool.drive([shard for _, shard in shards], lambda w, shard: w.decode.remote(shard, self.fault_marker), back,
                   progress, keep=True)
        return tokens, margins

    def stress(self, lm: LoadedModel, jobs: Sequence[tuple[list[int], list, list | None]], tokens: dict[int, list[int]],
               progress: Progress | None = None) -> list[ConditionReport]:
        """verify --strict's decodes under other conditions (vecarc.robust.stress), a batch (64 chunks) a
        shard; the reports combined as a local verify combines them."""
        shards = [(vecs, [tokens[c] for c in part], corrections) for part, vecs, corrections in _batches(jobs)]
        parts: list[list[ConditionReport]] = [[] for _ in shards]

        def back(k: int, result: list[ConditionReport]) -> None:
            parts[k] = result
            emit(progress, event="note", message=f"stress shard {k + 1} of {len(shards)} checked")

        if shards:
            pool = self._pool(lm, PackConfig())
            pool.drive(shards, lambda w, shard: w.stress.remote(shard, self.fault_marker), back, progress, keep=True)
        return combine(parts)

    def decode_coded(self, lm: LoadedModel, archive: Archive, todo: Sequence[int],
                     progress: Progress | None = None) -> dict[int, list[int]]:
        """Coded chunks on the pool, a decode batch (16 chunks side by side) a shard, as coded.decode orders
        them (one wave after another where chunks read their context); tokens by chunk index, their hashes
        checked by the driver as a local unpack's are."""
        def run(indices: list[int], streams: list[bytes], lengths: list[int], contexts: list[list[int]],
                on: Progress | None) -> list:
            rows = coded.DECODE_ROWS
            shards = [(indices[i : i + rows], streams[i : i + rows], lengths[i : i + rows], contexts[i : i + rows])
                      for i in range(0, len(indices), rows)]
            got: list = [None] * len(shards)

            def back(k: int, result: list[list[int]]) -> None:
                got[k] = result
                emit(on, event="decode", done=sum(len(g) for g in got if g is not None), total=len(indices))

            self._pool(lm, PackConfig()).drive(shards, lambda w, shard: w.decode_coded.remote(shard, self.fault_marker),
                                               back, on, keep=True)
            return [tokens for part in got for tokens in part]

        return coded.decode(lm, archive, todo, progress, run)

    def close(self) -> None:
        """Stop the workers kept for this engine's next call (api functions call it when they return)."""
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def _pool(self, lm: LoadedModel, cfg: PackConfig) -> _Pool:
        d = dictionaries.of(lm)
        key = (lm.fingerprint, lm.sink_id, repr(replace(cfg, engine=None)), d and d.id, dictionaries.own_prefix(lm))
        if key not in self._pools:
            self.close()  # one pool at a time: kept workers hold their CPUs, which a new pool would wait for
            self._pools[key] = self._new_pool(lm, cfg)
        return self._pools[key]

    def _new_pool(self, lm: LoadedModel, cfg: PackConfig) -> _Pool:
        ray = _ray()
        if not ray.is_initialized():
            _reachable(self.address)
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except Exception as e:  # noqa: BLE001 - Ray's own errors name no type a caller could catch
                raise VecarcError(f"cannot start or join Ray at {self.address or 'a local cluster'}: "
                                  f"{describe(e)}") from None
        gpus = int(ray.cluster_resources().get("GPU", 0))
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = self.workers or (gpus or max(1, cpus - 1))
        per = 1 if gpus else max(1, (cpus - 1) // n)  # threads (and CPUs reserved) per worker
        actor = ray.remote(num_gpus=1 if gpus else 0, num_cpus=per, max_restarts=0,
                           max_task_retries=0)(ShardWorker)
        args = (lm.source, lm.fingerprint, lm.sink_id, replace(cfg, engine=None), "cuda" if gpus else "cpu", per,
                dictionaries.of(lm), dictionaries.own_prefix(lm))
        return _Pool(ray, lambda: actor.remote(*args), n, self.retries)


@dataclass
class _Pool:
    """n workers kept busy until every shard is back; a worker that dies is replaced."""

    ray: Any
    start: Callable[[], Any]
    size: int
    retries: int
    kept: list = field(default_factory=list)  # idle workers a `keep` drive left for the next one

    def drive(self, shards: Sequence[Any], submit: Callable[[Any, Any], Any], back: Callable[[int, Any], None],
              progress: Progress | None, keep: bool = False) -> None:
        """Every shard through the workers; they are stopped at the end, or with keep, left idle for the next
        drive (close() stops them)."""
        from ray.exceptions import RayActorError, RayTaskError

        ray = self.ray
        idle, self.kept = self.kept, []
        idle += [self.start() for _ in range(min(self.size, len(shards)) - len(idle))]
        queue, failures = deque(range(len(shards))), [0] * len(shards)
        running: dict = {}  # object ref -> (worker, shard index)
        try:
            while queue or running:
                while idle and queue:
                    k, w = queue.popleft(), idle.pop()
                    running[submit(w, shards[k])] = (w, k)
                ready, _ = ray.wait(list(running), num_returns=1)
                w, k = running.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except RayTaskError as e:  # the worker's own error (a model it cannot load, a bug): no retry helps
                    cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                    raise VecarcError(f"a worker failed on shard {k}: {describe(cause)}; nothing written") from None
                except RayActorError as e:
                    failures[k] += 1
                    if failures[k] > self.retries:
                        raise VecarcError(f"shard {k} lost its worker {failures[k]} times ({describe(e)}); nothing "
                                          f"written (finished shards are in the journal: --resume)") from None
                    ray.kill(w, no_restart=True)
                    emit(progress, event="note", message=f"a worker died on shard {k}; retrying it on a new one")
                    idle.append(self.start())
                    queue.appendleft(k)
                    continue
                back(k, result)
                idle.append(w)
            if keep:
                self.kept, idle = idle, []
        finally:
            for w in [w for w, _ in running.values()] + idle:
                ray.kill(w, no_restart=True)

    def close(self) -> None:
        for w in self.kept:
            self.ray.kill(w, no_restart=True)
        self.kept = []


def _batches(jobs: Sequence[tuple[list[int], list, list | None]], size: int = 64):
    """Greedy jobs (chunk indices, prefix vectors, corrections or None) cut into shards of one greedy batch."""
    for idx, vecs, corrections in jobs:
        for i in range(0, len(idx), size):
            yield idx[i : i + size], vecs[i : i + size], None if corrections is None else corrections[i : i + size]


def releases_workers(fn: Callable) -> Callable:
    """For a command that takes an engine (`engine=`, or `config.engine`): the workers its engine kept across
    volumes and waves are stopped when the command returns or fails."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def command(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            given = signature.bind_partial(*args, **kwargs).arguments
            engine = given.get("engine") or getattr(given.get("config"), "engine", None)
            if callable(close := getattr(engine, "close", None)):
                close()

    return command


def _ray():
    try:
        import ray
    except ImportError:
        raise VecarcError("--engine ray needs Ray: pip install 'vecarc[ray]'") from None
    return ray


def engine_for(name: str, address: str | None = None, workers: int = 0) -> RayEngine | None:
    """The engine a --engine value names: None for local (this process)."""
    if name == "local":
        if address is not None or workers:
            raise VecarcError("--address and --workers need --engine ray")
        return None
    if name == "ray":
        _host_port(address)
        return RayEngine(address=address, workers=workers)
    raise VecarcError(f"unknown engine {name!r}: use local or ray")


CONNECT_TIMEOUT = 10.0  # seconds to reach a Ray head before giving up (Ray itself retries for minutes)


def _host_port(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a Ray address, None for "local", "auto" or none; one line for anything else."""
    if address is None or address in ("auto", "local"):
        return None
    m = re.fullmatch(r"(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})", address)
    if m is None or not 0 < int(m[2]) < 65536:
        raise VecarcError(f"--address {address!r} is not auto, local, HOST:PORT or ray://HOST:PORT")
    return m[1].strip("[]"), int(m[2])


def _reachable(address: str | None) -> None:
    """Refuse within CONNECT_TIMEOUT an address where nothing listens, before Ray's minutes of retries."""
    where = _host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise VecarcError(f"nothing answers at the Ray address {address} ({e.strerror or describe(e)}; "
                          f"waited up to {CONNECT_TIMEOUT:g} s)") from None
