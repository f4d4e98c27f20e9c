"""The integer model's forward pass with its elementwise stages in compiled loops (native.cpp).

model.py's tensor code is the reference: ~300 small int64 operations per layer, which is
what a token step costs on a CPU (each operation's dispatch outweighs its arithmetic) and
what a teacher-forced pass costs in memory traffic. Here each stage between two matmuls is
one loop over the rows, computing the same integers (tests compare the two on every
family and on the default model). The library is built once with the system's C++
compiler and kept in the cache; where there is none, or on a GPU, the reference runs.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from .model import FREQ_TOTAL, KV_CLAMP, LINEARS, MLP_CLAMP, QK_CLAMP, QUERY_BLOCK, IntegerModel, Linear
from .tables import LOG2E_Q24

SOURCE = Path(__file__).with_name("native.cpp")
# Built for this CPU: the cache key names its features, so a shared cache holds one build per kind
# of machine. Vector instructions change no value here: every sum is of integers.
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC", "-pthread")
HEAD_BLOCK = 64  # head rows per product: (2 x 64, 49,152) int32 is 25 MB
STEP_QUERIES = 16  # up to this many queries attend in one loop; more go through binary64 products
SIGNATURES = {  # p: a pointer (a tensor or None), i: an int64
    "split_rows": "piipppp", "plain_add": "piipipppppp", "qkv": "piipippiiiippiiippppii",
    "attend_small": "ppppiiiiiiipip", "attend_mid": "piiiippipp", "attend_out": "piiiiipiip",
    "mlp_mid": "piipipppipp", "head_freqs": "piipippiip", "head_symbols": "piipippiipp",
    "stepping": "i", "vnni": "", "pack_weights": "piipp", "gemv": "piiippp",
    "step_layers": "piipppppppppiiiippiiiipppii",
}
STEP_PRODUCT_ROWS = 32  # products of at most this many rows (16 tokens' halves) go to gemv in token steps


def _cpu() -> bytes:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next((x for x in lines if x.startswith(("flags", "Features"))), "").encode()
    except OSError:
        return platform.processor().encode()


def _compiler() -> str | None:
    if os.environ.get("VECARC_NATIVE", "1") == "0":
        return None
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


@cache
def built_path(folder: Path) -> Path | None:
    """Where this source, compiler and CPU's library is kept (None: no compiler, or VECARC_NATIVE=0)."""
    cxx = _compiler()
    if cxx is None:
        return None
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, timeout=60, check=True).stdout
        source = SOURCE.read_bytes()
    except (OSError, subprocess.SubprocessError):
        return None
    key = hashlib.sha256(source + version + " ".join(FLAGS).encode() + platform.machine().encode()
                         + _cpu()).hexdigest()[:16]
    return folder / f"integer-{key}.so"


FAILED: dict[Path, str] = {}  # why a folder's library could not be had, for the caller's note


