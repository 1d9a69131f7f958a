/* The AVX-512F micro-kernel of the weight-stationary recurrence.
 *
 * A tile is MR batch rows by NV vectors of 16 output columns, held in
 * MR*NV zmm accumulators for the whole k loop: per k, NV loads of the
 * packed panel row and MR broadcasts of the input, MR*NV fused multiply-adds.
 * MR is up to 8; NV is 2 (one panel) for 5 or more rows and grows for fewer
 * rows (4 for 3-4, 8 for 1-2) so that there are always enough independent
 * accumulators to hide the FMA latency.  Columns past H in the last panel
 * are masked off.  Each tile fetches the rows of out that the next one reads
 * into L1 while it computes, as the AVX2 kernel does, and backward its own
 * rows of h shortly before its epilogue reads them.  Layout and invariant:
 * src/wsr_internal.h.
 *
 * Compiled for AVX-512F by a per-function target attribute (GCC, Clang) and
 * called only when the CPU and OS support it (src/wsr.c); MSVC needs none. */
#include "wsr_internal.h"

#if WSR_X86_64
#include <immintrin.h>

#define TGT WSR_TARGET("avx512f")
#define MR_MAX 8
#define NV_MAX 8
#define VW 16
/* the smallest H whose W (H*H floats, 3 MiB at 900) is fetched ahead panel by panel */
#define WSR_PREFETCH_MIN_H 900
/* k steps before the end of a tile at which it fetches the next tile's rows,
 * in tiles of at least WSR_FETCH_MIN_H steps; backward, also its own rows of
 * h, which its epilogue reads.  The next tile's rows of h, fetched with its
 * rows of out, were mostly gone from L1 again by that tile's epilogue, and
 * a tile's own rows fetched 128 steps ahead gained about 1 %; 40 steps
 * ahead, the backward at H = 256 and 512 ran 1.02-1.06x as fast (Zen 4) */
#define WSR_FETCH_STEPS 128
#define WSR_FETCH_STEPS_BWD 40
#define WSR_FETCH_MIN_H 256

/* lanes 0 .. n-1 set (n clamped to 0 .. 16) */
WSR_INLINE __mmask16 lanes16(int n) {
    return n >= VW ? (__mmask16)0xFFFF : (__mmask16)((1u << (n > 0 ? n : 0)) - 1u);
}

TGT WSR_INLINE __m512 tanh16(__m512 a) {
    const __m512 cl = _mm512_set1_ps(WSR_TANH_CLAMP);
    /* min/max return their second operand when either is NaN: a NaN passes */
    __m512 x = _mm512_min_ps(cl, a);
    x = _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), cl), x);
    const __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(WSR_TANH_P0), _mm512_set1_ps(WSR_TANH_P1));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(WSR_TANH_P2));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(WSR_TANH_P3));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(WSR_TANH_P4));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(WSR_TANH_P5));
    p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(WSR_TANH_P6));
    p = _mm512_mul_ps(x, p);
    __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(WSR_TANH_Q0), _mm512_set1_ps(WSR_TANH_Q1));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(WSR_TANH_Q2));
    q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(WSR_TANH_Q3));
    const __m512 r = _mm512_div_ps(p, q);
    const __mmask16 small =
        _mm512_cmp_ps_mask(_mm512_abs_ps(a), _mm512_set1_ps(WSR_TANH_SMALL), _CMP_LT_OQ);
    const __mmask16 big =
        _mm512_cmp_ps_mask(_mm512_abs_ps(a), _mm512_set1_ps(WSR_TANH_ONE), _CMP_GE_OQ);
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32((int)0x80000000u));
    const __m512 one = _mm512_castsi512_ps(
        _mm512_or_si512(sign, _mm512_castps_si512(_mm512_set1_ps(1.0f))));
    return _mm512_mask_mov_ps(_mm512_mask_mov_ps(r, small, a), big, one);
}

