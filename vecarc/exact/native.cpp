// The integer model's stages between two matmuls, as plain loops (vecarc/exact/fast.py calls them).
//
// Each function computes exactly what the reference tensor code in model.py and ops.py computes:
// integer arithmetic only (arithmetic right shifts, floor division, exact sums), so the results are
// the same integers on any compiler and CPU, whatever it vectorises. The large matmuls stay in torch
// (exact int8 products). A nonzero return is a bound the reference would also have broken.
//
// Each stage is a function of a range of independent rows with its sizes passed by value (so the
// compiler knows no output aliases them); `rows` may give the ranges to several threads.
//
// A token step's products are small (a few rows against all the weights) and bound by reading the
// weights: `gemv` runs them with AVX-512 VNNI on weights repacked once, over a pool of threads kept
// for token steps (see `stepping`), where torch's own kernels would read them at half the speed;
// `step_layers` runs a step's whole stack of layers in one call (a return to Python per stage cost
// a quarter of a step).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#include <unistd.h>
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512DQ__)  // DQ: attention's int64 lanes
#include <immintrin.h>
#define VNNI 1
#endif

static inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

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

// floor(n / d) for a divisor used across a row, without a hardware division per element: a binary64
// estimate, corrected until exact.
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

// ops.round_div(x, root) for one row's root: floor((2x + root) / (2 root)).
struct RoundDiv {
    i64 root;
    Divider two;
    explicit RoundDiv(i64 root) : root(root), two(2 * root) {}
    i64 operator()(i64 x) const { return two.floor(2 * x + root); }
};

static int THREADS = 1;
static constexpr i64 PLAN_FIELDS = 31;  // step_layers: 4 linears x 7, then a layer's caches x 3
static std::atomic<int> STEPPING{0};  // token steps under way (stepping(1) ... stepping(0), nested or not)

// Threads kept between calls for token steps: each spins a moment for the next part (a step's
// calls follow one another within microseconds), then sleeps, so that between steps and outside
// them the cores are free. Never joined: a pool lives as long as the process (a forked child, or a
// caller that asks for more threads, makes a new one). No exception leaves it: a thread that cannot
// start leaves its parts to the caller's thread.
struct Pool {
    std::vector<std::thread> threads;
    std::atomic<i64> gen{0};
    std::atomic<int> left{0};
    std::mutex mu, busy;
    std::condition_variable cv;
    std::function<int(int)> task;
    std::atomic<int> err{0};
    int parts = 1;
    pid_t pid = getpid();

    explicit Pool(int workers) {
        try {
            for (int w = 1; w <= workers; w++) threads.emplace_back([this, w] { serve(w); });
        } catch (...) {  // fewer threads: run() does the rest
        }
        for (auto& t : threads) t.detach();
    }
    void serve(int part) {
        i64 seen = 0;
        for (;;) {
            const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
            for (int spin = 0; gen.load(std::memory_order_acquire) == seen; spin++) {
                relax();
                if ((spin & 255) == 255 && std::chrono::steady_clock::now() > until) {
                    std::unique_lock<std::mutex> lock(mu);
                    cv.wait(lock, [&] { return gen.load() != seen; });
                }
            }
            seen = gen.load(std::memory_order_acquire);
            if (part < parts) {
                try {
                    if (int e = task(part)) err = e;
                } catch (...) {
                    err = 2;
                }
            }
            left.fetch_sub(1, std::memory_order_acq_rel);
        }
    }
    // task(0..n-1) on n threads (this one and n - 1 of the pool's), or here alone if another caller has it.
    int run(int n, const std::function<int(int)>& fn) {
        std::unique_lock<std::mutex> mine(busy, std::try_to_lock);
        if (!mine.owns_lock() || n <= 1) {
            int e = 0;
            for (int p = 0; p < n && !e; p++) e = fn(p);
            return e;
        }
        task = fn;
        parts = n;
        err = 0;
        left.store((int)threads.size(), std::memory_order_release);
        {
            std::lock_guard<std::mutex> lock(mu);
            gen.fetch_add(1, std::memory_order_acq_rel);
        }
        cv.notify_all();
        int e0 = 0;
        try {
            e0 = fn(0);
            for (int p = (int)threads.size() + 1; p < n && !e0; p++) e0 = fn(p);  // parts no thread took
        } catch (...) {
            e0 = 2;
        }
        while (left.load(std::memory_order_acquire) > 0) relax();  // the workers use fn: wait for them
        return e0 ? e0 : err.load();
    }
};

static Pool* POOL = nullptr;
static std::mutex POOL_MU;

static Pool& pool(int n) {
    std::lock_guard<std::mutex> lock(POOL_MU);
    if (!POOL || POOL->pid != getpid() || (int)POOL->threads.size() < n - 1) POOL = new Pool(n - 1);
    return *POOL;
}

// fn(first, last) over row ranges, on up to THREADS threads when there is enough work. Outside token
// steps threads are started per call, which pays only for a teacher-forced pass's large stages; in
// them the pool's threads take smaller stages too.
template <class Fn>
static int rows(i64 M, i64 work, Fn fn) {
    const int n = (int)std::min<i64>(THREADS, M);
    if (n > 1 && STEPPING && work >= (i64(1) << 12)) {
        const i64 per = (M + n - 1) / n;
        return pool(n).run(n, [&](int p) { return p * per < M ? fn(p * per, std::min(M, (p + 1) * per)) : 0; });
    }
    if (n <= 1 || work < (i64(1) << 16)) return fn(0, M);
    std::atomic<int> err{0};
    std::vector<std::thread> pool;
    const i64 per = (M + n - 1) / n;
    std::vector<std::pair<i64, i64>> here;  // ranges no thread could be started for
    for (int t = 1; t < n; t++) {
        const i64 a = t * per, b = std::min(M, a + per);
        try {
            if (a < b) pool.emplace_back([&fn, &err, a, b] { if (int e = fn(a, b)) err = e; });
        } catch (...) {
            here.emplace_back(a, b);
        }
    }
    for (auto [a, b] : here)
        if (int e = fn(a, b)) err = e;
    const int e0 = fn(0, std::min(M, per));
    for (auto& th : pool) th.join();
    return e0 ? e0 : err.load();
}

