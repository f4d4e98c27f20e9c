"""The model fingerprint: one hash over everything that decides what greedy decoding gives.

Scheme 2 (`fp2:`, written from format 4) covers the weights, the configuration entries that
are not informational, the tokenizer and its special tokens, in a byte stream specified in
docs/format.md ("Model fingerprint") that leans on no library's string forms. Scheme 1
(`sha256:`, formats 2 and 3) covered weights and tokenizer only; it is still computed for
archives that record it.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .errors import VecarcError

SCHEME = "fp2"
LEGACY = "sha256"
SCHEMES = (SCHEME, LEGACY)
MAGIC = b"vecarc fingerprint 2\n"

# safetensors' names for the dtypes a checkpoint can hold.
DTYPE_CODES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}

# Configuration keys that do not change the logits of an eval-mode model given the same
# weights: names, bookkeeping, output switches and training-only values. Dropped at every
# depth, with every key that starts with "_", ends with "_token_id" (the special tokens are
# hashed from the tokenizer instead) or "pdrop", or holds "dropout".
INFORMATIONAL = frozenset({
    "transformers_version", "architectures", "dtype", "torch_dtype", "attn_implementation",
    "id2label", "label2id", "num_labels", "problem_type", "finetuning_task", "task_specific_params", "prefix",
    "output_attentions", "output_hidden_states", "return_dict", "use_return_dict", "torchscript", "use_cache",
    "tokenizer_class", "auto_map", "custom_pipelines", "quantization_config", "initializer_range",
    "chunk_size_feed_forward", "tf_legacy_loss", "pruned_heads",
})


def scheme_of(value: str) -> str:
    """The scheme a recorded fingerprint names, or VecarcError. Formats 5 and 6 keep a digest's first 64, 32 bits."""
    scheme, _, digest = value.partition(":")
    if scheme not in SCHEMES or len(digest) not in (8, 16, 64) or digest.strip("0123456789abcdef"):
        raise VecarcError(f"unknown model fingerprint {value[:24]!r}")
    return scheme


def _informational(key: str) -> bool:
    return (key in INFORMATIONAL or key.startswith("_") or key.endswith(("_token_id", "pdrop"))
            or "dropout" in key)


def _normal(value: Any) -> Any:
    """Config values as canonical JSON values: integral floats as integers, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items() if not _informational(str(k))}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise VecarcError(f"cannot fingerprint a configuration holding {value}")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)  # enums and the like; none seen in causal-LM configs


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, ASCII (\\uXXXX escapes), floats as their shortest round trip."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def config_entries(config: Any) -> dict:
    """The entries of a transformers config that are not informational and differ from the
    defaults of its class: a field a later transformers adds with its default leaves it alone."""
    mine = _normal(config.to_dict())
    try:
        defaults = _normal(type(config)().to_dict())
    except Exception:  # a config class that needs arguments: every entry counts
        defaults = {}
    return {k: v for k, v in mine.items() if k not in defaults or defaults[k] != v}


def special_tokens(tokenizer: Any, sink: int) -> dict:
    """The tokenizer's special-token roles and what it adds around a text, and the sink."""
    roles = {r: getattr(tokenizer, f"{r}_token_id", None) for r in ("bos", "eos", "unk", "pad")}
    return roles | {"added": added_tokens(tokenizer), "sink": sink}


def added_tokens(tokenizer: Any) -> list[int]:
    """What the tokenizer adds to a text with special tokens on: the empty text's ids."""
    return [int(i) for i in tokenizer("", add_special_tokens=True)["input_ids"]]


def tokenizer_json(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise VecarcError("vecarc needs a fast (Rust `tokenizers`) tokenizer for this model")
    return json.loads(backend.to_str())


def tensor_records(state: dict[str, torch.Tensor]) -> Iterable[tuple[str, str, tuple[int, ...], bytes]]:
    for name in sorted(state, key=lambda n: n.encode()):
        t = state[name].detach().to("cpu").contiguous()
        if t.dtype not in DTYPE_CODES:
            raise VecarcError(f"cannot fingerprint tensor {name!r} of dtype {t.dtype}")
        yield name, DTYPE_CODES[t.dtype], tuple(t.shape), t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def digest(tensors: Iterable[tuple[str, str, tuple[int, ...], bytes]], config: dict, tokenizer: Any,
           special: dict) -> str:
    """Scheme 2 over its parts; the byte stream is docs/format.md's, field for field."""
    h = hashlib.sha256(MAGIC)
    records = list(tensors)
    h.update(struct.pack("<Q", len(records)))
    for name, code, shape, raw in records:
        n, c = name.encode(), code.encode()
        h.update(struct.pack("<I", len(n)) + n + struct.pack("<B", len(c)) + c)
        h.update(struct.pack(f"<I{len(shape)}Q", len(shape), *shape) + struct.pack("<Q", len(raw)))
        h.update(raw)
    for part in (config, tokenizer, special):
        blob = canonical_json(part)
        h.update(struct.pack("<Q", len(blob)) + blob)
    return f"{SCHEME}:{h.hexdigest()}"


def fingerprint(model: Any, tokenizer: Any, sink: int) -> str:
    """Scheme 2 of a loaded model."""
    return digest(tensor_records(model.state_dict()), config_entries(model.config), tokenizer_json(tokenizer),
                  special_tokens(tokenizer, sink))


def legacy_fingerprint(model: Any, tokenizer: Any) -> str:
    """Scheme 1: tensor names, PyTorch dtype strings, Python shape tuples and bytes, then the tokenizer."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(tokenizer_json(tokenizer), sort_keys=True).encode())
    return f"{LEGACY}:{h.hexdigest()}"


def sha256_file(path: Path) -> str:
    """A file's SHA-256, read in blocks: model files and volumes are large."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