/* acc[r][v] += in[r*H + k] * wp[v][k*WSR_NR] for k = k0 .. k1-1, ascending,
 * one fused multiply-add per element and step; with PF, the next panel's row
 * k (pf: two 64-byte lines) is fetched into L2 on the way.  Not unrolled: on
 * AMD Zen 4 four times measured 0.98-1.02x the speed at B = 16-64, H = 256
 * and 1024 (one thread), where the AVX2 kernel gained up to 14 % on Zen 3. */
TGT WSR_INLINE void k_loop(__m512 acc[MR_MAX][NV_MAX], const float* in, const float* const* wp,
                           const float* pf, int k0, int k1, int H, const int MR, const int NV,
                           const int PF) {
    for (int k = k0; k < k1; k++) {
        __m512 w[NV_MAX];
        if (PF) {
            _mm_prefetch((const char*)(pf + (ptrdiff_t)k * WSR_NR), _MM_HINT_T1);
            _mm_prefetch((const char*)(pf + (ptrdiff_t)k * WSR_NR + VW), _MM_HINT_T1);
        }
        WSR_UNROLL
        for (int v = 0; v < NV; v++) w[v] = _mm512_loadu_ps(wp[v] + (ptrdiff_t)k * WSR_NR);
        WSR_UNROLL
        for (int r = 0; r < MR; r++) {
            const __m512 a = _mm512_set1_ps(in[(ptrdiff_t)r * H + k]);
            WSR_UNROLL
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, w[v], acc[r][v]);
        }
    }
}

/* k_loop with the panel fetch when there is a panel to fetch (pf not NULL):
 * the test is made once, and each branch is k_loop with PF a constant */
TGT WSR_INLINE void k_loop_fetching(__m512 acc[MR_MAX][NV_MAX], const float* in,
                                    const float* const* wp, const float* pf, int k0, int k1,
                                    int H, const int MR, const int NV) {
    if (pf != NULL)
        k_loop(acc, in, wp, pf, k0, k1, H, MR, NV, 1);
    else
        k_loop(acc, in, wp, pf, k0, k1, H, MR, NV, 0);
}

/* out[b0:b0+MR, c:c+16*NV] (masked to c1); MR, NV, bwd are constants after
 * inlining.  pf: the panel to fetch into L2 meanwhile (the next one this
 * call reads, when W is larger than L2), or NULL.  next: the first element
 * of the tile run() computes next (its `next_rows` rows H apart, `next_cols`
 * columns), or NULL; its rows of out are fetched into L1 near the end of this
 * tile's k loop, so that they do not stall its first instructions, and with
 * them (backward) this tile's rows of h, for its epilogue.  A tile with no
 * next tile (the last of a call) fetches neither. */