// ops.quantise_rows of one row of n values (shift s, |a| <= A_MAX); writes the int8 halves of a
// (a = 256 hi + lo) where hi is given, a itself where a_out is; *ms gets the sum of a^2. Returns s.
static i64 quantise(const i64* x, i64 n, i8* hi, i8* lo, i64* ms, i64* a_out) {
    i64 top = 0;
    for (i64 j = 0; j < n; j++) top = std::max(top, x[j] < 0 ? -x[j] : x[j]);
    const i64 s = std::max<i64>(bitlen(top) - A_BITS, 0);
    i64 sum = 0;
    for (i64 j = 0; j < n; j++) {
        const i64 a = clampv(sr(x[j], s), -A_MAX, A_MAX);
        if (a_out) a_out[j] = a;
        if (hi) {
            const i64 l = ((a + 128) & 255) - 128;
            lo[j] = (i8)l;
            hi[j] = (i8)((a - l) >> 8);
        }
        sum += a * a;
    }
    if (ms) *ms = sum;
    return s;
}

// RMSNorm's root of a quantised row (model._norm): isqrt(floor(ms 2^16 / K) + EPS[s]).
static inline i64 norm_root(i64 ms, i64 K, i64 s, const i64* eps) { return isqrt(fdiv(ms << (2 * NORM), K) + eps[s]); }

// Row r, column j of a product of int8 halves (2M rows of N: hi rows, then lo rows), as int64.
static inline i64 acc_at(const i32* acc, i64 M, i64 N, i64 r, i64 j) {
    return (i64)acc[r * N + j] * 256 + (i64)acc[(M + r) * N + j];
}

static int split_range(const i64* x, i64 M, i64 K, i8* both, i64* s, const i64* eps, i64* root, i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; r++) {
        i64 ms;
        const i64 sh = quantise(x + r * K, K, both + r * K, both + (M + r) * K, &ms, nullptr);
        if (s) s[r] = sh;
        if (root) root[r] = norm_root(ms, K, sh, eps);
    }
    return 0;
}

static int add_range(const i32* acc, i64 M, i64 N, const i64* mult, i64 shift, const i64* s, const i64* bias, i64* x,
                     i8* both, const i64* eps, i64* root, i64 r0, i64 r1) {
    for (i64 r = r0; r < r1; r++) {
        const i64 n = shift - s[r];
        if (n < 0) return 1;
        i64* xr = x + r * N;
        for (i64 j = 0; j < N; j++) xr[j] += sr(acc_at(acc, M, N, r, j) * mult[j], n) + (bias ? bias[j] : 0);
        if (both) {
            i64 ms;
            const i64 sh = quantise(xr, N, both + r * N, both + (M + r) * N, &ms, nullptr);
            root[r] = norm_root(ms, N, sh, eps);
        }
    }
    return 0;
}

static int qkv_range(const i32* acc, i64 B, i64 T, const i64* mult, i64 shift, const i64* root, const i64* bias,
                     i64 H, i64 Hk, i64 hd, i64 start, const i64* cos, const i64* sin, i64 score_mult, i64 qk_clamp,
                     i64 kv_clamp, double* aq, i64* n, i32* kc, i32* vc, i64 cap, i64 at, i64 r0, i64 r1) {
    const i64 half = hd / 2, g = H / Hk, W = (H + 2 * Hk) * hd, M = B * T;
    std::vector<i64> y(W), rot(hd), sq(hd), a(hd);
    for (i64 bt = r0; bt < r1; bt++) {
        const i64 b = bt / T, t = bt % T;
        const RoundDiv div(root[bt]);
        for (i64 j = 0; j < W; j++)
            y[j] = div(sr(acc_at(acc, M, W, bt, j) * mult[j], shift - F) << NORM) + (bias ? bias[j] : 0);
        const i64* c = cos + (start + t) * half;
        const i64* si = sin + (start + t) * half;
        for (i64 h = 0; h < H + Hk; h++) {
            const i64* x = y.data() + h * hd;
            for (i64 j = 0; j < half; j++) {
                const i64 x1 = clampv(x[j], -qk_clamp, qk_clamp), x2 = clampv(x[j + half], -qk_clamp, qk_clamp);
                rot[j] = sr(x1 * c[j] - x2 * si[j], 24);
                rot[j + half] = sr(x2 * c[j] + x1 * si[j], 24);
            }
            if (h < H) {
                for (i64 j = 0; j < hd; j++) sq[j] = sr(rot[j] * score_mult, 16);
                const i64 s = quantise(sq.data(), hd, nullptr, nullptr, nullptr, a.data());
                const i64 q = ((b * Hk + h / g) * g + h % g) * T + t;
                n[q] = 16 - s;
                for (i64 j = 0; j < hd; j++) aq[q * hd + j] = (double)a[j];
            } else {
                i32* kr = kc + (b * Hk + (h - H)) * hd * cap + at + t;
                for (i64 j = 0; j < hd; j++) kr[j * cap] = (i32)clampv(rot[j], -kv_clamp, kv_clamp);
            }
        }
        for (i64 h = 0; h < Hk; h++) {
            const i64* x = y.data() + (H + Hk + h) * hd;
            i32* vr = vc + ((b * Hk + h) * cap + at + t) * hd;
            for (i64 j = 0; j < hd; j++) vr[j] = (i32)clampv(x[j], -kv_clamp, kv_clamp);
        }
    }
    return 0;
}

// Sums of products of integers in binary64 are exact while every partial sum stays below 2^53, and
// binary64 vectorises where int64 products do not: scores (< 2^47) in binary64 whole, weighted values
// (terms < 2^46) in blocks of 64 keys (< 2^52) added to int64 totals.
static const i64 VALUE_BLOCK = 64;

