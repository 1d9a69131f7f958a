/* The AVX2 + FMA micro-kernel of the weight-stationary recurrence.
 *
 * A tile is MR batch rows by NV vectors of 8 output columns in MR*NV ymm
 * accumulators for the whole k loop (16 registers: 6 x 2 is the classic
 * Haswell shape).  MR is up to 6; NV is 2 for 4 or more rows, 4 for 2-3
 * rows and 8 for one row, so that there are enough independent accumulators
 * to hide the FMA latency.  Columns past H in the last panel use masked
 * loads and stores.  Each tile fetches the rows of out (and h) that the next
 * one reads into L1 while it computes.  Layout and invariant:
 * src/wsr_internal.h.
 *
 * Compiled for AVX2 + FMA by a per-function target attribute (GCC, Clang)
 * and called only when the CPU and OS support both (src/wsr.c). */
#include "wsr_internal.h"

#if WSR_X86_64
#include <immintrin.h>

#define TGT WSR_TARGET("avx2,fma")
#define MR_MAX 6
#define NV_MAX 8
#define VW 8
/* k steps before the end of a tile at which it fetches the next tile's rows,
 * in tiles of at least WSR_FETCH_MIN_H steps */
#define WSR_FETCH_STEPS 128
#define WSR_FETCH_MIN_H 256

TGT WSR_INLINE __m256 tanh8(__m256 a) {
    const __m256 cl = _mm256_set1_ps(WSR_TANH_CLAMP);
    /* min/max return their second operand when either is NaN: a NaN passes */
    __m256 x = _mm256_min_ps(cl, a);
    x = _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), cl), x);
    const __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_fmadd_ps(x2, _mm256_set1_ps(WSR_TANH_P0), _mm256_set1_ps(WSR_TANH_P1));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(WSR_TANH_P2));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(WSR_TANH_P3));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(WSR_TANH_P4));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(WSR_TANH_P5));
    p = _mm256_fmadd_ps(x2, p, _mm256_set1_ps(WSR_TANH_P6));
    p = _mm256_mul_ps(x, p);
    __m256 q = _mm256_fmadd_ps(x2, _mm256_set1_ps(WSR_TANH_Q0), _mm256_set1_ps(WSR_TANH_Q1));
    q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(WSR_TANH_Q2));
    q = _mm256_fmadd_ps(x2, q, _mm256_set1_ps(WSR_TANH_Q3));
    const __m256 r = _mm256_div_ps(p, q);
    const __m256 absa = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a);
    const __m256 small = _mm256_cmp_ps(absa, _mm256_set1_ps(WSR_TANH_SMALL), _CMP_LT_OQ);
    const __m256 big = _mm256_cmp_ps(absa, _mm256_set1_ps(WSR_TANH_ONE), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_and_ps(a, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
    return _mm256_blendv_ps(_mm256_blendv_ps(r, a, small), one, big);
}

/* lanes 0 .. n-1 set (n clamped to 0 .. 8) */
TGT WSR_INLINE __m256i lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

TGT WSR_INLINE __m256 load(const float* p, int n) {
    return n >= VW ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(n));
}

TGT WSR_INLINE void store(float* p, int n, __m256 x) {
    if (n >= VW)
        _mm256_storeu_ps(p, x);
    else
        _mm256_maskstore_ps(p, lanes(n), x);
}

/* one k step of the tile's product: acc[r][v] += in[r*H] * wk[off[v]] */
TGT WSR_INLINE void k_step(__m256 acc[MR_MAX][NV_MAX], const float* in, const float* wk,
                           const ptrdiff_t off[NV_MAX], int H, const int MR, const int NV) {
    __m256 w[NV_MAX];
    WSR_UNROLL
    for (int v = 0; v < NV; v++) w[v] = _mm256_loadu_ps(wk + off[v]);
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        const __m256 a = _mm256_broadcast_ss(in + (ptrdiff_t)r * H);
        WSR_UNROLL
        for (int v = 0; v < NV; v++) acc[r][v] = _mm256_fmadd_ps(a, w[v], acc[r][v]);
    }
}