TGT WSR_INLINE void tile(const wsr_step* s, int b0, int c, int c1, const float* pf,
                         const float* next, int next_rows, int next_cols, const int MR,
                         const int NV, const int bwd) {
    const int H = s->H;
    const float* wp[NV_MAX];
    __mmask16 m[NV_MAX];
    __m512 acc[MR_MAX][NV_MAX];
    WSR_UNROLL
    for (int v = 0; v < NV; v++) {
        const int cv = c + VW * v;
        const int n = c1 - cv;
        m[v] = lanes16(n);
        wp[v] = s->packed + (ptrdiff_t)(cv / WSR_NR) * H * WSR_NR + cv % WSR_NR;
    }
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        WSR_UNROLL
        for (int v = 0; v < NV; v++)
            acc[r][v] = _mm512_maskz_loadu_ps(m[v], s->out + (ptrdiff_t)(b0 + r) * H + c + VW * v);
    }
    if (s->in != NULL) {
        const float* in = s->in + (ptrdiff_t)b0 * H;
        /* a short k loop (H < WSR_FETCH_MIN_H) does without the fetch of
         * the next tile: what it would save costs less than the fetch.  So
         * do the tiles of 1-4 rows (NV > 2): with the fetch's second loop
         * their W vectors no longer stayed in registers (GCC 12: every FMA
         * loaded its own; B = 2, H = 128 took 1.1-1.2x the time) */
        const int late = NV <= 2 && H >= WSR_FETCH_MIN_H && next != NULL
                             ? H - (bwd ? WSR_FETCH_STEPS_BWD : WSR_FETCH_STEPS)
                             : H;
        k_loop_fetching(acc, in, wp, pf, 0, late, H, MR, NV);
        /* NV <= 2, a constant, keeps the second loop out of the other tiles */
        if (NV <= 2 && late < H) {
            if (bwd) {
                /* this tile's own rows of h: its epilogue reads them next */
                const int cols = c1 - c < VW * NV ? c1 - c : VW * NV;
                for (int r = 0; r < MR; r++) {
                    const float* h = s->h + (ptrdiff_t)(b0 + r) * H + c;
                    _mm_prefetch((const char*)h, _MM_HINT_T0);
                    _mm_prefetch((const char*)(h + cols - 1), _MM_HINT_T0);
                }
            }
            for (int r = 0; r < next_rows; r++) {
                /* the first and last line of its columns in a row */
                const float* o = next + (ptrdiff_t)r * H;
                _mm_prefetch((const char*)o, _MM_HINT_T0);
                _mm_prefetch((const char*)(o + next_cols - 1), _MM_HINT_T0);
            }
            k_loop_fetching(acc, in, wp, pf, late, H, H, MR, NV);
        }
    }
    /* the epilogue: every result first, then every store, so that no load of h
     * waits behind a store to out at the same address modulo 4 KiB */
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        const float* h = bwd ? s->h + (ptrdiff_t)(b0 + r) * H + c : NULL;
        WSR_UNROLL
        for (int v = 0; v < NV; v++) {
            __m512 x = acc[r][v];
            if (!bwd) {
                if (s->relu)
                    x = _mm512_maskz_mov_ps(
                        _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), x);
                else
                    x = tanh16(x);
            } else {
                const __m512 hv = _mm512_maskz_loadu_ps(m[v], h + VW * v);
                if (s->relu)
                    /* forward: h = max(0, a)  ->  da = [h > 0] dh */
                    x = _mm512_maskz_mov_ps(
                        _mm512_cmp_ps_mask(hv, _mm512_setzero_ps(), _CMP_GT_OQ), x);
                else
                    /* forward: h = tanh(a)  ->  da = (1 - h*h) dh */
                    x = _mm512_mul_ps(x, _mm512_fnmadd_ps(hv, hv, _mm512_set1_ps(1.0f)));
            }
            acc[r][v] = x;
        }
    }
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        float* o = s->out + (ptrdiff_t)(b0 + r) * H + c;
        WSR_UNROLL
        for (int v = 0; v < NV; v++) _mm512_mask_storeu_ps(o + VW * v, m[v], acc[r][v]);
    }
}

typedef void (*tile_fn)(const wsr_step*, int, int, int, const float*, const float*, int, int);

#define DEF(MR, NV)                                                                    \
    TGT static void fwd_##MR##_##NV(const wsr_step* s, int b0, int c, int c1,          \
                                    const float* pf, const float* next, int rows,      \
                                    int cols) {                                        \
        tile(s, b0, c, c1, pf, next, rows, cols, MR, NV, 0);                           \
    }                                                                                  \
    TGT static void bwd_##MR##_##NV(const wsr_step* s, int b0, int c, int c1,          \
                                    const float* pf, const float* next, int rows,      \
                                    int cols) {                                        \
        tile(s, b0, c, c1, pf, next, rows, cols, MR, NV, 1);                           \
    }