#ifdef VNNI
// A token step's attention for one (b, kv) unit of G queries (T = 1, hd a multiple of 32) with AVX-512, in two
// halves over a range of its keys (a whole unit, or a part of one, see attend_split): keys and values converted
// to binary64 in registers as they are read, each shared by the G queries. The same exact sums as
// attend_small_range: scores whole, value sums in blocks of VALUE_BLOCK keys. s and e hold G rows of Lr (L
// rounded up to 32: keys past L are read from the cache's spare columns, cap being a multiple of 32, and
// ignored).
static inline __mmask8 lanes(i64 n) { return n >= 8 ? 0xFF : n <= 0 ? 0 : (__mmask8)((1u << n) - 1); }

// Keys j0..j1 (j0 a multiple of 32): each query's scores shifted by n with rounding into s, their largest into top.
template <int G>
static void score_keys(const double* aq, const i64* nq, const i32* kb, i64 hd, i64 cap, i64 Lr, i64 j0, i64 j1,
                       i64* s, i64* top) {
    __m512i most[G];
    for (int g = 0; g < G; g++) most[g] = _mm512_set1_epi64(INT64_MIN);
    for (i64 j = j0; j < j1; j += 32) {
        __m512d acc[G][4];
        for (int g = 0; g < G; g++)
            for (int i = 0; i < 4; i++) acc[g][i] = _mm512_setzero_pd();
        for (i64 d = 0; d < hd; d++) {
            const i32* kd = kb + d * cap + j;
            _mm_prefetch((const char*)(kd + 64), _MM_HINT_T0);  // each of the hd rows is a stream of its own:
            _mm_prefetch((const char*)(kd + 80), _MM_HINT_T0);  // fetched two blocks ahead (never faults)
            __m512d k[4];
            for (int i = 0; i < 4; i++) k[i] = _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i*)(kd + 8 * i)));
            for (int g = 0; g < G; g++) {
                const __m512d q = _mm512_set1_pd(aq[g * hd + d]);
                for (int i = 0; i < 4; i++) acc[g][i] = _mm512_fmadd_pd(q, k[i], acc[g][i]);
            }
        }
        for (int g = 0; g < G; g++) {
            const __m512i half = _mm512_set1_epi64((i64(1) << nq[g]) >> 1);
            const __m128i nn = _mm_cvtsi64_si128(nq[g]);
            for (int i = 0; i < 4; i++) {  // the scores are integers (< 2^47): truncation is exact
                const __m512i x = _mm512_sra_epi64(_mm512_add_epi64(_mm512_cvttpd_epi64(acc[g][i]), half), nn);
                _mm512_storeu_si512(s + g * Lr + j + 8 * i, x);
                most[g] = _mm512_mask_max_epi64(most[g], lanes(j1 - j - 8 * i), most[g], x);
            }
        }
    }
    for (int g = 0; g < G; g++) top[g] = _mm512_reduce_max_epi64(most[g]);
}

// Keys j0..j1 (j0 a multiple of VALUE_BLOCK): EXP20 of each score's gap to its query's top (e, binary64), their
// sum and the weighted value sums into num (G rows of hd value sums, then the weights' sum).
template <int G>
static void weigh_keys(const i32* vb, i64 hd, i64 Lr, i64 j0, i64 j1, const i64* s, const i64* top, const i64* exp20,
                       i64 log2e, double* e, i64* num) {
    const __m512i far = _mm512_set1_epi64(i64(1) << 21), mul = _mm512_set1_epi64(log2e);
    for (int g = 0; g < G; g++) {
        const __m512i t = _mm512_set1_epi64(top[g]);
        __m512i total = _mm512_setzero_si512();
        for (i64 j = j0; j < j1; j += 8) {  // lanes past j1 weigh 0
            const __mmask8 k = lanes(j1 - j);
            const __m512i gap = _mm512_min_epi64(_mm512_sub_epi64(t, _mm512_maskz_loadu_epi64(k, s + g * Lr + j)), far);
            const __m512i at = _mm512_srli_epi64(_mm512_mullo_epi64(gap, mul), 30);
            const __m512i w = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), k, at, exp20, 8);
            total = _mm512_add_epi64(total, w);
            _mm512_storeu_pd(e + g * Lr + j, _mm512_cvtepi64_pd(w));  // exact: w <= 2^20
        }
        num[g * (hd + 1) + hd] = _mm512_reduce_add_epi64(total);
        for (i64 d = 0; d < hd; d++) num[g * (hd + 1) + d] = 0;
    }
    for (i64 b0 = j0; b0 < j1; b0 += VALUE_BLOCK)  // a block's values read once from memory, then from L1
        for (i64 d0 = 0; d0 < hd; d0 += 32) {
            __m512d acc[G][4];
            for (int g = 0; g < G; g++)
                for (int i = 0; i < 4; i++) acc[g][i] = _mm512_setzero_pd();
            for (i64 j = b0; j < std::min(j1, b0 + VALUE_BLOCK); j++) {
                const i32* vr = vb + j * hd + d0;
                _mm_prefetch((const char*)(vr + 32 * hd), _MM_HINT_T0);
                _mm_prefetch((const char*)(vr + 32 * hd + 16), _MM_HINT_T0);
                __m512d v[4];
                for (int i = 0; i < 4; i++) v[i] = _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i*)(vr + 8 * i)));
                for (int g = 0; g < G; g++) {
                    const __m512d w = _mm512_set1_pd(e[g * Lr + j]);
                    for (int i = 0; i < 4; i++) acc[g][i] = _mm512_fmadd_pd(w, v[i], acc[g][i]);
                }
            }
            for (int g = 0; g < G; g++)
                for (int i = 0; i < 4; i++) {
                    i64* o = num + g * (hd + 1) + d0 + 8 * i;
                    _mm512_storeu_si512(o, _mm512_add_epi64(_mm512_loadu_si512(o), _mm512_cvttpd_epi64(acc[g][i])));
                }
        }
}

