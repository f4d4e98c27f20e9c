"""What a search is asked to do: one typed record, checked where it is made concrete."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import torch

from .. import overrides
from ..errors import VecarcError
from ..format.quant import FORMS

VECTOR_DTYPES = FORMS  # storage forms: vecarc.format.quant
AUTO_RANK = 256
AUTO_MIN_WIDTH = 512
SEARCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
COMPILE_MIN_CHUNKS = 128


@dataclass(frozen=True)
class SearchSettings:
    """How memory vectors are found and stored. Measured choices: docs/benchmarks.md.

    A pack sets `margin` from its PackConfig (the margin the whole archive promises);
    calibration keys its profiles by it.
    """

    vectors: int = 1  # memory vectors per chunk
    lr: float = 0.5  # Adam step on whole vectors
    beta1: float = 0.9
    beta2: float = 0.9
    margin: float = 0.5  # required min(correct logit - best other logit)
    max_steps: int = 400  # a chunk not solved by then is split: cheaper than pushing on
    patience: int = 150  # give up (and let pack split the chunk) after this many steps without a lower loss
    batch_size: int = 8
    seed: int = 0
    vector_dtype: str = "int8"  # storage form (vecarc.format.quant): what is stored, what the model sees in training
    init_scale: float = 20.0  # initial std in units of the embedding std: solved vectors end up about this large
    # Model copy for the search; only the float32 greedy decode decides what is stored.
    # "auto": bf16 where it runs in hardware (LoadedModel.fast_bf16), else fp32.
    search_dtype: str = "auto"
    # Margin above `margin` the search must reach before the float32 check (0: none; a recorded setting).
    search_extra: float = 0.0
    # 0: whole vectors are stored; r: each vector is P @ z with r stored numbers (vecarc.format.basis);
    # None: AUTO_RANK where the model is wide enough (see resolved()).
    rank: int | None = None
    rank_lr: float = 4.5  # Adam step on low-rank coordinates: a random subspace needs far bigger steps
    basis_seed: int = 0  # seed of P, recorded in the header
    # torch.compile the search copy. "auto": on the CPU for jobs of COMPILE_MIN_CHUNKS chunks or more,
    # where even the first (slow) compile pays; decided by the job, so the same command makes the same archive.
    compile: str = "auto"

    def record(self) -> dict:
        return {"optimizer": "adam", **asdict(self)}

    def resolved(self, d: int, fast_bf16: bool = False) -> SearchSettings:
        """These settings with the rank and search dtype made concrete, and checked, for a
        model of width d on a device where bf16 is (or is not) fast.

        int8 at rank 256 was measured on the default model (d = 576): it held every 32-token
        chunk of the sweep in fewer steps than fp16 whole vectors, at 258 bytes instead of 1,152.
        Narrower models keep whole vectors; wider ones get 256 too (not measured there).
        """
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin > 0):
            raise VecarcError(f"the margin must be a finite number above 0, got {self.margin!r}")
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

    def with_overrides(self, items: Iterable[str]) -> SearchSettings:
        """These settings with KEY=VALUE strings applied (vecarc.overrides)."""
        return overrides.apply(self, items)

    @property
    def step_size(self) -> float:
        return self.rank_lr if self.rank else self.lr


def wants_compile(s: SearchSettings, device: torch.device, chunks: int) -> bool:
    """Whether the search runs compiled: decided by the job alone, so the same command
    makes the same archive however warm inductor's cache is."""
    return s.compile == "on" or (s.compile == "auto" and device.type == "cpu" and chunks >= COMPILE_MIN_CHUNKS)