#define DEF2(MR) DEF(MR, 1) DEF(MR, 2)
#define DEF4(MR) DEF2(MR) DEF(MR, 3) DEF(MR, 4)
#define DEF8(MR) DEF4(MR) DEF(MR, 5) DEF(MR, 6) DEF(MR, 7) DEF(MR, 8)
DEF8(1) DEF8(2) DEF4(3) DEF4(4) DEF2(5) DEF2(6) DEF2(7) DEF2(8)

#define ROW2(d, MR) {0, d##_##MR##_1, d##_##MR##_2, 0, 0, 0, 0, 0, 0}
#define ROW4(d, MR) {0, d##_##MR##_1, d##_##MR##_2, d##_##MR##_3, d##_##MR##_4, 0, 0, 0, 0}
#define ROW8(d, MR)                                                                     \
    {0, d##_##MR##_1, d##_##MR##_2, d##_##MR##_3, d##_##MR##_4, d##_##MR##_5,            \
     d##_##MR##_6, d##_##MR##_7, d##_##MR##_8}
#define TABLE(d)                                                                        \
    {{0}, ROW8(d, 1), ROW8(d, 2), ROW4(d, 3), ROW4(d, 4), ROW2(d, 5), ROW2(d, 6),        \
     ROW2(d, 7), ROW2(d, 8)}
/* [mr][nv]; NULL where not instantiated */
static const tile_fn fwd_tab[MR_MAX + 1][NV_MAX + 1] = TABLE(fwd);
static const tile_fn bwd_tab[MR_MAX + 1][NV_MAX + 1] = TABLE(bwd);

static void run(const wsr_step* s, int c0, int c1, const tile_fn tab[MR_MAX + 1][NV_MAX + 1]) {
    const int B = s->B, H = s->H;
    const int mr0 = B < MR_MAX ? B : MR_MAX;
    /* vectors per tile: enough independent accumulators for the first rows */
    const int nv0 = mr0 >= 5 ? 2 : mr0 >= 3 ? 4 : 8;
    /* ceil(B / mr0) blocks of rows, as even as they can be: 33 rows are
     * 7 + 7 + 7 + 6 + 6, not 8 + 8 + 8 + 8 + 1 */
    const int nb = (B + mr0 - 1) / mr0, base = B / nb, big = B % nb; /* rows: base + 1 x big */
    /* W larger than L2 streams from L3: the last row block of each panel
     * fetches the next panel this call reads into L2, so that the panel's
     * first block finds it there and the L3 traffic spreads over all blocks */
    const int fetch = H >= WSR_PREFETCH_MIN_H && s->in != NULL && nv0 == WSR_NR / VW;
    for (int c = c0; c < c1; c += VW * nv0) {
        const int left = (c1 - c + VW - 1) / VW;
        const int nv = left < nv0 ? left : nv0;
        const int cols = c1 - c < VW * nv ? c1 - c : VW * nv;
        const int c_next = c + VW * nv0; /* the next column strip, if any */
        const float* pf = fetch && c + WSR_NR < c1
                              ? s->packed + (ptrdiff_t)((c + WSR_NR) / WSR_NR) * H * WSR_NR
                              : NULL;
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
            tab[mr][nv](s, b0, c, c1, i + 1 == nb ? pf : NULL, next, next_rows, next_cols);
            b0 += mr;
        }
    }
}

static void forward(const wsr_step* s, int c0, int c1) { run(s, c0, c1, fwd_tab); }
static void backward(const wsr_step* s, int c0, int c1) { run(s, c0, c1, bwd_tab); }

/* ------------------------------------------------------------------------
 * The tiles of a weight gradient C = A.T @ B (src/wsr.c runs the loops around
 * them; src/wsr_internal.h, wsr_tn_tile_fn): up to 8 rows of C by one panel
 * of 32 columns in 16 accumulators; per k, two loads of the packed panel and
 * MR broadcasts of A's row k, read in place. */