typedef void (*ScoreKeys)(const double*, const i64*, const i32*, i64, i64, i64, i64, i64, i64*, i64*);
typedef void (*WeighKeys)(const i32*, i64, i64, i64, i64, const i64*, const i64*, const i64*, i64, double*, i64*);
static const ScoreKeys SCORE_KEYS[] = {score_keys<1>, score_keys<2>, score_keys<3>, score_keys<4>,
                                       score_keys<5>, score_keys<6>, score_keys<7>, score_keys<8>};
static const WeighKeys WEIGH_KEYS[] = {weigh_keys<1>, weigh_keys<2>, weigh_keys<3>, weigh_keys<4>,
                                       weigh_keys<5>, weigh_keys<6>, weigh_keys<7>, weigh_keys<8>};

// Room for a step's attention, kept per thread between calls: new vectors each layer cost their clearing.
template <class T>
static T* room(std::vector<T>& v, i64 n) {
    if ((i64)v.size() < n) v.resize(n);
    return v.data();
}
static thread_local std::vector<i64> SCORES, SUMS;
static thread_local std::vector<double> WEIGHTS;

// A unit's g queries' value sums divided by their weights' sums (num: g rows of hd + 1) into out.
static void attend_divide(const i64* num, i64 g, i64 hd, i64* o) {
    for (i64 gi = 0; gi < g; gi++) {
        const RoundDiv div(num[gi * (hd + 1) + hd]);
        for (i64 d = 0; d < hd; d++) o[gi * hd + d] = div(num[gi * (hd + 1) + d]);
    }
}
#endif

static const i64 KEY_BLOCK = 32, DIM_BLOCK = 32;  // keys scored, value components summed at once: in registers

// The attention of T queries per (b, kv) unit: each block of keys (then of values) converted to binary64
// once for the unit's g T queries, whose scores for a block are summed in registers.
static int attend_small_range(const double* aq, const i64* n, const i32* kc, const i32* vc, i64 Hk, i64 g, i64 T,
                              i64 hd, i64 cap, i64 start, const i64* exp20, i64 log2e, i64* out, i64 p0, i64 p1) {
    const i64 Q = g * T, Lm = start + T;  // queries of a unit (qi = gi T + t), keys of the last
#ifdef VNNI
    if (T == 1 && hd % 32 == 0 && g <= 8 && cap % 32 == 0) {
        const i64 Lr = (Lm + 31) / 32 * 32;
        i64 *sc = room(SCORES, g * Lr), *num = room(SUMS, g * (hd + 1)), top[8];
        double* e = room(WEIGHTS, g * Lr);
        for (i64 p = p0; p < p1; p++) {
            SCORE_KEYS[g - 1](aq + p * g * hd, n + p * g, kc + p * hd * cap, hd, cap, Lr, 0, Lm, sc, top);
            WEIGH_KEYS[g - 1](vc + p * cap * hd, hd, Lr, 0, Lm, sc, top, exp20, log2e, e, num);
            attend_divide(num, g, hd, out + p * g * hd);  // out (B, 1, Hk g hd): unit p's heads
        }
        return 0;
    }
#endif
    std::vector<double> dot(Q * Lm), kblk(hd * KEY_BLOCK), vblk(VALUE_BLOCK * hd + DIM_BLOCK);
    std::vector<i64> w(Q * Lm), num(Q * hd), sum(Q);
    for (i64 p = p0; p < p1; p++) {  // p = b Hk + kv
        const i64 b = p / Hk, kv = p % Hk;
        const i32* kb = kc + p * hd * cap;
        const i32* vb = vc + p * cap * hd;
        for (i64 j0 = 0; j0 < Lm; j0 += KEY_BLOCK) {
            const i64 jn = std::min(KEY_BLOCK, Lm - j0);
            for (i64 d = 0; d < hd; d++) {
                double* kd = kblk.data() + d * KEY_BLOCK;
                const i32* src = kb + d * cap + j0;
                for (i64 j = 0; j < jn; j++) kd[j] = (double)src[j];
                for (i64 j = jn; j < KEY_BLOCK; j++) kd[j] = 0.0;
            }
            for (i64 qi = 0; qi < Q; qi++) {
                if (j0 >= start + qi % T + 1) continue;
                const double* qr = aq + (p * Q + qi) * hd;
                double acc[KEY_BLOCK] = {};
                for (i64 d = 0; d < hd; d++) {
                    const double qd = qr[d];
                    for (i64 j = 0; j < KEY_BLOCK; j++) acc[j] += qd * kblk[d * KEY_BLOCK + j];
                }
                std::copy(acc, acc + jn, dot.begin() + qi * Lm + j0);
            }
        }
        for (i64 qi = 0; qi < Q; qi++) {
            const i64 L = start + qi % T + 1, nn = n[p * Q + qi];
            i64* wq = w.data() + qi * Lm;
            i64 top = INT64_MIN, total = 0;
            for (i64 j = 0; j < L; j++) {
                wq[j] = ((i64)dot[qi * Lm + j] + ((i64(1) << nn) >> 1)) >> nn;
                top = std::max(top, wq[j]);
            }
            for (i64 j = 0; j < L; j++) {
                wq[j] = exp20[(std::min<i64>(top - wq[j], i64(1) << 21) * log2e) >> 30];
                total += wq[j];
            }
            sum[qi] = total;
        }
        std::fill(num.begin(), num.end(), 0);
        for (i64 j0 = 0; j0 < Lm; j0 += VALUE_BLOCK) {
            const i64 jn = std::min(VALUE_BLOCK, Lm - j0);
            for (i64 i = 0; i < jn * hd; i++) vblk[i] = (double)vb[j0 * hd + i];
            for (i64 qi = 0; qi < Q; qi++) {
                const i64 L = start + qi % T + 1, jend = std::min(jn, L - j0);
                const i64* e = w.data() + qi * Lm + j0;
                for (i64 d0 = 0; d0 < hd; d0 += DIM_BLOCK) {  // DIM_BLOCK sums in registers (vblk is padded)
                    double acc[DIM_BLOCK] = {};
                    for (i64 j = 0; j < jend; j++) {
                        const double ej = (double)e[j];
                        const double* vr = vblk.data() + j * hd + d0;
                        for (i64 k = 0; k < DIM_BLOCK; k++) acc[k] += ej * vr[k];
                    }
                    for (i64 k = 0; k < std::min(DIM_BLOCK, hd - d0); k++) num[qi * hd + d0 + k] += (i64)acc[k];
                }
            }
        }
        for (i64 qi = 0; qi < Q; qi++) {
            const i64 gi = qi / T, t = qi % T;
            const RoundDiv div(sum[qi]);
            i64* o = out + (b * T + t) * (Hk * g * hd) + (kv * g + gi) * hd;
            for (i64 d = 0; d < hd; d++) o[d] = div(num[qi * hd + d]);
        }
    }
    return 0;
}

