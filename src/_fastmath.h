/* Vectorisable float32 tanh and exp for rnn_ext's elementwise loops, and a
 * blocked transpose.
 *
 * glibc's tanhf costs ~20 ns an element and does not vectorise; at small
 * hidden sizes it costs more than every GEMM of the pass together.  These
 * loops use branch-free rational/polynomial approximations that GCC and Clang
 * turn into SIMD code: a few ulp of error, well inside float32's tolerance
 * (tests/test_fastmath.py bounds it).  float64 keeps libm's tanh and exp.
 *
 * Where the compiler and platform support it (GCC >= 11 or Clang >= 14, x86-64, ELF,
 * glibc's ifunc) each loop is also compiled for x86-64-v3 (AVX2, FMA) and
 * picked at load time; elsewhere it is a plain loop for the baseline
 * instruction set.  Never -march=native: a wheel must run on any CPU.
 */
#ifndef RNN_EXT_FASTMATH_H
#define RNN_EXT_FASTMATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__) && \
    (defined(__clang__) ? (__clang_major__ >= 14) : (defined(__GNUC__) && __GNUC__ >= 11)) && \
    !defined(RNN_EXT_NO_CLONES)
#define RNN_EXT_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define RNN_EXT_HAVE_CLONES 1
#else
#define RNN_EXT_CLONES
#define RNN_EXT_HAVE_CLONES 0
#endif

/* tanh(x) for float: odd rational approximation p(x)/q(x), degree 13/6, on
 * x clamped to +-7.905 (beyond it tanh rounds to +-1 in float32).  Below
 * |x| < 4e-4, tanh(x) = x to float precision. */
static inline float rnn_ext_tanhf1(float a) {
    const float clamp = 7.90531110763549805f;
    float x = a > clamp ? clamp : a;
    x = x < -clamp ? -clamp : x;
    const float x2 = x * x;
    float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = x2 * p + -8.60467152213735e-11f;
    p = x2 * p + 5.12229709037114e-08f;
    p = x2 * p + 1.48572235717979e-05f;
    p = x2 * p + 6.37261928875436e-04f;
    p = x2 * p + 4.89352455891786e-03f;
    p = x * p;
    float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = x2 * q + 2.26843463243900e-03f;
    q = x2 * q + 4.89352518554385e-03f;
    const float r = p / q;
    return (a < 4e-4f && a > -4e-4f) ? a : r;
}

/* exp(x) for float and x <= 0 (softmax's z - max z): Cephes' expf
 * polynomial after a Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2;
 * inputs below -87 give exp(-87) ~ 1.6e-38 rather than a denormal. */
static inline float rnn_ext_expf1(float x) {
    x = x < -87.0f ? -87.0f : x;
    /* n = round(x / ln2), by the float rounding of a large magic constant;
     * from a NaN-free copy, since converting NaN to int is undefined (r
     * below still carries a NaN through to the result) */
    const float xn = (x == x) ? x : 0.0f;
    const float n = (xn * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    const float z = r * r;
    float y = 1.9875691500E-4f * r + 1.3981999507E-3f;
    y = y * r + 8.3334519073E-3f;
    y = y * r + 4.1665795894E-2f;
    y = y * r + 1.6666665459E-1f;
    y = y * r + 5.0000001201E-1f;
    y = y * z + r + 1.0f;
    /* times 2^n, built in the exponent bits */
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

/* a := tanh(a) in place. */
RNN_EXT_CLONES
static void rnn_ext_tanhf_inplace(float *a, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) a[i] = rnn_ext_tanhf1(a[i]);
}

/* z := exp(z - m) in place (m = max z, so every argument is <= 0). */
RNN_EXT_CLONES
static void rnn_ext_expf_shift_inplace(float *z, ptrdiff_t n, float m) {
    for (ptrdiff_t i = 0; i < n; i++) z[i] = rnn_ext_expf1(z[i] - m);
}

/* out := A.T for a row-major (rows, cols) A, rows lda apart; out is (cols,
 * rows), rows ldo apart.  Blocks of 32 x 32, so that both sides stay in
 * cache, each written row by row (writes a power-of-two stride apart all land
 * in one cache set: 4x slower at rows = 1024).  A function of its own, never
 * inlined: inlined into a pass's large function, its inner loop kept its
 * counters on the stack (GCC 12). */
#if defined(_MSC_VER) && !defined(__clang__)
#define RNN_EXT_NOINLINE __declspec(noinline)
#else
#define RNN_EXT_NOINLINE __attribute__((noinline))
#endif
#define RNN_EXT_TRANSPOSE(name, type)                                                     \
    static RNN_EXT_NOINLINE void name(type *out, ptrdiff_t ldo, const type *A, ptrdiff_t lda, \
                                      ptrdiff_t rows, ptrdiff_t cols) {                   \
        for (ptrdiff_t i0 = 0; i0 < rows; i0 += 32) {                                     \
            const ptrdiff_t i1 = i0 + 32 < rows ? i0 + 32 : rows;                         \
            for (ptrdiff_t j0 = 0; j0 < cols; j0 += 32) {                                 \
                const ptrdiff_t j1 = j0 + 32 < cols ? j0 + 32 : cols;                     \
                for (ptrdiff_t j = j0; j < j1; j++)                                       \
                    for (ptrdiff_t i = i0; i < i1; i++) out[j * ldo + i] = A[i * lda + j]; \
            }                                                                             \
        }                                                                                 \
    }
RNN_EXT_TRANSPOSE(rnn_ext_transpose_f, float)
RNN_EXT_TRANSPOSE(rnn_ext_transpose_d, double)

#endif