/* k steps of the tile's product: acc[r][v] += in[r*H + k] * w_k[v] for the
 * rows at `in` (rows H apart) and the packed rows w_k = wk + k*WSR_NR + off[v];
 * k ascending, one fused multiply-add per element and step.  Unrolled four
 * times (GCC) where the tile's accumulators, its W vectors and a broadcast
 * fit the 16 registers: one thread, AMD Zen 3, forward 1-6 % and backward
 * 2-14 % faster at B = 16-64, H = 256-1024, 22-25 % at B = 2.  The 3 x 4 and
 * 1 x 8 tiles, which do not fit, spill accumulators when unrolled (B = 3,
 * H = 128: half the speed), so their loop stays as it is. */
TGT WSR_INLINE void k_steps(__m256 acc[MR_MAX][NV_MAX], const float* in, const float* wk,
                            const ptrdiff_t off[NV_MAX], int steps, int H, const int MR,
                            const int NV) {
    const float* const end = in + steps;
    if (MR * NV + NV + 1 <= 16) {
        WSR_UNROLL4
        for (; in < end; in++, wk += WSR_NR) k_step(acc, in, wk, off, H, MR, NV);
    } else {
        for (; in < end; in++, wk += WSR_NR) k_step(acc, in, wk, off, H, MR, NV);
    }
}

/* out[b0:b0+MR, c:c+8*NV] (clipped to c1); MR, NV, bwd are constants after
 * inlining.  next: the first element of the tile run() computes next (its
 * `next_rows` rows H apart, `next_cols` columns), or NULL.  Its rows of out
 * (and of h backward), which it reads first (last), are fetched into L1 near
 * the end of this tile's k loop, so that they do not stall its first (last)
 * instructions. */
TGT WSR_INLINE void tile(const wsr_step* s, int b0, int c, int c1, const float* next,
                         int next_rows, int next_cols, const int MR, const int NV,
                         const int bwd) {
    const int H = s->H;
    const float* wp[NV_MAX];
    int n[NV_MAX];
    __m256 acc[MR_MAX][NV_MAX];
    WSR_UNROLL
    for (int v = 0; v < NV; v++) {
        const int cv = c + VW * v;
        n[v] = c1 - cv;
        wp[v] = s->packed + (ptrdiff_t)(cv / WSR_NR) * H * WSR_NR + cv % WSR_NR;
    }
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        WSR_UNROLL
        for (int v = 0; v < NV; v++)
            acc[r][v] = load(s->out + (ptrdiff_t)(b0 + r) * H + c + VW * v, n[v]);
    }
    if (s->in != NULL) {
        const float* in = s->in + (ptrdiff_t)b0 * H;
        ptrdiff_t off[NV_MAX];
        WSR_UNROLL
        for (int v = 0; v < NV; v++) off[v] = wp[v] - wp[0];
        /* a short k loop (H < WSR_FETCH_MIN_H) does without: what the fetch
         * would save costs less than the fetch itself there */
        const int late = H >= WSR_FETCH_MIN_H ? H - WSR_FETCH_STEPS : H;
        k_steps(acc, in, wp[0], off, late, H, MR, NV);
        if (next != NULL && late < H) {
            const float* next_h = bwd ? s->h + (next - s->out) : NULL;
            for (int r = 0; r < next_rows; r++) {
                /* the first and last line of its columns in a row (every line
                 * for the 16 columns of 4 or more rows) */
                const float* o = next + (ptrdiff_t)r * H;
                _mm_prefetch((const char*)o, _MM_HINT_T0);
                _mm_prefetch((const char*)(o + next_cols - 1), _MM_HINT_T0);
                if (bwd) {
                    const float* h = next_h + (ptrdiff_t)r * H;
                    _mm_prefetch((const char*)h, _MM_HINT_T0);
                    _mm_prefetch((const char*)(h + next_cols - 1), _MM_HINT_T0);
                }
            }
        }
        k_steps(acc, in + late, wp[0] + (ptrdiff_t)late * WSR_NR, off, H - late, H, MR, NV);
    }
    /* the epilogue: every result first, then every store, so that no load of h
     * waits behind a store to out at the same address modulo 4 KiB */
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        const float* h = bwd ? s->h + (ptrdiff_t)(b0 + r) * H + c : NULL;
        WSR_UNROLL
        for (int v = 0; v < NV; v++) {
            __m256 x = acc[r][v];
            if (!bwd) {
                if (s->relu)
                    x = _mm256_and_ps(x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
                else
                    x = tanh8(x);
            } else {
                const __m256 hv = load(h + VW * v, n[v]);
                if (s->relu)
                    /* forward: h = max(0, a)  ->  da = [h > 0] dh */
                    x = _mm256_and_ps(x, _mm256_cmp_ps(hv, _mm256_setzero_ps(), _CMP_GT_OQ));
                else
                    /* forward: h = tanh(a)  ->  da = (1 - h*h) dh */
                    x = _mm256_mul_ps(x, _mm256_fnmadd_ps(hv, hv, _mm256_set1_ps(1.0f)));
            }
            acc[r][v] = x;
        }
    }
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        float* o = s->out + (ptrdiff_t)(b0 + r) * H + c;
        WSR_UNROLL
        for (int v = 0; v < NV; v++) store(o + VW * v, n[v], acc[r][v]);
    }
}