#ifdef VNNI
static const i64 SPLIT_KEYS = 256;  // from this many keys a step's few units are split by keys (see attend_split)

// attend_small_range's AVX-512 kernel for units (B Hk) that do not share out evenly among n threads (a row of 3
// key heads on 2): their keys, in blocks of VALUE_BLOCK, split evenly instead, each thread taking a run of
// blocks (parts of a unit or two). The weights need a query's top over all its keys, hence two runs (a barrier
// within one could wait on a part that runs after it on the same thread): scores and each part's tops, then
// weights from the unit's top and each part's sums. The last part of a unit to finish adds its parts' sums
// (int64: exact in any grouping) and divides.
static int attend_split(const double* aq, const i64* n, const i32* kc, const i32* vc, i64 units, i64 g, i64 hd,
                        i64 cap, i64 L, const i64* exp20, i64 log2e, i64* out, int threads) {
    struct Part {
        i64 p, j0, j1, first, last;  // unit p's keys j0..j1; the unit's parts are first..last-1
    };
    const i64 Lr = (L + 31) / 32 * 32, blocks = (L + VALUE_BLOCK - 1) / VALUE_BLOCK, all = units * blocks;
    std::vector<Part> parts;
    std::vector<i64> from(threads + 1);
    for (int t = 0; t < threads; t++) {
        from[t] = (i64)parts.size();
        for (i64 k = all * t / threads, end = all * (t + 1) / threads; k < end;) {
            const i64 p = k / blocks, stop = std::min(end, (p + 1) * blocks);
            parts.push_back({p, (k - p * blocks) * VALUE_BLOCK, std::min(L, (stop - p * blocks) * VALUE_BLOCK), 0, 0});
            k = stop;
        }
    }
    from[threads] = (i64)parts.size();
    for (i64 i = 0, first = 0; i < (i64)parts.size(); i++) {
        if (parts[i].p != parts[first].p) first = i;
        parts[i].first = first;
    }
    for (i64 i = (i64)parts.size() - 1, last = i + 1; i >= 0; i--) {
        if (parts[i].p != parts[last - 1].p) last = i + 1;
        parts[i].last = last;
    }
    const i64 np = (i64)parts.size();  // the caller's room, shared by the threads (their own is not this)
    i64 *sc = room(SCORES, units * g * Lr + np * g), *tops = sc + units * g * Lr, *nums = room(SUMS, np * g * (hd + 1));
    double* e = room(WEIGHTS, units * g * Lr);
    std::unique_ptr<std::atomic<int>[]> done(new std::atomic<int>[units]);
    for (i64 p = 0; p < units; p++) done[p].store(0);
    int err = pool(threads).run(threads, [&](int t) {
        for (i64 i = from[t]; i < from[t + 1]; i++) {
            const Part& r = parts[i];
            SCORE_KEYS[g - 1](aq + r.p * g * hd, n + r.p * g, kc + r.p * hd * cap, hd, cap, Lr, r.j0, r.j1,
                              sc + r.p * g * Lr, tops + i * g);
        }
        return 0;
    });
    if (err) return err;
    return pool(threads).run(threads, [&](int t) {
        for (i64 i = from[t]; i < from[t + 1]; i++) {
            const Part& r = parts[i];
            i64 top[8];
            for (i64 gi = 0; gi < g; gi++) {
                top[gi] = INT64_MIN;
                for (i64 k = r.first; k < r.last; k++) top[gi] = std::max(top[gi], tops[k * g + gi]);
            }
            i64* num = nums + i * g * (hd + 1);
            WEIGH_KEYS[g - 1](vc + r.p * cap * hd, hd, Lr, r.j0, r.j1, sc + r.p * g * Lr, top, exp20, log2e,
                              e + r.p * g * Lr, num);
            if (done[r.p].fetch_add(1, std::memory_order_acq_rel) + 1 < r.last - r.first) continue;
            i64* sum = nums + r.first * g * (hd + 1);  // the unit's first part's sums take the others'
            for (i64 k = r.first + 1; k < r.last; k++)
                for (i64 x = 0; x < g * (hd + 1); x++) sum[x] += nums[k * g * (hd + 1) + x];
            attend_divide(sum, g, hd, out + r.p * g * hd);
        }
        return 0;
    });
}
#endif

