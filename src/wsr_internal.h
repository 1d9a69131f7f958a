/* Internal interface between src/wsr.c (dispatch, packing, threads) and the
 * per-instruction-set micro-kernels src/wsr_portable.c, wsr_avx2.c,
 * wsr_avx512.c and wsr_neon.c.  Not part of the public interface (wsr.h).
 *
 * Packed layout (the same for every path): W's output columns in panels of
 * WSR_NR = 32, zero-padded past H.  Panel p holds, for k = 0 .. H-1, the row
 * of 32 weights that multiply input element k:
 *     packed[(p*H + k)*32 + j] = Wf[k, p*32 + j]
 * where Wf = W.T (forward: a_t += h_{t-1} @ W.T) or Wf = W (backward:
 * d += d_next @ W), and 0 where p*32 + j >= H.
 *
 * Every kernel computes each output element as ONE chain
 *     acc = out[b, j];  for k = 0 .. H-1: acc = fma(in[b, k], Wf[k, j], acc)
 * (the portable path: acc += in * Wf, fused or not as the compiler targets)
 * followed by the elementwise epilogue, whatever tile the element falls in.
 * That invariant is what makes results independent of the thread count
 * (threads only change which columns a call covers); keep it.
 */
#ifndef RNN_EXT_WSR_INTERNAL_H
#define RNN_EXT_WSR_INTERNAL_H

#include <stddef.h>
#include <string.h>

#define WSR_NR 32

/* instruction sets this compiler and target can build */
#if defined(__x86_64__) || defined(_M_X64) || defined(_M_AMD64)
#define WSR_X86_64 1
#else
#define WSR_X86_64 0
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define WSR_AARCH64 1
#else
#define WSR_AARCH64 0
#endif

#if defined(_MSC_VER) && !defined(__clang__)
/* MSVC accepts every intrinsic in every function; no target attribute */
#define WSR_TARGET(isa)
#define WSR_STATIC_INLINE static __inline
#define WSR_INLINE static __forceinline
#define WSR_UNROLL
#define WSR_UNROLL4
#define WSR_RESTRICT __restrict
#else
#define WSR_TARGET(isa) __attribute__((target(isa)))
#define WSR_STATIC_INLINE static inline
#define WSR_INLINE static inline __attribute__((always_inline))
#if defined(__clang__)
#define WSR_UNROLL _Pragma("clang loop unroll(full)")
#define WSR_UNROLL4 _Pragma("clang loop unroll_count(4)")
#else
#define WSR_UNROLL _Pragma("GCC unroll 16")
#define WSR_UNROLL4 _Pragma("GCC unroll 4")
#endif
#define WSR_RESTRICT __restrict__
#endif

/* One time step's product and epilogue, as seen by a kernel. */
typedef struct wsr_step {
    /* the packed panels (layout above) */
    const float* packed;
    /* (B, H): the rows multiplied by the panels (h_{t-1} forward, delta
     * of the neighbouring step backward); NULL: no product (acc = out) */
    const float* in;
    /* (B, H): A[t] (forward) or the upstream gradient (backward) on entry,
     * the step's result on exit */
    float* out;
    /* (B, H): backward only, h_t for f'(h_t); NULL forward */
    const float* h;
    int B, H, relu;
} wsr_step;

/* Compute out[:, c0:c1] for one step; c0 is a multiple of WSR_NR, c1 <= H.
 * Writes nothing outside those columns. */
typedef void (*wsr_kernel_fn)(const wsr_step* s, int c0, int c1);

/* dst[k*WSR_NR + j] = src[j*lds + k] for j < WSR_NR, k < kn (a multiple of
 * 8): a whole panel of the forward layout but its last H % 8 rows (src/wsr.c:
 * pack_panels) */
typedef void (*wsr_transpose_fn)(const float* src, ptrdiff_t lds, int kn, float* dst);

/* One tile of a weight gradient C = A.T @ B (wsr.h: rnn_ext_wsr_gemm_tn, whose
 * loops are src/wsr.c's): for r < MR (the tile's rows) and c < cols,
 *     C[r*ldc + c] = (first ? 0 : C[r*ldc + c]) + sum_{k < kc} A[k*lda + r] * Bp[k*WSR_NR + c]
 * one fused multiply-add per k, ascending; Bp is a packed panel of B (rows
 * WSR_NR floats apart, zero past the matrix), offset to the tile's first
 * column.  next: the first element of the tile that runs next (next_rows
 * rows ldc apart, the same columns), fetched into L1 meanwhile, or NULL. */
typedef void (*wsr_tn_tile_fn)(const float* A, ptrdiff_t lda, const float* Bp, int kc, float* C,
                               ptrdiff_t ldc, int cols, int first, const float* next,
                               int next_rows);