typedef void (*tile_fn)(const wsr_step*, int, int, int, const float*, int, int);

#define DEF(MR, NV)                                                                    \
    TGT static void fwd_##MR##_##NV(const wsr_step* s, int b0, int c, int c1,          \
                                    const float* next, int rows, int cols) {           \
        tile(s, b0, c, c1, next, rows, cols, MR, NV, 0);                               \
    }                                                                                  \
    TGT static void bwd_##MR##_##NV(const wsr_step* s, int b0, int c, int c1,          \
                                    const float* next, int rows, int cols) {           \
        tile(s, b0, c, c1, next, rows, cols, MR, NV, 1);                               \
    }
#define DEF2(MR) DEF(MR, 1) DEF(MR, 2)
#define DEF4(MR) DEF2(MR) DEF(MR, 3) DEF(MR, 4)
#define DEF8(MR) DEF4(MR) DEF(MR, 5) DEF(MR, 6) DEF(MR, 7) DEF(MR, 8)
DEF8(1) DEF4(2) DEF4(3) DEF2(4) DEF2(5) DEF2(6)

#define ROW2(d, MR) {0, d##_##MR##_1, d##_##MR##_2, 0, 0, 0, 0, 0, 0}
#define ROW4(d, MR) {0, d##_##MR##_1, d##_##MR##_2, d##_##MR##_3, d##_##MR##_4, 0, 0, 0, 0}
#define ROW8(d, MR)                                                                     \
    {0, d##_##MR##_1, d##_##MR##_2, d##_##MR##_3, d##_##MR##_4, d##_##MR##_5,            \
     d##_##MR##_6, d##_##MR##_7, d##_##MR##_8}
#define TABLE(d)                                                                        \
    {{0}, ROW8(d, 1), ROW4(d, 2), ROW4(d, 3), ROW2(d, 4), ROW2(d, 5), ROW2(d, 6)}
/* [mr][nv]; NULL where not instantiated */
static const tile_fn fwd_tab[MR_MAX + 1][NV_MAX + 1] = TABLE(fwd);
static const tile_fn bwd_tab[MR_MAX + 1][NV_MAX + 1] = TABLE(bwd);

static void run(const wsr_step* s, int c0, int c1, const tile_fn tab[MR_MAX + 1][NV_MAX + 1]) {
    const int B = s->B, H = s->H;
    const int mr0 = B < MR_MAX ? B : MR_MAX;
    /* vectors per tile: enough independent accumulators for the first rows */
    const int nv0 = mr0 >= 4 ? 2 : mr0 >= 2 ? 4 : 8;
    /* ceil(B / mr0) blocks of rows, as even as they can be: 64 rows are 9
     * blocks of 6 and 2 of 5, not 10 of 6 and one of 4, whose 8 accumulators
     * would barely cover the FMA latency (16 are 6 + 5 + 5, 7 are 4 + 3) */
    const int nb = (B + mr0 - 1) / mr0, base = B / nb, big = B % nb; /* rows: base + 1 x big */
    for (int c = c0; c < c1; c += VW * nv0) {
        const int left = (c1 - c + VW - 1) / VW;
        const int nv = left < nv0 ? left : nv0;
        const int cols = c1 - c < VW * nv ? c1 - c : VW * nv;
        const int c_next = c + VW * nv0; /* the next column strip, if any */
        int b0 = 0;
        for (int i = 0; i < nb; i++) {
            const int mr = base + (i < big);
            /* the next tile: the next block of rows, or the next strip's first */
            const float* next = NULL;
            int next_rows = 0, next_cols = cols;
            if (i + 1 < nb) {
                next = s->out + (ptrdiff_t)(b0 + mr) * H + c;
                next_rows = base + (i + 1 < big);
            } else if (c_next < c1) {
                next = s->out + c_next;
                next_rows = base + (0 < big);
                next_cols = c1 - c_next < VW * nv0 ? c1 - c_next : VW * nv0;
            }
            tab[mr][nv](s, b0, c, c1, next, next_rows, next_cols);
            b0 += mr;
        }
    }
}

/* dst[b*ldd + a] = src[a*lds + b] for a, b < 8: eight rows in, eight out */
TGT WSR_INLINE void transpose8(const float* src, ptrdiff_t lds, float* dst, ptrdiff_t ldd) {
    __m256 r[8], t[8];
    WSR_UNROLL
    for (int a = 0; a < 8; a++) r[a] = _mm256_loadu_ps(src + a * lds);
    /* pairs of rows interleaved, then pairs of pairs, then the 128-bit halves */
    WSR_UNROLL
    for (int a = 0; a < 8; a += 2) {
        t[a] = _mm256_unpacklo_ps(r[a], r[a + 1]);
        t[a + 1] = _mm256_unpackhi_ps(r[a], r[a + 1]);
    }
    WSR_UNROLL
    for (int a = 0; a < 8; a += 4) {
        r[a] = _mm256_shuffle_ps(t[a], t[a + 2], 0x44);
        r[a + 1] = _mm256_shuffle_ps(t[a], t[a + 2], 0xEE);
        r[a + 2] = _mm256_shuffle_ps(t[a + 1], t[a + 3], 0x44);
        r[a + 3] = _mm256_shuffle_ps(t[a + 1], t[a + 3], 0xEE);
    }
    WSR_UNROLL
    for (int b = 0; b < 4; b++) {
        _mm256_storeu_ps(dst + b * ldd, _mm256_permute2f128_ps(r[b], r[b + 4], 0x20));
        _mm256_storeu_ps(dst + (b + 4) * ldd, _mm256_permute2f128_ps(r[b], r[b + 4], 0x31));
    }
}

/* A whole panel: 16 rows of W at a time, all kn of their columns, in 8 x 8
 * blocks.  Sixteen rows are read side by side (32 outran the hardware
 * prefetcher: 1.1-1.4x the time with W in memory), and every store fills a
 * whole line of the panel (two 32-byte halves of one 64-byte line). */
TGT void rnn_ext_wsr_transpose_avx2(const float* src, ptrdiff_t lds, int kn, float* dst) {
    for (int j = 0; j < WSR_NR; j += 16)
        for (int k = 0; k < kn; k += 8) {
            transpose8(src + j * lds + k, lds, dst + k * WSR_NR + j, WSR_NR);
            transpose8(src + (j + 8) * lds + k, lds, dst + k * WSR_NR + j + 8, WSR_NR);
        }
}

static void forward(const wsr_step* s, int c0, int c1) { run(s, c0, c1, fwd_tab); }
static void backward(const wsr_step* s, int c0, int c1) { run(s, c0, c1, bwd_tab); }

/* ------------------------------------------------------------------------
 * The tiles of a weight gradient C = A.T @ B (src/wsr.c runs the loops around
 * them; src/wsr_internal.h, wsr_tn_tile_fn): up to 6 rows of C by half a
 * panel, 16 columns, in 12 accumulators (the Haswell shape); per k, two loads
 * of the packed panel and MR broadcasts of A's row k, read in place. */
TGT WSR_INLINE void tn_k(__m256 acc[MR_MAX][2], const float* A, ptrdiff_t lda, const float* Bp,
                         int k0, int k1, const int MR) {
    for (int k = k0; k < k1; k++) {
        const float* a = A + k * lda;
        _mm_prefetch((const char*)(a + WSR_TN_FETCH_A * lda), _MM_HINT_T0);
        const __m256 w0 = _mm256_loadu_ps(Bp + (ptrdiff_t)k * WSR_NR);
        const __m256 w1 = _mm256_loadu_ps(Bp + (ptrdiff_t)k * WSR_NR + VW);
        WSR_UNROLL
        for (int r = 0; r < MR; r++) {
            const __m256 ar = _mm256_broadcast_ss(a + r);
            acc[r][0] = _mm256_fmadd_ps(ar, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(ar, w1, acc[r][1]);
        }
    }
}

TGT WSR_INLINE void tn_tile(const float* A, ptrdiff_t lda, const float* Bp, int kc, float* C,
                            ptrdiff_t ldc, int cols, int first, const float* next,
                            int next_rows, const int MR) {
    __m256 acc[MR_MAX][2];
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        WSR_UNROLL
        for (int v = 0; v < 2; v++)
            acc[r][v] = first ? _mm256_setzero_ps() : load(C + r * ldc + VW * v, cols - VW * v);
    }
    tn_k(acc, A, lda, Bp, 0, kc / 2, MR);
    /* halfway, the next tile's rows of C into L1 (see the AVX-512 tiles) */
    if (next != NULL)
        for (int r = 0; r < next_rows; r++) _mm_prefetch((const char*)(next + r * ldc), _MM_HINT_T0);
    tn_k(acc, A, lda, Bp, kc / 2, kc, MR);
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        WSR_UNROLL
        for (int v = 0; v < 2; v++)
            if (cols > VW * v) store(C + r * ldc + VW * v, cols - VW * v, acc[r][v]);
    }
}

