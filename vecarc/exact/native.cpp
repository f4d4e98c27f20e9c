// The integer model's elementwise stages fused into plain loops (vecarc/exact/fast.py calls them).
//
// Each function computes exactly what the reference tensor code in model.py and ops.py computes:
// int64 arithmetic only (arithmetic right shifts, floor division), so the results are the same
// integers on any compiler and CPU. The matmuls stay in torch (exact int8 and binary64 products).
// A nonzero return is a bound the reference would also have broken: the caller raises.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

typedef int64_t i64;
typedef int32_t i32;
typedef int8_t i8;

static const i64 A_MAX = 32639, A_BITS = 15, F = 16, NORM = 8;

static inline i64 sr(i64 x, i64 n) { return (x + ((i64(1) << n) >> 1)) >> n; }
static inline i64 fdiv(i64 a, i64 b) { i64 q = a / b; return (a % b < 0) ? q - 1 : q; }
static inline i64 clampv(i64 x, i64 lo, i64 hi) { return x < lo ? lo : (x > hi ? hi : x); }
static inline i64 bitlen(i64 x) { return x ? 64 - __builtin_clzll((unsigned long long)x) : 0; }
static inline i64 isqrt(i64 n) {
    i64 r = (i64)std::floor(std::sqrt((double)n));
    while (r > 0 && r * r > n) r--;
    while ((r + 1) * (r + 1) <= n) r++;
    return r;
}

// x / d for a divisor used across a row, floor, without a hardware division per element: a binary64
// estimate, then corrected until exact.
struct Divider {
    i64 d;
    double inv;
    explicit Divider(i64 d) : d(d), inv(1.0 / (double)d) {}
    i64 floor(i64 n) const {
        i64 q = (i64)std::floor((double)n * inv), r = n - q * d;
        while (r < 0) { q--; r += d; }
        while (r >= d) { q++; r -= d; }
        return q;
    }
};

// round_div(x, root) for one row's root: floor((2x + root) / (2 root)).
struct RoundDiv {
    i64 root;
    Divider two;
    explicit RoundDiv(i64 root) : root(root), two(2 * root) {}
    i64 operator()(i64 x) const { return two.floor(2 * x + root); }
};

static int THREADS = 1;

// fn(first, last) over row ranges, on up to THREADS threads when there is enough work: rows are
// independent, so the split changes nothing but the time. Returns the first nonzero fn result.
template <class Fn>
static int rows(i64 M, i64 work, Fn fn) {
    int n = (int)std::min<i64>(THREADS, M);
    if (n <= 1 || work < (i64(1) << 15)) return fn(0, M);
    std::atomic<int> err{0};
    std::vector<std::thread> pool;
    i64 per = (M + n - 1) / n;
    for (int t = 1; t < n; t++) {
        i64 a = t * per, b = std::min(M, a + per);
        if (a < b) pool.emplace_back([&, a, b] { int e = fn(a, b); if (e) err = e; });
    }
    int e0 = fn(0, std::min(M, per));
    for (auto& th : pool) th.join();
    return e0 ? e0 : err.load();
}

// Quantise a row of n values to 15 bits (shift s) and write its int8 halves: hi to `hi`, lo to `lo`.
// Returns s; *ms gets the sum of squares of the quantised values when ms is given.
static i64 quantise(const i64* x, i64 n, i8* hi, i8* lo, i64* ms, i64* a_out) {
    i64 top = 0;
    for (i64 j = 0; j < n; j++) { i64 v = x[j] < 0 ? -x[j] : x[j]; if (v > top) top = v; }
    i64 s = bitlen(top) - A_BITS;
    if (s < 0) s = 0;
    i64 sum = 0;
    for (i64 j = 0; j < n; j++) {
        i64 a = clampv(sr(x[j], s), -A_MAX, A_MAX);
        if (a_out) a_out[j] = a;
        if (hi) {
            i64 l = ((a + 128) & 255) - 128;
            lo[j] = (i8)l;
            hi[j] = (i8)((a - l) >> 8);
        }
        sum += a * a;
    }
    if (ms) *ms = sum;
    return s;
}

