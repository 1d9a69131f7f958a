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
 * -ffp-contract=off: no multiply-add is fused, so every clone rounds each
 * operation the same way and results are bit-identical whichever clone runs.
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

#define real float
#define INT int32_t
#define SQRT sqrtf
#define FLAT(name) rnn_ext_##name##_f
#include "_flat_loops.h"
#undef real
#undef INT
#undef SQRT
#undef FLAT

#define real double
#define INT int64_t
#define SQRT sqrt
#define FLAT(name) rnn_ext_##name##_d
#include "_flat_loops.h"
#undef real
#undef INT
#undef SQRT
#undef FLAT

#endif
