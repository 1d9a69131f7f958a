/* The loops of src/_flat.pyx: optimizer steps and clipping over flat buffers.
 *
 * Each loop is written once, in src/_flat_loops.h, and included twice below:
 * for float (suffix _f) and double (suffix _d).
 *
 * The updates are division- and square-root-bound; at H=128 a baseline (SSE2)
 * Adam loop costs as much as half a training step.  Where the compiler and
 * platform support it (the conditions of _fastmath.h) each loop is also
 * compiled for x86-64-v3 (AVX2) and x86-64-v4 (AVX-512) and the widest the
 * CPU runs is picked at load.  setup.py builds this module with
 * -ffp-contract=off: no multiply-add is fused behind the code's back, so
 * every clone rounds each operation the same way and results are
 * bit-identical whichever clone runs.  The one explicit fused multiply-add
 * (Adam's division by a constant, div_const in _flat_loops.h) gives the
 * correctly rounded quotient, the same bits as the division
 * (tests/c/div_const_check.c checks every float32 significand).
 * Never -march=native: a wheel must run on any CPU.
 */
#ifndef RNN_EXT_FLAT_H
#define RNN_EXT_FLAT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__) && \
    (defined(__clang__) ? (__clang_major__ >= 14) : (defined(__GNUC__) && __GNUC__ >= 11)) && \
    !defined(RNN_EXT_NO_CLONES)
#define RNN_EXT_FLAT_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define RNN_EXT_FLAT_HAVE_CLONES 1
#else
#define RNN_EXT_FLAT_CLONES
#define RNN_EXT_FLAT_HAVE_CLONES 0
#endif

/* Non-zero where a fused multiply-add is one instruction: then Adam divides
 * by its constant bias correction with two FMAs instead of the divider
 * (_flat_loops.h, div_const; the same bits either way).  Elsewhere fmaf would
 * be a library call, slower than the division it replaces. */
static int rnn_ext_flat_fused(void) {
#if RNN_EXT_FLAT_HAVE_CLONES
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2");
#elif defined(__aarch64__) || defined(__FP_FAST_FMAF) || defined(FP_FAST_FMAF)
    return 1;
#else
    return 0;
#endif
}

#if defined(_MSC_VER)
#define RNN_EXT_FLAT_INLINE static __forceinline
#else
#define RNN_EXT_FLAT_INLINE static inline __attribute__((always_inline))
#endif

#define real float
#define INT int32_t
#define SQRT sqrtf
#define FMA fmaf
#define FLAT(name) rnn_ext_##name##_f
#include "_flat_loops.h"
#undef real
#undef INT
#undef SQRT
#undef FMA
#undef FLAT

#define real double
#define INT int64_t
#define SQRT sqrt
#define FMA fma
#define FLAT(name) rnn_ext_##name##_d
#include "_flat_loops.h"
#undef real
#undef INT
#undef SQRT
#undef FMA
#undef FLAT

#endif