extern "C" {

void set_threads(int n) { THREADS = n < 1 ? 1 : n; }

// Rows of x (M, K) quantised for a matmul: int8 halves into both (2M, K), hi rows first; the shift of
// each row into s. With eps given, root gets RMSNorm's root in Q8 instead (model._norm).
int split_rows(const i64* x, i64 M, i64 K, i8* both, i64* s, const i64* eps, i64* root) {
    return rows(M, M * K, [&](i64 r0, i64 r1) {
        for (i64 r = r0; r < r1; r++) {
            i64 ms;
            i64 sh = quantise(x + r * K, K, both + r * K, both + (M + r) * K, &ms, nullptr);
            if (s) s[r] = sh;
            if (root) root[r] = isqrt(fdiv(ms << (2 * NORM), K) + eps[sh]);
        }
        return 0;
    });
}

// The int32 halves of a product (2M, N) back to int64 rows times the layer's multipliers.
static inline i64 acc_at(const i32* acc, i64 M, i64 N, i64 r, i64 j) {
    return (i64)acc[r * N + j] * 256 + (i64)acc[(M + r) * N + j];
}

// linear_normed: y = round_div(shift_round(acc mult, shift - F) << 8, root) + bias.
int normed(const i32* acc, i64 M, i64 N, const i64* mult, i64 shift, const i64* root, const i64* bias, i64* y) {
    return rows(M, M * N, [&](i64 r0, i64 r1) {
        for (i64 r = r0; r < r1; r++) {
            RoundDiv div(root[r]);
            for (i64 j = 0; j < N; j++) {
                i64 v = div(sr(acc_at(acc, M, N, r, j) * mult[j], shift - F) << NORM);
                y[r * N + j] = bias ? v + bias[j] : v;
            }
        }
        return 0;
    });
}

// linear_plain, added to the residual x in place: x += shift_round(acc mult, shift - s) + bias.
int plain_add(const i32* acc, i64 M, i64 N, const i64* mult, i64 shift, const i64* s, const i64* bias, i64* x) {
    return rows(M, M * N, [&](i64 r0, i64 r1) {
        for (i64 r = r0; r < r1; r++) {
            i64 n = shift - s[r];
            if (n < 0) return 1;
            for (i64 j = 0; j < N; j++) {
                i64 v = sr(acc_at(acc, M, N, r, j) * mult[j], n);
                x[r * N + j] += bias ? v + bias[j] : v;
            }
        }
        return 0;
    });
}

// After the qkv layer (y: B T rows of (H + 2 Hk) hd): clamp, RoPE at positions start.., queries scaled
// and quantised per head (aq: B Hk g T hd in binary64, n = 16 - shift: B Hk g T), keys clamped
// (k: B Hk T hd), values clamped and split into 8192s and remainders (v: B Hk T 2hd).
int qkv_post(const i64* y, i64 B, i64 T, i64 H, i64 Hk, i64 hd, i64 start, const i64* cos, const i64* sin,
             i64 score_mult, i64 qk_clamp, i64 kv_clamp, double* aq, i64* n, double* k, double* v) {
    const i64 half = hd / 2, g = H / Hk, W = (H + 2 * Hk) * hd;
    return rows(B * T, B * T * W, [&](i64 r0, i64 r1) {
        std::vector<i64> rot(hd), sq(hd), a(hd);
        for (i64 bt = r0; bt < r1; bt++) {
            const i64 b = bt / T, t = bt % T;
            const i64* row = y + bt * W;
            const i64* c = cos + (start + t) * half;
            const i64* si = sin + (start + t) * half;
            for (i64 h = 0; h < H + Hk; h++) {
                const i64* x = row + h * hd;
                for (i64 j = 0; j < half; j++) {
                    i64 x1 = clampv(x[j], -qk_clamp, qk_clamp), x2 = clampv(x[j + half], -qk_clamp, qk_clamp);
                    rot[j] = sr(x1 * c[j] - x2 * si[j], 24);
                    rot[j + half] = sr(x2 * c[j] + x1 * si[j], 24);
                }
                if (h < H) {
                    for (i64 j = 0; j < hd; j++) sq[j] = sr(rot[j] * score_mult, 16);
                    i64 s = quantise(sq.data(), hd, nullptr, nullptr, nullptr, a.data());
                    i64 at = ((b * Hk + h / g) * g + h % g) * T + t;
                    n[at] = 16 - s;
                    for (i64 j = 0; j < hd; j++) aq[at * hd + j] = (double)a[j];
                } else {
                    double* kr = k + ((b * Hk + (h - H)) * T + t) * hd;
                    for (i64 j = 0; j < hd; j++) kr[j] = (double)clampv(rot[j], -kv_clamp, kv_clamp);
                }
            }
            for (i64 h = 0; h < Hk; h++) {
                const i64* x = row + (H + Hk + h) * hd;
                double* vr = v + ((b * Hk + h) * T + t) * 2 * hd;
                for (i64 j = 0; j < hd; j++) {
                    i64 val = clampv(x[j], -kv_clamp, kv_clamp);
                    vr[j] = (double)(val >> 13);
                    vr[hd + j] = (double)(val & 8191);
                }
            }
        }
        return 0;
    });
}

// Scores to attention weights: dot (R rows of L, R = B Hk g T, queries at first..first+T-1 in each
// B Hk g block) shifted by n with rounding, later keys masked, EXP20 of the gap to the row's top;
// e (binary64, for the next product) and its sums.
int attend_mid(const double* dot, i64 R, i64 T, i64 L, i64 first, const i64* n, const i64* exp20,
               i64 log2e, double* e, i64* esum) {
    const i64 far = exp20[((i64(1) << 21) * log2e) >> 30];  // a masked key: its gap is clamped
    return rows(R, R * L, [&](i64 r0, i64 r1) {
        for (i64 r = r0; r < r1; r++) {
            i64 t = r % T, nn = n[r], seen = T > 1 ? std::min(L, first + t + 1) : L;
            const double* d = dot + r * L;
            double* er = e + r * L;
            i64 top = INT64_MIN;
            for (i64 j = 0; j < seen; j++) {
                i64 s = ((i64)d[j] + ((i64(1) << nn) >> 1)) >> nn;
                er[j] = (double)s;  // exact: |s| < 2^53
                if (s > top) top = s;
            }
            i64 sum = far * (L - seen);
            for (i64 j = 0; j < seen; j++) {
                i64 gap = top - (i64)er[j];
                if (gap > (i64(1) << 21)) gap = i64(1) << 21;
                i64 w = exp20[(gap * log2e) >> 30];
                er[j] = (double)w;
                sum += w;
            }
            for (i64 j = seen; j < L; j++) er[j] = (double)far;
            esum[r] = sum;
        }
        return 0;
    });
}

// Weighted value sums (B Hk g T rows of 2hd: 8192s, remainders) divided by the weights' sums, written
// to out (B, Tall, H hd) at positions t0..t0+T-1.
int attend_out(const double* both, i64 B, i64 Hk, i64 g, i64 T, i64 hd, const i64* esum, i64 Tall, i64 t0,
               i64* out) {
    for (i64 b = 0; b < B; b++)
        for (i64 kv = 0; kv < Hk; kv++)
            for (i64 gi = 0; gi < g; gi++)
                for (i64 t = 0; t < T; t++) {
                    i64 r = ((b * Hk + kv) * g + gi) * T + t;
                    const double* x = both + r * 2 * hd;
                    i64* o = out + (b * Tall + t0 + t) * (Hk * g * hd) + (kv * g + gi) * hd;
                    RoundDiv div(esum[r]);
                    for (i64 j = 0; j < hd; j++) o[j] = div((i64)x[j] * 8192 + (i64)x[hd + j]);
                }
    return 0;
}

// The MLP between its two layers: gate and up (normed, clamped), SiLU from the sigmoid table, their
// product clamped, then quantised rows for the down layer (both, s) as split_rows does.
int mlp_mid(const i32* acc, i64 M, i64 I, const i64* mult, i64 shift, const i64* root, const i64* bias,
            const i64* sig, i64 clamp, i8* both, i64* s) {
    const i64 N = 2 * I;
    return rows(M, M * N, [&](i64 r0, i64 r1) {
        std::vector<i64> h(I);
        for (i64 r = r0; r < r1; r++) {
            RoundDiv div(root[r]);
            for (i64 j = 0; j < I; j++) {
                i64 gate = div(sr(acc_at(acc, M, N, r, j) * mult[j], shift - F) << NORM);
                i64 up = div(sr(acc_at(acc, M, N, r, I + j) * mult[I + j], shift - F) << NORM);
                if (bias) { gate += bias[j]; up += bias[I + j]; }
                gate = clampv(gate, -clamp, clamp);
                up = clampv(up, -clamp, clamp);
                i64 w = sig[clampv((gate >> (F - 12)) + 65536, 0, 2 * 65536 - 1)];
                i64 silu = sr(w * gate, 30);
                h[j] = clampv(sr(silu * up, F), -clamp, clamp);
            }
            s[r] = quantise(h.data(), I, both + r * I, both + (M + r) * I, nullptr, nullptr);
        }
        return 0;
    });
}

// The head's rows to frequencies (model.frequencies): f = 1 + (EXP30[gap c >> 46] K >> 32).
static void freq_row(const i32* acc, i64 R, i64 V, i64 r, const i64* mult, i64 shift, i64 root, const i64* exp30,
                     i64 log2e, i64 total, i64* f) {
    i64 top = INT64_MIN;
    for (i64 j = 0; j < V; j++) {
        f[j] = sr(acc_at(acc, R, V, r, j) * mult[j], shift - F);
        if (f[j] > top) top = f[j];
    }
    i64 cap = (root << 21) >> NORM, c = fdiv(log2e << (NORM + 16), root), sum = 0;
    for (i64 j = 0; j < V; j++) {
        i64 gap = top - f[j];
        if (gap > cap) gap = cap;
        f[j] = exp30[(gap * c) >> 46];
        sum += f[j];
    }
    i64 K = fdiv((total - V) << 32, sum);
    for (i64 j = 0; j < V; j++) f[j] = ((f[j] * K) >> 32) + 1;
}

int head_freqs(const i32* acc, i64 R, i64 V, const i64* mult, i64 shift, const i64* root, const i64* exp30,
               i64 log2e, i64 total, i64* f) {
    return rows(R, R * V, [&](i64 r0, i64 r1) {
        for (i64 r = r0; r < r1; r++) freq_row(acc, R, V, r, mult, shift, root[r], exp30, log2e, total, f + r * V);
        return 0;
    });
}

// Each target's interval (start, size, total) under its row's frequencies: what an encoder needs.
int head_symbols(const i32* acc, i64 R, i64 V, const i64* mult, i64 shift, const i64* root, const i64* exp30,
                 i64 log2e, i64 total, const i64* targets, i64* out) {
    return rows(R, R * V, [&](i64 r0, i64 r1) {
        std::vector<i64> f(V);
        for (i64 r = r0; r < r1; r++) {
            freq_row(acc, R, V, r, mult, shift, root[r], exp30, log2e, total, f.data());
            i64 t = targets[r], below = 0, all = 0;
            if (t < 0 || t >= V) return 1;
            for (i64 j = 0; j < V; j++) { if (j == t) below = all; all += f[j]; }
            out[3 * r] = below;
            out[3 * r + 1] = f[t];
            out[3 * r + 2] = all;
        }
        return 0;
    });
}

}  // extern "C"
