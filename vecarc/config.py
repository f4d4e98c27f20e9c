"""What a pack is asked to do: one typed record, checked once and resolved once per pack.

The mode decides how chunks are stored; the search settings matter only to vector
chunks; the rest (chunk sizes, the capacity plan's fill, checkpoints, volumes, the
engine) is shared by every mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from . import overrides
from .errors import VecarcError
from .exact.model import not_covered
from .format.compact import DEFAULT_CHUNK, MAX_CONTEXT, MAX_PREFIX
from .models import LoadedModel
from .plan import MIN_CHUNK_TOKENS, chunk_tokens_for
from .search.settings import SearchSettings

MODES = ("coded", "predict", "vectors")
# Predicted chunks: more context, fewer corrections (512 against 256: -3 %; 1,024: -2 % more, but
# half the rows to decode side by side, so about twice the unpack time).
PREDICT_TOKENS = 512
# Coded chunks: one 1,024-token chunk is 4-13 % smaller than two of 512 on the 4 KiB tuning slices and still
# unpacks 2.4-3.3x faster than predicted ones (docs/benchmarks.md). Format 6 stores no chunk size for it.
CODED_TOKENS = DEFAULT_CHUNK
DEFAULT_FILL = 0.9  # the capacity plan cuts chunks to this fraction of the calibrated budget
# Input bytes per volume: a few hundred MiB of memory while packing one, and in vectors mode
# (~38 tokens a chunk) well inside the reader's header cap (~500,000 chunks, docs/reliability.md).
DEFAULT_VOLUME_SIZE = 32 << 20


class Engine(Protocol):
    """Where chunks are computed beyond this process: vecarc.engine.RayEngine. The layers below the
    engine (config, capacity, unpacking) know it by this interface only, so none imports it."""

    def run(self, lm: LoadedModel, cfg: PackConfig, items: Any, on_shard: Any, progress: Any = None) -> None: ...

    def calibrate(self, lm: LoadedModel, s: SearchSettings, windows: Any, first_tokens: int, tol: float,
                  progress: Any = None) -> tuple[list, list]: ...

    def decode(self, lm: LoadedModel, jobs: Any, lengths: Any, progress: Any = None) -> tuple[dict, dict]: ...


@dataclass(frozen=True)
class PackConfig:
    # "coded": tokens range-coded under the integer model (vecarc.chunks.coded), for the models it
    # covers (pack falls back to "predict" elsewhere); "predict": the model decodes each chunk alone and
    # the tokens it gets wrong are stored (vecarc.chunks.predicted); "vectors": memory vectors.
    mode: str = "coded"
    margin: float = 0.5  # every choice the decoder makes leads by this much in the logits
    search: SearchSettings = field(default_factory=SearchSettings)  # vector chunks only
    chunk_tokens: int | None = None  # equal chunks of N tokens; None: the mode's default (vectors: capacity plan)
    # coded chunks only: each chunk is coded after the last N tokens before it in its document (smaller
    # archives; a document's chunks then decode one after another instead of side by side)
    context_tokens: int = 0
    # coded chunks only: learn this many vectors on the archive's own text, store them in it and code every
    # chunk after them, where that makes the archive smaller (vecarc.prefix); 0: never
    learn_prefix: int = 0
    min_chunk_tokens: int = MIN_CHUNK_TOKENS  # a vector chunk that fails is split down to this, then kept literal
    fill: float = DEFAULT_FILL
    checkpoint_every: float = 60.0  # seconds between snapshots of the search in the journal
    volume_size: int = DEFAULT_VOLUME_SIZE  # larger inputs become volumes and an index; 0: never
    engine: Engine | None = None  # None: this process

    @property
    def predicted(self) -> bool:
        """Chunks in fixed sizes, decoded by the model from the sink (and, for coded chunks, any context):
        coded and predicted chunks."""
        return self.mode in ("coded", "predict")

    @property
    def planned(self) -> bool:
        """Whether chunks follow the capacity plan (vector chunks without a fixed size)."""
        return not self.predicted and self.chunk_tokens is None

    def checked(self) -> PackConfig:
        if self.mode not in MODES:
            raise VecarcError(f"unknown mode {self.mode!r} (one of {', '.join(MODES)})")
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin > 0):
            raise VecarcError(f"the margin must be a finite number above 0, got {self.margin!r}")
        if self.search.margin not in (SearchSettings.margin, self.margin):
            raise VecarcError(f"a pack's margin is PackConfig.margin ({self.margin:g}); its search settings say "
                              f"{self.search.margin:g}: set margin= on the PackConfig")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise VecarcError("chunk size must be at least one token")
        if self.context_tokens and self.mode != "coded":
            raise VecarcError(f"--context needs coded chunks (--mode coded), not --mode {self.mode}")
        if self.learn_prefix and self.mode != "coded":
            raise VecarcError(f"--learn-prefix needs coded chunks (--mode coded), not --mode {self.mode}")
        if not 0 <= self.learn_prefix <= MAX_PREFIX:
            raise VecarcError(f"--learn-prefix must be from 0 to {MAX_PREFIX} vectors, got {self.learn_prefix}")
        if not 0 <= self.context_tokens <= MAX_CONTEXT:  # format 5's bound
            raise VecarcError(f"--context must be from 0 to {MAX_CONTEXT} tokens, got {self.context_tokens}")
        if self.min_chunk_tokens < 1:
            raise VecarcError("--min-chunk-tokens must be at least 1")
        if not 0 < self.fill <= 4:
            raise VecarcError(f"--fill must be in (0, 4], got {self.fill}")
        if self.checkpoint_every < 0 or self.volume_size < 0:
            raise VecarcError("--checkpoint-every and --volume-size must not be negative")
        return self

    def resolved(self, lm: LoadedModel) -> PackConfig:
        """Checked, with the search made concrete for this model and device (rank, search dtype)."""
        search = replace(self.search, margin=self.margin).resolved(lm.hidden_size, lm.fast_bf16())
        return replace(fallback(self.checked(), lm), search=search)

    def chunk_size(self, lm: LoadedModel) -> int:
        """Tokens per chunk of the fixed plan, within what the model's context allows."""
        k = self.search.vectors  # positions a chunk shares the model's context with, besides the sink
        if self.predicted:  # coded: a dictionary's and the archive's own vectors, and the carried context
            k = lm.extra_inputs + self.context_tokens if self.mode == "coded" else 0
        default = CODED_TOKENS if self.mode == "coded" else PREDICT_TOKENS if self.predicted else chunk_tokens_for(k)
        size = min(self.chunk_tokens or default, lm.chunk_limit(k))
        if size < 1:
            raise VecarcError("chunk size must be at least one token")
        return size

    def record(self, chunk_tokens: int) -> dict:
        """The header's settings record ("cram"): what decides a predicted archive's chunks, or the
        whole search for a vector archive. Informational; its keys and their order are format 4's."""
        if self.mode == "coded":
            return {"mode": self.mode, "chunk_tokens": chunk_tokens} | (
                {"context_tokens": self.context_tokens} if self.context_tokens else {})
        if self.predicted:
            return {"mode": self.mode, "margin": self.margin, "chunk_tokens": chunk_tokens}
        rec = self.search.record()
        return {"optimizer": rec.pop("optimizer"), "mode": self.mode, **rec, "chunk_tokens": chunk_tokens,
                "min_chunk_tokens": self.min_chunk_tokens}

    def with_overrides(self, items: Iterable[str]) -> PackConfig:
        """KEY=VALUE strings applied and checked against the fields' types (vecarc.overrides);
        `search.KEY` reaches the search settings (bar its margin: set `margin`)."""
        items = list(items)
        search = [i.removeprefix("search.") for i in items if i.startswith("search.") and
                  not i.startswith("search.margin=")]
        mine = [i for i in items if not i.startswith("search.") or i.startswith("search.margin=")]
        own = {f.name for f in fields(self)} - {"search", "engine"}
        return replace(overrides.apply(self, mine, own), search=self.search.with_overrides(search)).checked()


def fallback(cfg: PackConfig, lm: LoadedModel, warn: Callable[[str], None] | None = None) -> PackConfig:
    """Coded chunks where the integer path covers the model; predicted chunks, said in one line, elsewhere."""
    why = not_covered(lm.model) if cfg.mode == "coded" else None
    if why is None:
        return cfg
    if warn is not None:
        warn(f"{lm.name}: packing predicted chunks: the integer path that coded chunks need does not cover "
             f"this model ({why})" + (" and --context and --learn-prefix have no effect on them"
                                      if cfg.context_tokens or cfg.learn_prefix else ""))
    return replace(cfg, mode="predict", context_tokens=0, learn_prefix=0)