static int attend_mid_range(const double* dot, i64 T, i64 L, i64 first, const i64* n, const i64* exp20, i64 log2e,
                            double* e, i64* esum, i64 r0, i64 r1) {
    const i64 far = exp20[((i64(1) << 21) * log2e) >> 30];  // a masked key: its gap is clamped
    for (i64 r = r0; r < r1; r++) {
        const i64 t = r % T, nn = n[r], seen = T > 1 ? std::min(L, first + t + 1) : L;
        const double* d = dot + r * L;
        double* er = e + r * L;
        i64 top = INT64_MIN;
        for (i64 j = 0; j < seen; j++) {
            const i64 s = ((i64)d[j] + ((i64(1) << nn) >> 1)) >> nn;
            er[j] = (double)s;  // exact: |s| < 2^53
            top = std::max(top, s);
        }
        i64 sum = far * (L - seen);
        for (i64 j = 0; j < seen; j++) {
            const i64 w = exp20[(std::min<i64>(top - (i64)er[j], i64(1) << 21) * log2e) >> 30];
            er[j] = (double)w;
            sum += w;
        }
        for (i64 j = seen; j < L; j++) er[j] = (double)far;
        esum[r] = sum;
    }
    return 0;
}

static int mlp_range(const i32* acc, i64 M, i64 I, const i64* mult, i64 shift, const i64* root, const i64* bias,
                     const i64* sig, i64 clamp, i8* both, i64* s, i64 r0, i64 r1) {
    const i64 N = 2 * I;
    std::vector<i64> h(I);
    for (i64 r = r0; r < r1; r++) {
        const RoundDiv div(root[r]);
        for (i64 j = 0; j < I; j++) {
            i64 gate = div(sr(acc_at(acc, M, N, r, j) * mult[j], shift - F) << NORM) + (bias ? bias[j] : 0);
            i64 up = div(sr(acc_at(acc, M, N, r, I + j) * mult[I + j], shift - F) << NORM) + (bias ? bias[I + j] : 0);
            gate = clampv(gate, -clamp, clamp);
            up = clampv(up, -clamp, clamp);
            const i64 w = sig[clampv((gate >> (F - 12)) + 65536, 0, 2 * 65536 - 1)];
            h[j] = clampv(sr(sr(w * gate, 30) * up, F), -clamp, clamp);
        }
        s[r] = quantise(h.data(), I, both + r * I, both + (M + r) * I, nullptr, nullptr);
    }
    return 0;
}

// model.frequencies of the head's row r: f = 1 + (EXP30[gap c >> 46] K >> 32).
static void freq_row(const i32* acc, i64 R, i64 V, i64 r, const i64* mult, i64 shift, i64 root, const i64* exp30,
                     i64 log2e, i64 total, i64* f) {
    i64 top = INT64_MIN;
    for (i64 j = 0; j < V; j++) {
        f[j] = sr(acc_at(acc, R, V, r, j) * mult[j], shift - F);
        top = std::max(top, f[j]);
    }
    const i64 cap = (root << 21) >> NORM, c = fdiv(log2e << (NORM + 16), root);
    i64 sum = 0;
    for (i64 j = 0; j < V; j++) {
        f[j] = exp30[(std::min(top - f[j], cap) * c) >> 46];
        sum += f[j];
    }
    const i64 K = fdiv((total - V) << 32, sum);
    for (i64 j = 0; j < V; j++) f[j] = ((f[j] * K) >> 32) + 1;
}

#ifdef VNNI
static constexpr i64 PREFETCH = 1024;  // bytes ahead: a step streams the weights from memory once (~5 % a step)
// MT rows of a (as unsigned: a + 128) against one block of 16 outputs: exact int32 dot products,
// less 128 sum w, so that they are torch._int_mm's.
template <int MT>
static void gemv_block(const uint8_t* a, i64 K, const i8* P, const i32* sums, i32* out, i64 N, i64 b) {
    __m512i acc[MT];
    for (int m = 0; m < MT; m++) acc[m] = _mm512_setzero_si512();
    const i8* w = P + b * K * 16;
    for (i64 q = 0; q < K / 4; q++) {
        _mm_prefetch((const char*)(w + q * 64 + PREFETCH), _MM_HINT_T0);
        const __m512i wq = _mm512_loadu_si512(w + q * 64);
        for (int m = 0; m < MT; m++) {
            i32 four;
            __builtin_memcpy(&four, a + m * K + q * 4, 4);
            acc[m] = _mm512_dpbusd_epi32(acc[m], _mm512_set1_epi32(four), wq);
        }
    }
    const __m512i s = _mm512_loadu_si512(sums + b * 16);
    const __mmask16 keep = N - b * 16 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (N - b * 16)) - 1);
    for (int m = 0; m < MT; m++) _mm512_mask_storeu_epi32(out + m * N + b * 16, keep, _mm512_sub_epi32(acc[m], s));
}

template <int MT>
static void gemv_rows(const uint8_t* a, i64 K, const i8* P, const i32* sums, i32* out, i64 N, i64 b0, i64 b1) {
    for (i64 b = b0; b < b1; b++) gemv_block<MT>(a, K, P, sums, out, N, b);
}

typedef void (*GemvRows)(const uint8_t*, i64, const i8*, const i32*, i32*, i64, i64, i64);
static const GemvRows GEMV_ROWS[] = {
    gemv_rows<1>, gemv_rows<2>, gemv_rows<3>, gemv_rows<4>, gemv_rows<5>, gemv_rows<6>, gemv_rows<7>, gemv_rows<8>};
#endif