#define WSR_TN_MR_MAX 8
/* rows ahead at which a tile fetches its elements of A into L1 (rows of A
 * lie a multiple of 2 KiB apart, in a few sets of L1): at M = N = 512, K =
 * 3200, 3-6 rows ahead ran at 122-127 GFLOP/s against 114-118 without, 16
 * ahead 116-120 (AVX-512 tiles, Intel Xeon, one thread) */
#define WSR_TN_FETCH_A 4

/* Bp[k*WSR_NR + c] = B[k*ldb + c] for k < kc, c < cols, and 0 for cols <= c < WSR_NR */
typedef void (*wsr_tn_pack_fn)(const float* B, ptrdiff_t ldb, int kc, int cols, float* Bp);

typedef struct wsr_tn_tiles {
    int mr_max;  /* tiles of 1 .. mr_max rows */
    int strip;   /* columns a tile covers: WSR_NR or half of it */
    wsr_tn_pack_fn pack;  /* a panel's copy in the path's vectors */
    wsr_tn_tile_fn tile[WSR_TN_MR_MAX + 1];  /* tile[mr] */
} wsr_tn_tiles;

typedef struct wsr_kernels {
    const char* name;
    wsr_kernel_fn forward;   /* out = f(out + in @ Wf) */
    wsr_kernel_fn backward;  /* out = (out + in @ Wf) * f'(h) */
    wsr_transpose_fn transpose; /* or NULL: pack_panels' scalar loop */
    const wsr_tn_tiles* tn;  /* weight-gradient tiles, or NULL: the caller's BLAS */
} wsr_kernels;

/* 1 when this build has the path `name` and the CPU can run it, else 0
 * (for tests: no side effect on the path in use) */
int rnn_ext_wsr_supported(const char* name);

extern const wsr_kernels rnn_ext_wsr_portable;
#if WSR_X86_64
extern const wsr_kernels rnn_ext_wsr_avx2;
extern const wsr_kernels rnn_ext_wsr_avx512;
/* src/wsr_avx2.c's, which the AVX-512 path shares (its CPUs have AVX2) */
void rnn_ext_wsr_transpose_avx2(const float* src, ptrdiff_t lds, int kn, float* dst);
#endif
#if WSR_AARCH64
extern const wsr_kernels rnn_ext_wsr_neon;
#endif

/* The float32 tanh of src/_fastmath.h (rnn_ext_tanhf1), restated here so the
 * library stands alone: an odd rational approximation of degree 13/6 on x
 * clamped to +-7.905 (beyond it tanh rounds to +-1 in float32), x itself
 * below |x| < 4e-4; a few ulp of error.  Every SIMD path evaluates the same
 * formula, with the same constants, in the same order (with fused
 * multiply-adds).  A NaN argument gives NaN. */
#define WSR_TANH_CLAMP 7.90531110763549805f
#define WSR_TANH_SMALL 4e-4f
/* from here on tanh rounds to +-1 in float32: the result is exactly that */
#define WSR_TANH_ONE 9.0f
#define WSR_TANH_P0 -2.76076847742355e-16f
#define WSR_TANH_P1 2.00018790482477e-13f
#define WSR_TANH_P2 -8.60467152213735e-11f
#define WSR_TANH_P3 5.12229709037114e-08f
#define WSR_TANH_P4 1.48572235717979e-05f
#define WSR_TANH_P5 6.37261928875436e-04f
#define WSR_TANH_P6 4.89352455891786e-03f
#define WSR_TANH_Q0 1.19825839466702e-06f
#define WSR_TANH_Q1 1.18534705686654e-04f
#define WSR_TANH_Q2 2.26843463243900e-03f
#define WSR_TANH_Q3 4.89352518554385e-03f

WSR_STATIC_INLINE float wsr_tanhf(float a) {
    float x = a > WSR_TANH_CLAMP ? WSR_TANH_CLAMP : a;
    x = x < -WSR_TANH_CLAMP ? -WSR_TANH_CLAMP : x;
    const float x2 = x * x;
    float p = x2 * WSR_TANH_P0 + WSR_TANH_P1;
    p = x2 * p + WSR_TANH_P2;
    p = x2 * p + WSR_TANH_P3;
    p = x2 * p + WSR_TANH_P4;
    p = x2 * p + WSR_TANH_P5;
    p = x2 * p + WSR_TANH_P6;
    p = x * p;
    float q = x2 * WSR_TANH_Q0 + WSR_TANH_Q1;
    q = x2 * q + WSR_TANH_Q2;
    q = x2 * q + WSR_TANH_Q3;
    const float r = p / q;
    if (a >= WSR_TANH_ONE) return 1.0f;
    if (a <= -WSR_TANH_ONE) return -1.0f;
    return (a < WSR_TANH_SMALL && a > -WSR_TANH_SMALL) ? a : r;
}

/* relu as the rest of rnn_ext has it: a > 0 ? a : 0 (a NaN gives 0) */
WSR_STATIC_INLINE float wsr_reluf(float a) { return a > 0.0f ? a : 0.0f; }

#endif
