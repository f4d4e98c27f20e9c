"""The CLI's shared options, and the one place a failure becomes a line on stderr and an exit code."""

from __future__ import annotations

import math
import os
import sys
import traceback
from functools import wraps

import click

from .config import PackConfig
from .display import say
from .errors import VecarcError, describe
from .search import SEARCH_DTYPES, VECTOR_DTYPES, SearchSettings

model_opt = click.option("--model", default=None, metavar="NAME_OR_PATH",
                         help="Hub id[@rev], local folder or .gguf (default: embedded SmolLM2-135M).")
device_opt = click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
quiet_opt = click.option("-q", "--quiet", is_flag=True, help="No progress or summary.")
verbose_opt = click.option("-v", "--verbose", is_flag=True, help="More detail; tracebacks on internal errors.")
seed_opt = click.option("--seed", default=0, show_default=True, type=int)


def byte_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        n = float(t[: len(t) - len(unit)])
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size such as 64M or 1G") from None
    if not 0 <= n < 1 << 50:
        raise click.BadParameter(f"{text!r} is out of range")
    return int(n * units[unit])


def engine_options(fn):
    """Where the chunks are computed: this process, or a Ray cluster (pip install 'vecarc[ray]')."""
    fn = click.option("--workers", default=0, type=click.IntRange(0), metavar="N",
                      help="Ray workers (default: one per GPU, or one per CPU core less one).")(fn)
    fn = click.option("--address", default=None, metavar="ADDR",
                      help="Ray cluster to join ('auto': this node's); default: start a local one.")(fn)
    return click.option("--engine", default="local", show_default=True, type=click.Choice(["local", "ray"]),
                        help="local: this process; ray: a pool of Ray workers.")(fn)


def _finite_positive(ctx, param, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a finite number above 0, got {value}")
    return value


_SEARCH_OPTIONS = [
    seed_opt,
    click.option("--vectors", default=1, show_default=True, type=click.IntRange(1, 64),
                 help="Memory vectors per chunk."),
    click.option("--vector-dtype", default=SearchSettings.vector_dtype, show_default=True,
                 type=click.Choice(list(VECTOR_DTYPES))),
    click.option("--rank", default=None, type=click.IntRange(0),
                 help="Store R numbers per vector (the vector is P @ z for a fixed ±1 P); 0 stores whole vectors. "
                      "Default: 256 for models at least 512 wide (the default model), else 0."),
    click.option("--margin", default=PackConfig.margin, show_default=True, type=float, callback=_finite_positive,
                 help="Required logit margin."),
    click.option("--max-steps", default=SearchSettings.max_steps, show_default=True, type=click.IntRange(1)),
    click.option("--batch-size", default=SearchSettings.batch_size, show_default=True, type=click.IntRange(1)),
    click.option("--search-dtype", default=SearchSettings.search_dtype, show_default=True,
                 type=click.Choice(["auto", *SEARCH_DTYPES]),
                 help="Model copy the search runs on (auto: bf16 where the hardware has it); "
                      "the float32 model always confirms the margin."),
]


dict_opt = click.option("--dict", "dictionary", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                        help="The dictionary (vecarc train) coded chunks are coded after; an archive packed "
                             "with one needs it to be read.")


def reader_options(fn):
    """What every command that decodes takes: the model, the device, the dictionary, and where the chunks
    are decoded."""
    return model_opt(device_opt(dict_opt(engine_options(fn))))


def search_options(fn):
    """The options that make a SearchSettings, shared by pack and calibrate."""
    for opt in reversed(_SEARCH_OPTIONS):
        fn = opt(fn)
    return fn


def handled(fn):
    """Turn every failure into one line on stderr and a trustworthy exit code."""

    @wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VecarcError as e:
            say(f"vecarc: error: {e}")
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            say("vecarc: interrupted; nothing written")
            sys.exit(130)
        except BrokenPipeError:  # `vecarc info A | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)
        except Exception as e:  # a bug: still one line unless -v
            if kwargs.get("verbose"):
                traceback.print_exc()
            say(f"vecarc: internal error: {describe(e)}")
            sys.exit(2)

    return run
