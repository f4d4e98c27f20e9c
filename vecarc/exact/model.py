"""The integer model: a Llama-family transformer evaluated in exact integer arithmetic.

Coded chunks are range-coded under this model's next-token frequencies, so pack and
unpack must compute the same integers on any CPU or GPU, with any thread count and
any batch. Floats are used once, to quantise the fingerprinted weights on the CPU
(IEEE binary64, elementwise, no reductions whose order could vary); after that every
step is int64 arithmetic, exact small-integer matmuls and pinned tables. The
whole-sequence pass and the KV-cached step run the same code, so they agree.

docs/format.md ("Integer model") specifies every rounding.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any

import torch

from . import ops
from .tables import LOG2E_Q24, SIG_BITS, SIG_SPAN, eps_table, exp_table, rope_tables, sigmoid_table

F = 16  # fractional bits of activations, scores and logits
NORM_BITS = 8  # RMSNorm's root is kept with 8 fractional bits
W_MAX = 127
M_BITS = 23  # a matrix's per-row multipliers are below 2^23
ATTN_BITS = 20  # attention weights in Q20
KV_CLAMP = (1 << 26) - 1  # |k|, |v| < 2^26 (1024): q.k and e * v stay exact in binary64 (below 2^53)
QK_CLAMP = 1 << (F + 14)
MLP_CLAMP = 1 << (F + 14)
FREQ_TOTAL = 1 << 28  # frequencies sum to at most this; every token gets at least 1
MAX_POSITIONS = 8192
MIN_WINDOW = 2048  # a sliding window this long or longer: the integer path evaluates the positions before it
FAMILIES = ("llama", "mistral", "qwen2")
LINEARS = ("qkv", "o", "gate_up", "down")
SPEC = 1  # the integer model's specification (docs/format.md): a change gets a new number and format
QUERY_BLOCK, MLP_BLOCK, HEAD_ROWS = 64, 128, 16  # row blocks: sizes change speed only, never a value
X_BITS, C_BITS = 21, 16  # the head's exp index: gaps clamped at 2^21 (Q16), c kept with 16 more bits


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    theta: Fraction
    eps: float


@dataclass
class Linear:
    """int8 weights (N, K) with row j worth q[j] * mult[j] * 2^-shift, and an optional bias in Q16."""

    q: torch.Tensor
    mult: torch.Tensor
    shift: int
    bias: torch.Tensor | None

    def to(self, device: torch.device) -> Linear:
        return Linear(self.q.to(device), self.mult.to(device), self.shift,
                      None if self.bias is None else self.bias.to(device))


def _rope(cfg: Any) -> tuple[str, float]:
    params = getattr(cfg, "rope_parameters", None) or {}
    scaling = getattr(cfg, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return str(kind), float(theta)


def _window(cfg: Any) -> int | None:
    """The sliding attention window where the model uses one (Mistral's; Qwen2's when switched on)."""
    uses = cfg.model_type == "mistral" or getattr(cfg, "use_sliding_window", False)
    return getattr(cfg, "sliding_window", None) if uses else None


def not_covered(model: Any) -> str | None:
    """Why the integer path cannot evaluate this model (None: it can)."""
    cfg = model.config
    kind = getattr(cfg, "model_type", "?")
    if kind not in FAMILIES:
        return f"model type {kind!r} is not one of the integer path's families ({', '.join(FAMILIES)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (the integer path computes SiLU)"
    rope, _ = _rope(cfg)
    if rope != "default":
        return f"RoPE scaling {rope!r} (the integer path computes plain RoPE)"
    window = _window(cfg)
    if window is not None and window < MIN_WINDOW:
        return f"a sliding attention window of {window} positions"
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim % 2 or cfg.intermediate_size >= 1 << 16 or cfg.hidden_size >= 1 << 16:
        return "its dimensions exceed the integer path's bounds"
    if _too_large(model):
        return f"weights of {W_LIMIT:g} or more (with their norm's gain): beyond the integer path's multipliers"
    return None


W_LIMIT = W_MAX * (1 << (M_BITS - 16))  # quantise's shift stays >= 16 while every |w g| is below this
_LARGE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def _too_large(model: Any) -> bool:
    """Whether some layer quantise would refuse: its largest |w g| at or above W_LIMIT (checked once a model)."""
    if model not in _LARGE:
        pairs = [(model.get_output_embeddings().weight, model.model.norm.weight)]
        for layer in model.model.layers:
            at, mlp = layer.self_attn, layer.mlp
            pairs += [(p.weight, layer.input_layernorm.weight) for p in (at.q_proj, at.k_proj, at.v_proj)]
            pairs += [(p.weight, layer.post_attention_layernorm.weight) for p in (mlp.gate_proj, mlp.up_proj)]
            pairs += [(at.o_proj.weight, None), (mlp.down_proj.weight, None)]
        def top(w: torch.Tensor, g: torch.Tensor | None) -> float:  # max |w_jk g_k|, exact: binary64 products
            cols = torch.maximum(w.amax(0), -w.amin(0)).double()
            return float((cols * g.double().abs() if g is not None else cols).max())

        _LARGE[model] = any(top(w, g) >= W_LIMIT for w, g in pairs)
    return _LARGE[model]


@torch.no_grad()
def quantise(w: torch.Tensor, gain: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> Linear:
    """int8 per output row, with the RMSNorm gain before it folded in; IEEE binary64 on the CPU."""
    wd = w.detach().to("cpu", torch.float64)
    if gain is not None:
        wd = wd * gain.detach().to("cpu", torch.float64)[None]  # float32 x float32: exact in binary64
    top = wd.abs().amax(1)
    top = torch.where(top > 0, top, torch.ones_like(top))
    q = torch.round(wd * W_MAX / top[:, None]).to(torch.int8)
    scale = top / W_MAX
    _, exponent = torch.frexp(scale.max())
    shift = M_BITS - int(exponent)
    if shift < 16:  # inputs are quantised with shifts below 16: every rescaling shifts right
        raise ValueError("weights too large for the integer path")
    mult = torch.round(torch.ldexp(scale, torch.tensor(shift, dtype=torch.float64))).to(torch.int64)
    b = None if bias is None else torch.round(bias.detach().to("cpu", torch.float64) * (1 << F)).to(torch.int64)
    return Linear(q, mult, shift, b)


def _remember(cache: list, k: torch.Tensor, v: torch.Tensor) -> None:
    """Append a step's keys and values (B, Hk, T, .) to a layer's cache [keys, values, length], in buffers
    that double when full: a step copies its own rows, not the whole cache."""
    if not cache:
        cache[:] = [k.new_empty(0), v.new_empty(0), 0]
    n, T = cache[2], k.shape[2]
    if cache[0].dim() != 4 or n + T > cache[0].shape[2]:
        cap = max(64, 1 << (n + T - 1).bit_length())
        grown = [x.new_empty(*x.shape[:2], cap, x.shape[3]) for x in (k, v)]
        if n:
            grown[0][:, :, :n], grown[1][:, :, :n] = cache[0][:, :, :n], cache[1][:, :, :n]
        cache[0], cache[1] = grown
    cache[0][:, :, n : n + T], cache[1][:, :, n : n + T] = k, v
    cache[2] = n + T


def _linear(saved: dict, name: str, device: torch.device) -> Linear:
    return Linear(saved[f"{name}.q"], saved[f"{name}.mult"], int(saved[f"{name}.shift"]),
                  saved.get(f"{name}.bias")).to(device)


def linear_normed(a: torch.Tensor, root: torch.Tensor, lin: Linear) -> torch.Tensor:
    """RMSNorm then the layer, in Q16: (a . q) * mult, to Q16, divided by the row's root."""
    acc = ops.int_matmul(a.reshape(-1, a.shape[-1]), lin.q).reshape(*a.shape[:-1], -1)
    y = ops.round_div(ops.shift_round(acc.mul_(lin.mult), lin.shift - F) << NORM_BITS, root[..., None])
    return y if lin.bias is None else y + lin.bias