extern "C" {

void set_threads(int n) { THREADS = n < 1 ? 1 : n; }

// Token steps begin (1) or end (0): small stages then go to the pool's threads (see rows).
void stepping(int on) { STEPPING += on ? 1 : -1; }

// Whether gemv runs here (built for a CPU with AVX-512 VNNI); where it does not, torch's products do.
int vnni() {
#ifdef VNNI
    return 1;
#else
    return 0;
#endif
}

// int8 weights w (N, K), K a multiple of 4, repacked for gemv: P (ceil(N / 16), K / 4, 16, 4), the four
// weights of 16 outputs that one VNNI instruction takes, and sums[j] = 128 sum_k w[j][k] (a zero row
// past N).
int pack_weights(const i8* w, i64 N, i64 K, i8* P, i32* sums) {
    if (K % 4) return 1;
    const i64 blocks = (N + 15) / 16, K4 = K / 4;
    for (i64 j = 0; j < blocks * 16; j++) {
        i64 sum = 0;
        for (i64 k = 0; k < K; k++) sum += j < N ? w[j * K + k] : 0;
        sums[j] = (i32)(128 * sum);
    }
    for (i64 b = 0; b < blocks; b++)
        for (i64 q = 0; q < K4; q++)
            for (i64 j = 0; j < 16; j++)
                for (i64 t = 0; t < 4; t++) {
                    const i64 row = b * 16 + j;
                    P[((b * K4 + q) * 16 + j) * 4 + t] = row < N ? w[row * K + q * 4 + t] : 0;
                }
    return 0;
}


// out (M, N) = a (M, K) times the weights packed by pack_weights, as torch._int_mm; M <= 32 (the rows are
// taken 8 at a time from the same weights), the output blocks shared among THREADS threads.
int gemv(const i8* a, i64 M, i64 K, i64 N, const i8* P, const i32* sums, i32* out) {
#ifdef VNNI
    if (M < 1 || M > 32 || K % 4) return 1;
    std::vector<uint8_t> au;
    try {
        au.resize(M * K);
    } catch (...) {
        return 2;
    }
    for (i64 i = 0; i < M * K; i++) au[i] = (uint8_t)(a[i] + 128);
    const i64 blocks = (N + 15) / 16;
    auto part = [&](i64 b0, i64 b1) {
        for (i64 m = 0; m < M; m += 8) {
            const i64 mt = std::min<i64>(8, M - m);
            GEMV_ROWS[mt - 1](au.data() + m * K, K, P, sums, out + m * N, N, b0, b1);
        }
        return 0;
    };
    const int n = (int)std::min<i64>(THREADS, blocks);
    if (n <= 1) return part(0, blocks);
    const i64 per = (blocks + n - 1) / n;
    return pool(n).run(n, [&](int p) { return p * per < blocks ? part(p * per, std::min(blocks, (p + 1) * per)) : 0; });
#else
    return 1;
#endif
}

// Rows of x (M, K) quantised for a matmul: int8 halves into both (2M, K), hi rows first, and the shift
// of each row into s; or, with eps given, RMSNorm's root of each row into root (model._norm).
int split_rows(const i64* x, i64 M, i64 K, i8* both, i64* s, const i64* eps, i64* root) {
    return rows(M, M * K, [&](i64 a, i64 b) { return split_range(x, M, K, both, s, eps, root, a, b); });
}

// linear_plain added to the residual x in place: x += shift_round(acc mult, shift - s) + bias; then,
// where `both` is given, the new rows split for the next layer with their roots, as split_rows.
int plain_add(const i32* acc, i64 M, i64 N, const i64* mult, i64 shift, const i64* s, const i64* bias, i64* x,
              i8* both, const i64* eps, i64* root) {
    return rows(M, M * N, [&](i64 a, i64 b) {
        return add_range(acc, M, N, mult, shift, s, bias, x, both, eps, root, a, b);
    });
}

// The qkv layer's product (2 B T rows of (H + 2 Hk) hd) normed as linear_normed, then: clamp, RoPE at
// positions start.., queries scaled and quantised per head (aq: B Hk g T hd in binary64, n = 16 - shift:
// B Hk g T), keys and values clamped (|k|, |v| < 2^26) into int32 caches at position `at`: keys as
// columns of kc (B Hk hd cap), so that a query's scores are one pass along rows, values as rows of vc
// (B Hk cap hd). A step reads the whole cache: int32 is a quarter of binary64 halves' traffic.
int qkv(const i32* acc, i64 B, i64 T, const i64* mult, i64 shift, const i64* root, const i64* bias, i64 H, i64 Hk,
        i64 hd, i64 start, const i64* cos, const i64* sin, i64 score_mult, i64 qk_clamp, i64 kv_clamp, double* aq,
        i64* n, i32* kc, i32* vc, i64 cap, i64 at) {
    return rows(B * T, B * T * (H + 2 * Hk) * hd, [&](i64 a, i64 b) {
        return qkv_range(acc, B, T, mult, shift, root, bias, H, Hk, hd, start, cos, sin, score_mult, qk_clamp,
                         kv_clamp, aq, n, kc, vc, cap, at, a, b);
    });
}

// The whole attention of a few queries (a token step's) from the int32 caches: exact scores shifted
// by n, EXP20 of the gap to the row's top, and the weighted value sums (< 2^20 2^26 2^13 = 2^59: the
// integers model._attend gets from its two halves) divided by the weights' sum into out (B, T, H hd). Keys after a query's position are skipped: their weight, EXP20
// of the clamped gap, is 0 (checked). One thread: starting one per layer of a step costs more. In token steps the
// pool's threads take units, or parts of their keys where the units would not share out evenly (attend_split).
int attend_small(const double* aq, const i64* n, const i32* kc, const i32* vc, i64 B, i64 Hk, i64 g, i64 T, i64 hd,
                 i64 cap, i64 start, const i64* exp20, i64 log2e, i64* out) {
    if (exp20[((i64(1) << 21) * log2e) >> 30] != 0) return 1;
#ifdef VNNI
    const int threads = (int)std::min<i64>(THREADS, B * Hk * (start + 1) / VALUE_BLOCK);
    if (STEPPING && T == 1 && hd % 32 == 0 && g <= 8 && cap % 32 == 0 && start + 1 >= SPLIT_KEYS && threads > 1 &&
        B * Hk % threads && B * Hk < 4 * threads)
        return attend_split(aq, n, kc, vc, B * Hk, g, hd, cap, start + 1, exp20, log2e, out, threads);
#endif
    auto part = [&](i64 a, i64 b) { return attend_small_range(aq, n, kc, vc, Hk, g, T, hd, cap, start, exp20, log2e, out, a, b); };
    return STEPPING ? rows(B * Hk, B * Hk * g * T * (start + T) * hd, part) : part(0, B * Hk);
}

// A block of queries' scores (dot: R rows of L, R = B Hk g T, queries at first.. in each B Hk g block)
// shifted by n with rounding, later keys masked, EXP20 of the gap to the row's top: e (binary64, for the
// product with the values) and its sums.
int attend_mid(const double* dot, i64 R, i64 T, i64 L, i64 first, const i64* n, const i64* exp20, i64 log2e,
               double* e, i64* esum) {
    return rows(R, R * L, [&](i64 a, i64 b) { return attend_mid_range(dot, T, L, first, n, exp20, log2e, e, esum, a, b); });
}

// Weighted value sums (B Hk g T rows of 2hd: in 8192s, then remainders) divided by the weights' sums,
// written to out (B, Tall, H hd) at positions t0..t0+T-1.
int attend_out(const double* both, i64 B, i64 Hk, i64 g, i64 T, i64 hd, const i64* esum, i64 Tall, i64 t0, i64* out) {
    for (i64 r = 0; r < B * Hk * g * T; r++) {
        const i64 t = r % T, head = r / T % (Hk * g), b = r / T / (Hk * g);
        const double* x = both + r * 2 * hd;
        i64* o = out + (b * Tall + t0 + t) * (Hk * g * hd) + head * hd;
        const RoundDiv div(esum[r]);
        for (i64 j = 0; j < hd; j++) o[j] = div((i64)x[j] * 8192 + (i64)x[hd + j]);
    }
    return 0;
}

// The MLP between its two layers: gate and up normed and clamped, SiLU from the sigmoid table, their
// product clamped, then split for the down layer (both, s) as split_rows.
int mlp_mid(const i32* acc, i64 M, i64 I, const i64* mult, i64 shift, const i64* root, const i64* bias, const i64* sig,
            i64 clamp, i8* both, i64* s) {
    return rows(M, 2 * M * I, [&](i64 a, i64 b) {
        return mlp_range(acc, M, I, mult, shift, root, bias, sig, clamp, both, s, a, b);
    });
}

// The head's product (2R rows of V) to frequency tables f (R, V).
int head_freqs(const i32* acc, i64 R, i64 V, const i64* mult, i64 shift, const i64* root, const i64* exp30, i64 log2e,
               i64 total, i64* f) {
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
            const i64 t = targets[r];
            if (t < 0 || t >= V) return 1;
            freq_row(acc, R, V, r, mult, shift, root[r], exp30, log2e, total, f.data());
            i64 below = 0, all = 0;
            for (i64 j = 0; j < V; j++) {
                below += j < t ? f[j] : 0;
                all += f[j];
            }
            out[3 * r] = below;
            out[3 * r + 1] = f[t];
            out[3 * r + 2] = all;
        }
        return 0;
    });
}