class Loops:
    """The compiled library, as IntegerModel.native holds it: its functions, and the passes built on them."""

    def __init__(self, cdll: ctypes.CDLL) -> None:
        self.cdll = cdll
        self.vnni = bool(cdll.vnni())
        self.step_threads = 0  # while token steps run (stepping): the threads their products take

    def __getattr__(self, name: str):
        return getattr(self.cdll, name)

    def hidden(self, im: IntegerModel, tokens: torch.Tensor, caches: list[list], start: int) -> torch.Tensor:
        return hidden(im, tokens, caches, start)

    def frequencies(self, im: IntegerModel, x: torch.Tensor) -> torch.Tensor:
        return frequencies(im, x)

    def symbols(self, im: IntegerModel, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return symbols(im, x, targets)


@cache
def library(folder: Path) -> Loops | None:
    """The compiled loops, built into `folder` on first use; None where they cannot be (no compiler,
    VECARC_NATIVE=0, a failed build, FAILED says why): callers then run the tensor code."""
    path = built_path(folder)
    if path is None:
        return None
    tmp = folder / f"{path.stem}.{os.getpid()}.tmp"
    try:
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            for flags in (FLAGS, tuple(f for f in FLAGS if not f.startswith("-march"))):
                done = subprocess.run([_compiler(), *flags, "-o", str(tmp), str(SOURCE)], capture_output=True,
                                      timeout=300)
                if done.returncode == 0:
                    break
            else:
                raise OSError(" ".join(done.stderr.decode(errors="replace").split()[-12:]) or "the compiler failed")
            os.replace(tmp, path)
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            path.unlink(missing_ok=True)  # a damaged build: the next process builds it again
            raise
        torch._int_mm(torch.ones(2, 8, dtype=torch.int8), torch.ones(8, 8, dtype=torch.int8))
    except (OSError, subprocess.SubprocessError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        FAILED[folder] = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None
    for name, sig in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p if c == "p" else ctypes.c_int64 for c in sig]
    return Loops(lib)


def _arg(x):
    return x.data_ptr() if isinstance(x, torch.Tensor) else x


def _call(lib: Loops, name: str, *args) -> None:
    if getattr(lib.cdll, name)(*map(_arg, args)):
        raise ValueError(f"a value left the integer model's bounds ({name})")


def _split(lib, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows quantised into int8 halves (2M, K), with their shifts, or their RMSNorm roots given eps."""
    M, K = x.shape
    both, s = torch.empty(2 * M, K, dtype=torch.int8), torch.empty(M, dtype=torch.int64)
    _call(lib, "split_rows", x, M, K, both, None if eps is not None else s, eps, s if eps is not None else None)
    return both, s


@contextmanager
def stepping(im: IntegerModel, rows: int):
    """Token steps of `rows` rows: their products go to the compiled gemv on the compiled loops' own
    threads, and torch keeps one thread meanwhile (its idle workers would spin on the cores those need).
    Elsewhere (large products, no AVX-512 VNNI, the tensor code) nothing changes."""
    lib = im.native
    if lib is None or not lib.vnni or 2 * rows > STEP_PRODUCT_ROWS or lib.step_threads:  # (or already on)
        yield
        return
    threads = torch.get_num_threads()
    lib.step_threads = threads
    lib.cdll.set_threads(threads)
    lib.cdll.stepping(1)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        lib.cdll.stepping(0)
        lib.step_threads = 0


def _product(im: IntegerModel, both: torch.Tensor, lin: Linear) -> torch.Tensor:
    """both (M, K) int8 times the layer's weights: int32 (M, N), exact however it is computed."""
    lib, (N, K) = im.native, lin.q.shape
    if not lib.step_threads or both.shape[0] > STEP_PRODUCT_ROWS or K % 4:
        return torch._int_mm(both, lin.q.t())
    P, sums = _packed(im, lin)
    out = torch.empty(both.shape[0], N, dtype=torch.int32)
    _call(lib, "gemv", both.contiguous(), both.shape[0], K, N, P, sums, out)
    return out


def _packed(im: IntegerModel, lin: Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's weights as gemv takes them: repacked on first use, a copy kept with the model."""
    if id(lin) not in im.packed:
        (N, K), blocks = lin.q.shape, (lin.q.shape[0] + 15) // 16
        P, sums = torch.empty(blocks * 16 * K, dtype=torch.int8), torch.empty(blocks * 16, dtype=torch.int32)
        _call(im.native, "pack_weights", lin.q.contiguous(), N, K, P, sums)
        im.packed[id(lin)] = (lin, P, sums)
    return im.packed[id(lin)][1:]


def _plan(im: IntegerModel) -> tuple[torch.Tensor, int, int] | None:
    """step_layers' weights: per layer, for each linear, (P, sums, N, K, mult, shift, bias or 0); with the
    widest output and MLP input, for its room. None where some product would not go to gemv (an input
    not a multiple of 4)."""
    if "plan" not in im.packed:
        lins = [[lay[name] for name in LINEARS] for lay in im.layers]
        im.packed["plan"] = None
        if all(lin.q.shape[1] % 4 == 0 for row in lins for lin in row):
            rows = [[v for lin in row for v in (*map(torch.Tensor.data_ptr, _packed(im, lin)), *lin.q.shape,
                                                lin.mult.data_ptr(), lin.shift,
                                                0 if lin.bias is None else lin.bias.data_ptr())] for row in lins]
            im.packed["plan"] = (torch.tensor(rows, dtype=torch.int64), max(lin.q.shape[0] for row in lins
                                 for lin in row), max(row[-1].q.shape[1] for row in lins))
    return im.packed["plan"]


def _step(im: IntegerModel, lib, x: torch.Tensor, both: torch.Tensor, root: torch.Tensor, caches: list[list],
          start: int) -> None:
    """A token step's layers (one token a row) in one call to the compiled loops: x updated in place."""
    sh, M = im.shape, x.shape[0]
    H, Hk, hd = sh.heads, sh.kv_heads, sh.head_dim
    at = [_reserve(cache, M, Hk, hd, 1) for cache in caches][0]
    kv = torch.tensor([[c[0].data_ptr(), c[1].data_ptr(), c[1].shape[2]] for c in caches], dtype=torch.int64)
    weights, widest, inner = _plan(im)
    plan = torch.cat([weights, kv], 1).contiguous()
    cos, sin = im.rope_for(start)
    room = torch.empty(2 * M * max(x.shape[1], H * hd), dtype=torch.int8)  # both's rows, then o's input rows
    room[: both.numel()] = both.reshape(-1)
    s, acc = torch.empty(M, dtype=torch.int64), torch.empty(2 * M * widest, dtype=torch.int32)
    h = torch.empty(2 * M * inner, dtype=torch.int8)
    aq, n = torch.empty(M * H * hd, dtype=torch.float64), torch.empty(M * H, dtype=torch.int64)
    out = torch.empty(M, H * hd, dtype=torch.int64)
    _call(lib, "step_layers", plan, len(im.layers), M, x, room, root, s, acc, h, aq, n, out, H, Hk, hd, start, cos,
          sin, im.score_mult, QK_CLAMP, KV_CLAMP, MLP_CLAMP, im.eps, im.sig, im.exp20, LOG2E_Q24, at)


def _add(lib, x: torch.Tensor, acc: torch.Tensor, lin: Linear, s: torch.Tensor,
         eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x += the layer's output, in place; returns the new rows split for the next layer, with roots."""
    M, N = x.shape
    both, root = torch.empty(2 * M, N, dtype=torch.int8), torch.empty(M, dtype=torch.int64)
    _call(lib, "plain_add", acc, M, N, lin.mult, lin.shift, s, lin.bias, x, both, eps, root)
    return both, root


def hidden(im: IntegerModel, tokens: torch.Tensor, caches: list[list], start: int) -> torch.Tensor:
    """model.IntegerModel.hidden, stage by stage in the compiled loops."""
    lib = im.native
    lib.cdll.set_threads(lib.step_threads or torch.get_num_threads())
    B, T = tokens.shape
    x = im.embed[tokens.reshape(-1)].contiguous()
    both, root = _split(lib, x, im.eps)
    if T == 1 and lib.step_threads and 2 * B <= STEP_PRODUCT_ROWS and _plan(im) is not None:
        _step(im, lib, x, both, root, caches, start)
        return x.reshape(B, T, -1)
    for lay, kv in zip(im.layers, caches):
        both, root = _add(lib, x, *_attention(im, lib, lay, both, root, B, T, start, kv), im.eps)
        acc = _product(im, both, lay["gate_up"])
        gu, inner = lay["gate_up"], acc.shape[1] // 2
        h, s = torch.empty(2 * B * T, inner, dtype=torch.int8), torch.empty(B * T, dtype=torch.int64)
        _call(lib, "mlp_mid", acc, B * T, inner, gu.mult, gu.shift, root, gu.bias, im.sig, MLP_CLAMP, h, s)
        both, root = _add(lib, x, _product(im, h, lay["down"]), lay["down"], s, im.eps)
    return x.reshape(B, T, -1)


def _reserve(cache: list, B: int, Hk: int, hd: int, T: int) -> int:
    """Room for T more positions in a layer's cache [keys (B Hk hd cap), values (B Hk cap hd), length] of
    int32, grown by doubling; returns where they go. Not model._remember's layout: a cache belongs to the
    path that made it."""
    if not cache:
        cache[:] = [torch.empty(B, Hk, hd, 0, dtype=torch.int32), torch.empty(B, Hk, 0, hd, dtype=torch.int32), 0]
    n = cache[2]
    if n + T > cache[1].shape[2]:
        cap = max(64, 1 << (n + T - 1).bit_length())
        keys, values = cache[0].new_empty(B, Hk, hd, cap), cache[1].new_empty(B, Hk, cap, hd)
        keys[..., :n], values[:, :, :n] = cache[0][..., :n], cache[1][:, :, :n]
        cache[0], cache[1] = keys, values
    cache[2] = n + T
    return n


def _attention(im: IntegerModel, lib, lay: dict, both: torch.Tensor, root: torch.Tensor, B: int, T: int, start: int,
               cache: list) -> tuple[torch.Tensor, Linear, torch.Tensor]:
    """The attention block up to its output layer's product: (that product, the layer, the rows' shifts)."""
    sh = im.shape
    H, Hk, hd, g, M = sh.heads, sh.kv_heads, sh.head_dim, sh.heads // sh.kv_heads, B * T
    acc, qkv = _product(im, both, lay["qkv"]), lay["qkv"]
    at = _reserve(cache, B, Hk, hd, T)
    cos, sin = im.rope_for(start + T - 1)
    aq = torch.empty(B, Hk, g, T, hd, dtype=torch.float64)
    n = torch.empty(B, Hk, g, T, dtype=torch.int64)
    _call(lib, "qkv", acc, B, T, qkv.mult, qkv.shift, root, qkv.bias, H, Hk, hd, start, cos, sin, im.score_mult,
          QK_CLAMP, KV_CLAMP, aq, n, cache[0], cache[1], cache[1].shape[2], at)
    out = torch.empty(B, T, H * hd, dtype=torch.int64)
    if T <= STEP_QUERIES:
        _call(lib, "attend_small", aq, n, cache[0], cache[1], B, Hk, g, T, hd, cache[1].shape[2], start, im.exp20,
              LOG2E_Q24, out)
    else:
        _attend_blocks(im, lib, aq, n, cache, B, Hk, g, T, hd, start, out)
    both, s = _split(lib, out.reshape(M, -1))
    return _product(im, both, lay["o"]), lay["o"], s


def _attend_blocks(im: IntegerModel, lib, aq: torch.Tensor, n: torch.Tensor, cache: list, B: int, Hk: int, g: int,
                   T: int, hd: int, start: int, out: torch.Tensor) -> None:
    """Many queries' attention in blocks of QUERY_BLOCK through binary64 products, the keys and values converted
    once for all blocks (each block reads its first L)."""
    keys = cache[0][..., : start + T].double()
    v = cache[1][:, :, : start + T].long()  # in 8192s and remainders, so that binary64 sums stay exact
    values = torch.cat([torch.div(v, 8192, rounding_mode="floor"), v & 8191], -1).double()
    for i in range(0, T, QUERY_BLOCK):
        t = min(QUERY_BLOCK, T - i)
        L = start + i + t
        q = aq[:, :, :, i : i + t].reshape(B, Hk, g * t, hd)
        dot = torch.matmul(q, keys[..., :L]).contiguous()
        e, esum = torch.empty_like(dot), torch.empty(B * Hk * g * t, dtype=torch.int64)
        _call(lib, "attend_mid", dot, B * Hk * g * t, t, L, start + i, n[:, :, :, i : i + t].contiguous(),
              im.exp20, LOG2E_Q24, e, esum)
        sums = torch.matmul(e, values[:, :, :L])
        _call(lib, "attend_out", sums, B, Hk, g, t, hd, esum, T, i, out)


def _head(im: IntegerModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    both, root = _split(im.native, x, im.eps)
    return _product(im, both, im.head), root


def frequencies(im: IntegerModel, x: torch.Tensor) -> torch.Tensor:
    """model.frequencies of the head's rows x (R, d): (R, V) int64."""
    out = torch.empty(x.shape[0], im.shape.vocab, dtype=torch.int64)
    for i in range(0, x.shape[0], HEAD_BLOCK):
        acc, root = _head(im, x[i : i + HEAD_BLOCK].contiguous())
        _call(im.native, "head_freqs", acc, acc.shape[0] // 2, acc.shape[1], im.head.mult, im.head.shift, root,
              im.exp30, LOG2E_Q24, FREQ_TOTAL, out[i : i + HEAD_BLOCK])
    return out


def symbols(im: IntegerModel, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each target's (start, size, total) under the frequencies of its row of x (R, d): (R, 3)."""
    out = torch.empty(x.shape[0], 3, dtype=torch.int64)
    for i in range(0, x.shape[0], HEAD_BLOCK):
        acc, root = _head(im, x[i : i + HEAD_BLOCK].contiguous())
        _call(im.native, "head_symbols", acc, acc.shape[0] // 2, acc.shape[1], im.head.mult, im.head.shift, root,
              im.exp30, LOG2E_Q24, FREQ_TOTAL, targets[i : i + HEAD_BLOCK].contiguous(), out[i : i + HEAD_BLOCK])
    return out