TGT WSR_INLINE void tn_k(__m512 acc[MR_MAX][2], const float* A, ptrdiff_t lda, const float* Bp,
                         int k0, int k1, const int MR) {
    for (int k = k0; k < k1; k++) {
        const float* a = A + k * lda;
        /* A's row k + WSR_TN_FETCH_A into L1 (src/wsr_internal.h) */
        _mm_prefetch((const char*)(a + WSR_TN_FETCH_A * lda), _MM_HINT_T0);
        const __m512 w0 = _mm512_loadu_ps(Bp + (ptrdiff_t)k * WSR_NR);
        const __m512 w1 = _mm512_loadu_ps(Bp + (ptrdiff_t)k * WSR_NR + VW);
        WSR_UNROLL
        for (int r = 0; r < MR; r++) {
            const __m512 ar = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(ar, w0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(ar, w1, acc[r][1]);
        }
    }
}

/* ... and halfway, the next tile's rows of C (next: its first row, or NULL) into L1:
 * a tile's first instructions wait for its C, which is often no longer in L2 */
TGT WSR_INLINE void tn_tile(const float* A, ptrdiff_t lda, const float* Bp, int kc, float* C,
                            ptrdiff_t ldc, int cols, int first, const float* next,
                            int next_rows, const int MR) {
    __m512 acc[MR_MAX][2];
    __mmask16 m[2];
    WSR_UNROLL
    for (int v = 0; v < 2; v++) {
        const int n = cols - VW * v;
        m[v] = lanes16(n);
    }
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        WSR_UNROLL
        for (int v = 0; v < 2; v++)
            acc[r][v] = first ? _mm512_setzero_ps()
                              : _mm512_maskz_loadu_ps(m[v], C + r * ldc + VW * v);
    }
    tn_k(acc, A, lda, Bp, 0, kc / 2, MR);
    if (next != NULL)
        for (int r = 0; r < next_rows; r++) {
            _mm_prefetch((const char*)(next + r * ldc), _MM_HINT_T0);
            _mm_prefetch((const char*)(next + r * ldc + VW), _MM_HINT_T0);
        }
    tn_k(acc, A, lda, Bp, kc / 2, kc, MR);
    WSR_UNROLL
    for (int r = 0; r < MR; r++) {
        WSR_UNROLL
        for (int v = 0; v < 2; v++) _mm512_mask_storeu_ps(C + r * ldc + VW * v, m[v], acc[r][v]);
    }
}

TGT static void tn_pack(const float* B, ptrdiff_t ldb, int kc, int cols, float* Bp) {
    const __mmask16 m0 = lanes16(cols), m1 = lanes16(cols - VW);
    for (int k = 0; k < kc; k++) {
        const float* b = B + k * ldb;
        _mm512_storeu_ps(Bp + k * WSR_NR, _mm512_maskz_loadu_ps(m0, b));
        _mm512_storeu_ps(Bp + k * WSR_NR + VW, _mm512_maskz_loadu_ps(m1, b + VW));
    }
}

#define TN_DEF(MR)                                                                           \
    TGT static void tn_##MR(const float* A, ptrdiff_t lda, const float* Bp, int kc, float* C, \
                            ptrdiff_t ldc, int cols, int first, const float* next,           \
                            int next_rows) {                                                 \
        tn_tile(A, lda, Bp, kc, C, ldc, cols, first, next, next_rows, MR);                   \
    }
TN_DEF(1) TN_DEF(2) TN_DEF(3) TN_DEF(4) TN_DEF(5) TN_DEF(6) TN_DEF(7) TN_DEF(8)
static const wsr_tn_tiles tn_tiles = {MR_MAX, WSR_NR, tn_pack,
                                      {0, tn_1, tn_2, tn_3, tn_4, tn_5, tn_6, tn_7, tn_8}};

const wsr_kernels rnn_ext_wsr_avx512 = {"avx512", forward, backward, rnn_ext_wsr_transpose_avx2,
                                        &tn_tiles};

#else
typedef int rnn_ext_wsr_avx512_unused; /* not an x86-64 build: an empty unit */
#endif