// One token step's layers for M rows of one token each: fast.hidden's calls, in its order, without a
// return to Python between them. plan holds per layer PLAN_FIELDS int64: for qkv, o, gate_up and down
// in turn (packed weights P, their sums, N, K, mult, shift, bias or 0), then the layer's caches (kc, vc,
// cap). x (M, d) is updated in place; both and root hold x split for the first layer on entry; s, acc,
// h, aq, n and out are room for the stages (sized by the caller).
int step_layers(const i64* plan, i64 L, i64 M, i64* x, i8* both, i64* root, i64* s, i32* acc, i8* h, double* aq,
                i64* n, i64* out, i64 H, i64 Hk, i64 hd, i64 start, const i64* cos, const i64* sin,
                i64 score_mult, i64 qk_clamp, i64 kv_clamp, i64 mlp_clamp, const i64* eps, const i64* sig,
                const i64* exp20, i64 log2e, i64 at) {
    struct Lin {
        const i8* P;
        const i32* sums;
        i64 N, K;
        const i64* mult;
        i64 shift;
        const i64* bias;
    };
    auto lin = [](const i64* f) {
        return Lin{(const i8*)f[0], (const i32*)f[1], f[2], f[3], (const i64*)f[4], f[5], (const i64*)f[6]};
    };
    const i64 d = lin(plan).K;
    for (i64 l = 0; l < L; l++) {
        const i64* f = plan + l * PLAN_FIELDS;
        const Lin qkv_l = lin(f), o = lin(f + 7), gu = lin(f + 14), down = lin(f + 21);
        i32* kc = (i32*)f[28];
        i32* vc = (i32*)f[29];
        const i64 cap = f[30];
        int e = gemv(both, 2 * M, d, qkv_l.N, qkv_l.P, qkv_l.sums, acc);
        if (!e) e = qkv(acc, M, 1, qkv_l.mult, qkv_l.shift, root, qkv_l.bias, H, Hk, hd, start, cos, sin,
                        score_mult, qk_clamp, kv_clamp, aq, n, kc, vc, cap, at);
        if (!e) e = attend_small(aq, n, kc, vc, M, Hk, H / Hk, 1, hd, cap, start, exp20, log2e, out);
        if (!e) e = split_rows(out, M, H * hd, both, s, nullptr, nullptr);
        if (!e) e = gemv(both, 2 * M, o.K, o.N, o.P, o.sums, acc);
        if (!e) e = plain_add(acc, M, o.N, o.mult, o.shift, s, o.bias, x, both, eps, root);
        if (!e) e = gemv(both, 2 * M, gu.K, gu.N, gu.P, gu.sums, acc);
        if (!e) e = mlp_mid(acc, M, gu.N / 2, gu.mult, gu.shift, root, gu.bias, sig, mlp_clamp, h, s);
        if (!e) e = gemv(h, 2 * M, down.K, down.N, down.P, down.sums, acc);
        if (!e) e = plain_add(acc, M, down.N, down.mult, down.shift, s, down.bias, x, both, eps, root);
        if (e) return e;
    }
    return 0;
}

}  // extern "C"