TGT static void tn_pack(const float* B, ptrdiff_t ldb, int kc, int cols, float* Bp) {
    for (int k = 0; k < kc; k++) {
        const float* b = B + k * ldb;
        WSR_UNROLL
        for (int v = 0; v < WSR_NR / VW; v++)
            _mm256_storeu_ps(Bp + k * WSR_NR + VW * v,
                             cols >= VW * (v + 1) ? _mm256_loadu_ps(b + VW * v)
                                                  : _mm256_maskload_ps(b + VW * v, lanes(cols - VW * v)));
    }
}

#define TN_DEF(MR)                                                                           \
    TGT static void tn_##MR(const float* A, ptrdiff_t lda, const float* Bp, int kc, float* C, \
                            ptrdiff_t ldc, int cols, int first, const float* next,           \
                            int next_rows) {                                                 \
        tn_tile(A, lda, Bp, kc, C, ldc, cols, first, next, next_rows, MR);                   \
    }
TN_DEF(1) TN_DEF(2) TN_DEF(3) TN_DEF(4) TN_DEF(5) TN_DEF(6)
static const wsr_tn_tiles tn_tiles = {MR_MAX, 2 * VW, tn_pack, {0, tn_1, tn_2, tn_3, tn_4, tn_5, tn_6}};

const wsr_kernels rnn_ext_wsr_avx2 = {"avx2", forward, backward, rnn_ext_wsr_transpose_avx2,
                                      &tn_tiles};

#else
typedef int rnn_ext_wsr_avx2_unused; /* not an x86-64 build: an empty unit */
#endif