def linear_plain(x: torch.Tensor, lin: Linear) -> torch.Tensor:
    """The layer on a Q16 input, quantised per row to 15 bits first."""
    a, s = ops.quantise_rows(x)
    acc = ops.int_matmul(a.reshape(-1, a.shape[-1]), lin.q).reshape(*a.shape[:-1], -1)
    y = ops.shift_round(acc.mul_(lin.mult), lin.shift - s[..., None])
    return y if lin.bias is None else y + lin.bias


class IntegerModel:
    """The integer evaluation of one loaded model; `forward` serves whole chunks and single steps alike."""

    def __init__(self, model: Any, device: torch.device | str = "cpu", saved: dict | None = None) -> None:
        """Quantise `model`'s weights, or take them from `saved` (a `state()` of the same weights)."""
        why = not_covered(model)
        if why:
            raise ValueError(why)
        cfg = model.config
        _, theta = _rope(cfg)
        heads = cfg.num_attention_heads
        self.shape = Shape(cfg.num_hidden_layers, cfg.hidden_size, heads, cfg.num_key_value_heads,
                           getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
                           int(model.get_input_embeddings().weight.shape[0]), Fraction(theta), float(cfg.rms_norm_eps))
        self.device = torch.device(device)
        self.max_positions = min(MAX_POSITIONS, _window(cfg) or MAX_POSITIONS)
        if saved is not None:
            self.layers = [{k: _linear(saved, f"{i}.{k}", self.device) for k in LINEARS}
                           for i in range(self.shape.layers)]
            self.head = _linear(saved, "head", self.device)
        else:
            self.layers = [self._layer(layer) for layer in model.model.layers]
            self.head = quantise(model.get_output_embeddings().weight, model.model.norm.weight).to(self.device)
        emb = model.get_input_embeddings().weight.detach().to("cpu", torch.float64)
        self.embed = torch.round(emb * (1 << F)).to(torch.int64).to(self.device)
        self.eps = eps_table(self.shape.eps, F, NORM_BITS).to(self.device)
        self.exp20, self.exp30 = exp_table(ATTN_BITS).to(self.device), exp_table(30).to(self.device)
        self.sig = sigmoid_table().to(self.device)
        self._rope_at: tuple[torch.Tensor, torch.Tensor] | None = None
        self.native = None  # fast.library(...) where the compiled loops run: the same integers, sooner
        self.packed: dict = {}  # the compiled loops' copy of weights for token steps (fast._product)

    def state(self) -> dict[str, torch.Tensor]:
        """The quantised weights as flat tensors (what `saved` takes back): a cache of the slow part."""
        out = {}
        for name, lin in [(f"{i}.{k}", lay[k]) for i, lay in enumerate(self.layers) for k in LINEARS] + [
                ("head", self.head)]:
            out |= {f"{name}.q": lin.q.cpu(), f"{name}.mult": lin.mult.cpu(), f"{name}.shift": torch.tensor(lin.shift)}
            if lin.bias is not None:
                out[f"{name}.bias"] = lin.bias.cpu()
        return out

    def _layer(self, layer: Any) -> dict[str, Linear]:
        at, mlp = layer.self_attn, layer.mlp
        bias = [p.bias for p in (at.q_proj, at.k_proj, at.v_proj)]
        qkv_bias = None if all(b is None for b in bias) else torch.cat(
            [b if b is not None else torch.zeros(p.weight.shape[0]) for b, p in zip(bias, (at.q_proj, at.k_proj,
                                                                                        at.v_proj))])
        dev = self.device
        return {
            "qkv": quantise(torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight]),
                            layer.input_layernorm.weight, qkv_bias).to(dev),
            "o": quantise(at.o_proj.weight, None, at.o_proj.bias).to(dev),
            "gate_up": quantise(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                                layer.post_attention_layernorm.weight).to(dev),
            "down": quantise(mlp.down_proj.weight, None, mlp.down_proj.bias).to(dev),
        }

    def _norm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise rows to 15 bits and their RMS root in Q8 of those units (epsilon included)."""
        a, s = ops.quantise_rows(x)
        ms = (a * a).sum(-1)
        root = ops.isqrt(torch.div(ms << (2 * NORM_BITS), x.shape[-1], rounding_mode="floor") + self.eps[s])
        return a, root

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x (B, T, n, hd) in Q16 rotated by position, with pinned Q24 tables."""
        cos, sin = self.rope_for(int(pos[-1]))
        c, s = cos[pos][None, :, None], sin[pos][None, :, None]
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([ops.shift_round(x1 * c - x2 * s, 24), ops.shift_round(x2 * c + x1 * s, 24)], -1)

    def rope_for(self, last: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The COS and SIN tables through position `last` at least (grown by doubling)."""
        need = max(256, 1 << last.bit_length())
        if self._rope_at is None or self._rope_at[0].shape[0] < need:
            self._rope_at = tuple(t.to(self.device) for t in rope_tables(self.shape.theta, self.shape.head_dim, need))
        return self._rope_at

    def _attention(self, lay: dict, x: torch.Tensor, start: int, cache: list) -> torch.Tensor:
        sh = self.shape
        B, T, _ = x.shape
        H, Hk, hd = sh.heads, sh.kv_heads, sh.head_dim
        a, root = self._norm(x)
        q, k, v = linear_normed(a, root, lay["qkv"]).split([H * hd, Hk * hd, Hk * hd], -1)
        pos = start + torch.arange(T, device=x.device)
        qk = self._rope(torch.cat([q, k], -1).clamp(-QK_CLAMP, QK_CLAMP).reshape(B, T, H + Hk, hd), pos)
        q, k = qk[:, :, :H], qk[:, :, H:]
        aq, sq = ops.quantise_rows(ops.shift_round(q * self.score_mult, 16).reshape(B, T, H * hd), H)
        k = k.clamp(-KV_CLAMP, KV_CLAMP).transpose(1, 2)  # B Hk T hd
        v = v.reshape(B, T, Hk, hd).clamp(-KV_CLAMP, KV_CLAMP).transpose(1, 2)
        _remember(cache, k.double(), torch.cat([torch.div(v, 8192, rounding_mode="floor"), v & 8191], -1).double())
        g = H // Hk  # the query heads that share a key head go together: (B, Hk, g T, hd)
        aq = aq.reshape(B, T, Hk, g, hd).permute(0, 2, 3, 1, 4).double()
        n = (16 - sq).reshape(B, T, Hk, g).permute(0, 2, 3, 1)[..., None]  # from 1 to 16: |q / sqrt(hd)| < 2^30
        out = torch.cat([self._attend(aq[:, :, :, i : i + QUERY_BLOCK], n[:, :, :, i : i + QUERY_BLOCK], cache,
                                      start + i) for i in range(0, T, QUERY_BLOCK)], 3)
        return linear_plain(out.permute(0, 3, 1, 2, 4).reshape(B, T, H * hd), lay["o"])

    def _attend(self, q: torch.Tensor, n: torch.Tensor, cache: list, first: int) -> torch.Tensor:
        """Queries (B, Hk, g, T, hd) at positions first.. over the keys they may see: exact scores, pinned
        exp, exact sums."""
        B, Hk, g, T, hd = q.shape
        L = first + T
        k, v = cache[0][:, :, :L], cache[1][:, :, :L]  # v: (high | low) halves of each value, side by side
        dot = torch.matmul(q.reshape(B, Hk, g * T, hd), k.transpose(2, 3)).to(torch.int64).reshape(B, Hk, g, T, L)
        scores = dot.add_((1 << n) >> 1).bitwise_right_shift_(n)  # |dot| < 2^15 2^26 hd < 2^53: exact
        if T > 1:
            later = torch.arange(L, device=q.device)[None, :] > first + torch.arange(T, device=q.device)[:, None]
            scores.masked_fill_(later, -(1 << 62))
        top = scores.amax(-1, keepdim=True)
        e = ops.exp_neg(scores.neg_().add_(top), self.exp20)  # Q20, 0 where masked
        ed = e.reshape(B, Hk, g * T, L).double()
        both = torch.matmul(ed, v).to(torch.int64)  # e sums of each half: < 2^20 2^13 8192 = 2^46, exact
        num = both[..., :hd].mul_(8192).add_(both[..., hd:])
        return ops.round_div(num.reshape(B, Hk, g, T, hd), e.sum(-1, keepdim=True))

    @cached_property
    def score_mult(self) -> int:
        """round(2^16 / sqrt(head_dim)), from an exact integer square root."""
        hd = self.shape.head_dim
        root = int(ops.isqrt(torch.tensor(hd << 32)))  # sqrt(hd) in Q16, floor
        return ((1 << 33) // root + 1) // 2

    def _mlp(self, lay: dict, x: torch.Tensor) -> torch.Tensor:
        a, root = self._norm(x)
        gu = linear_normed(a, root, lay["gate_up"]).clamp_(-MLP_CLAMP, MLP_CLAMP)
        gate, up = gu.chunk(2, -1)
        sig = self.sig[((gate >> (F - SIG_BITS)) + SIG_SPAN).clamp_(0, 2 * SIG_SPAN - 1)]
        silu = ops.shift_round(sig.mul_(gate), 30)
        h = ops.shift_round(silu.mul_(up), F).clamp_(-MLP_CLAMP, MLP_CLAMP)
        return linear_plain(h, lay["down"])

    @torch.no_grad()
    def hidden(self, tokens: torch.Tensor, caches: list[list] | None = None, start: int = 0) -> torch.Tensor:
        """The last layer's output (B, T, d) in Q16 for tokens (B, T) at positions start..start+T-1.

        caches: one list per layer, filled and extended in place (pass [] lists to keep them).
        """
        tokens = tokens.to(self.device)
        B, T = tokens.shape
        if start + T > self.max_positions:
            raise ValueError(f"the integer path evaluates at most {self.max_positions} positions of this model")
        caches = caches if caches is not None else [[] for _ in self.layers]
        if self.native is not None:
            return self.native.hidden(self, tokens, caches, start)
        x = self.embed[tokens]
        for lay, cache in zip(self.layers, caches):
            x = x + self._attention(lay, x, start, cache)
            flat = x.reshape(B * T, -1)
            x = x + torch.cat([self._mlp(lay, flat[i : i + MLP_BLOCK]) for i in range(0, B * T, MLP_BLOCK)]).reshape(
                x.shape)
        return x

    def forward(self, tokens: torch.Tensor, caches: list[list] | None = None, start: int = 0,
                last: bool = False) -> torch.Tensor:
        """Next-token frequencies (B, T, V): the whole table at every position (tests, a decoder's step), or
        with `last` at the last position only (B, 1, V): a decoder's first step after a context."""
        x = self.hidden(tokens, caches, start)
        x = x[:, -1:] if last else x
        flat = x.reshape(-1, x.shape[-1])
        if self.native is not None:
            return self.native.frequencies(self, flat).reshape(*x.shape[:2], -1)
        return torch.cat([frequencies(*self._logits(flat[i : i + HEAD_ROWS]), self.exp30)
                          for i in range(0, flat.shape[0], HEAD_ROWS)]).reshape(*x.shape[:2], -1)

    def symbols(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T, 3): each target's interval (start, size, total) under the frequencies after tokens[:, :t+1];
        what an encoder needs, without keeping whole tables (B T V int64 would be large)."""
        x = self.hidden(tokens).reshape(-1, self.shape.hidden)
        flat = targets.to(self.device).reshape(-1, 1)
        if self.native is not None:
            return self.native.symbols(self, x, flat.reshape(-1)).reshape(*targets.shape, 3)
        out = []
        for i in range(0, x.shape[0], HEAD_ROWS):
            f = frequencies(*self._logits(x[i : i + HEAD_ROWS]), self.exp30)
            t = flat[i : i + HEAD_ROWS]
            size = f.gather(1, t)
            cum = f.cumsum(1)
            out.append(torch.cat([cum.gather(1, t) - size, size, cum[:, -1:]], 1))
        return torch.cat(out).reshape(*targets.shape, 3)

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head before RMSNorm's division: z_j = (a . q_j) mult_j in Q16 of the row's own scale, and
        the row's root (the division is folded into the frequencies' exp index)."""
        a, root = self._norm(x)
        acc = ops.int_matmul(a, self.head.q)
        return ops.shift_round(acc.mul_(self.head.mult), self.head.shift - F), root


def frequencies(z: torch.Tensor, root: torch.Tensor, exp30: torch.Tensor) -> torch.Tensor:
    """Integer next-token frequencies (R, V) from a head's rows before normalisation.

    The normalised logit gap d_j = (max z - z_j) 2^8 / root indexes the exp table through
    c = floor(LOG2E_Q24 2^24 / root): e_j = EXP30[min((max z - z_j) c >> 46, ...)], the gap first
    clamped at 2^21 normalised (e^-32 is 0 in Q30). Then f_j = 1 + (e_j K >> 32),
    K = floor((2^28 - V) 2^32 / sum e): every token at least 1, the total (their sum) <= 2^28.
    """
    V = z.shape[-1]
    root = root[:, None]
    top = z.amax(-1, keepdim=True)
    gap = z.neg_().add_(top).clamp_(max=(root << X_BITS) >> NORM_BITS)
    e = exp30[gap.mul_(torch.div(LOG2E_Q24 << (NORM_BITS + C_BITS), root, rounding_mode="floor")) >> (30 + C_BITS)]
    k = torch.div((FREQ_TOTAL - V) << 32, e.sum(-1, keepdim=True), rounding_mode="floor")
    return e.mul_(k).bitwise_right_shift_(32).add_(1)
