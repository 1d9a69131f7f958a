/* The weight-stationary recurrence (public interface and its contract:
 * src/wsr.h): packing, the per-step loops of the forward and backward
 * recurrences, the choice of instruction-set path, and the persistent thread
 * pool with its one barrier per time step.  The micro-kernels are in
 * src/wsr_<path>.c; their interface and the packed layout in
 * src/wsr_internal.h.
 *
 * Shape letters: T time steps, B batch, H hidden size, P = ceil(H / 32)
 * panels of W's output columns. */
#include "wsr.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wsr_internal.h"

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif
#if defined(_WIN32)
#define WIN32_LEAN_AND_MEAN
#include <process.h>
#include <windows.h>
#else
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h> /* sysconf */
#endif

#if WSR_X86_64
#if !defined(_MSC_VER) || defined(__clang__)
#include <cpuid.h>
#endif
#include <immintrin.h> /* _mm_pause */
#endif

#define WSR_MAX_THREADS 64

/* prefetch into L2 (and outer levels) */
#if defined(_MSC_VER) && !defined(__clang__)
#if WSR_X86_64
#define WSR_PREFETCH_L2(p) _mm_prefetch((const char*)(p), _MM_HINT_T1)
#else
#define WSR_PREFETCH_L2(p) ((void)(p))
#endif
#else
#define WSR_PREFETCH_L2(p) __builtin_prefetch((const void*)(p), 0, 2)
#endif

/* ------------------------------------------------------------------------
 * atomics: GCC/Clang builtins (also mingw), Interlocked functions on MSVC */

#if defined(_MSC_VER) && !defined(__clang__)
typedef volatile long wsr_atomic;
static long atomic_load(wsr_atomic* p) {
#if defined(_M_ARM64)
    /* as MSVC's own <atomic> does an acquire load on ARM64 */
    const long v = (long)__iso_volatile_load32((const volatile __int32*)p);
    __dmb(0xB); /* _ARM64_BARRIER_ISH */
    return v;
#else
    const long v = *p; /* x86 loads are acquire loads */
    _ReadWriteBarrier();
    return v;
#endif
}
static long atomic_add(wsr_atomic* p, long v) { return _InterlockedExchangeAdd(p, v); }
static void atomic_store(wsr_atomic* p, long v) { _InterlockedExchange(p, v); }
static int atomic_cas(wsr_atomic* p, long expected, long desired) {
    return _InterlockedCompareExchange(p, desired, expected) == expected;
}
#else
typedef long wsr_atomic;
static long atomic_load(wsr_atomic* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
/* returns the old value; sequentially consistent */
static long atomic_add(wsr_atomic* p, long v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static void atomic_store(wsr_atomic* p, long v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static int atomic_cas(wsr_atomic* p, long expected, long desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
#endif

static void cpu_relax(void) {
#if WSR_X86_64
    _mm_pause();
#elif defined(_MSC_VER) && defined(_M_ARM64)
    __yield();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ------------------------------------------------------------------------
 * the instruction-set path */

enum { PATH_PORTABLE, PATH_AVX2, PATH_AVX512, PATH_NEON, N_PATHS };
static const char* const path_names[N_PATHS] = {"portable", "avx2", "avx512", "neon"};

#if WSR_X86_64
static void cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
#if defined(_MSC_VER) && !defined(__clang__)
    int x[4];
    __cpuidex(x, (int)leaf, (int)sub);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)x[i];
#else
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}

/* XCR0: which register states the OS saves and restores */
static unsigned long long xcr0(void) {
#if defined(_MSC_VER) && !defined(__clang__)
    return _xgetbv(0);
#else
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
#endif
}
#endif

/* 1 when this build has the path and the CPU (and OS) can run it */
static int path_supported(int path) {
    switch (path) {
    case PATH_PORTABLE:
        return 1;
#if WSR_X86_64
    case PATH_AVX2:
    case PATH_AVX512: {
        unsigned r[4];
        cpuid(0, 0, r);
        const unsigned max_leaf = r[0];
        if (max_leaf < 7) return 0;
        cpuid(1, 0, r);
        const int osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1, fma = (r[2] >> 12) & 1;
        if (!osxsave || !avx) return 0;
        const unsigned long long x = xcr0();
        cpuid(7, 0, r);
        if (path == PATH_AVX2)
            /* the OS saves xmm and ymm; AVX2 (leaf 7 ebx bit 5) and FMA */
            return (x & 0x6) == 0x6 && ((r[1] >> 5) & 1) && fma;
        /* ... and opmask, zmm0-15 upper halves, zmm16-31; AVX512F (bit 16) */
        return (x & 0xE6) == 0xE6 && ((r[1] >> 16) & 1);
    }
#endif
#if WSR_AARCH64
    case PATH_NEON:
        return 1;
#endif
    default:
        return 0;
    }
}

static const wsr_kernels* path_kernels(int path) {
    switch (path) {
#if WSR_X86_64
    case PATH_AVX2:
        return &rnn_ext_wsr_avx2;
    case PATH_AVX512:
        return &rnn_ext_wsr_avx512;
#endif
#if WSR_AARCH64
    case PATH_NEON:
        return &rnn_ext_wsr_neon;
#endif
    default:
        return &rnn_ext_wsr_portable;
    }
}

static int path_by_name(const char* name) {
    if (name == NULL) return -1;
    for (int i = 0; i < N_PATHS; i++)
        if (strcmp(name, path_names[i]) == 0) return i;
    return -1;
}

/* -1 until the first call decides */
static wsr_atomic g_path = -1;

static int current_path(void) {
    long p = atomic_load(&g_path);
    if (p >= 0) return (int)p;
    /* the automatic choice: the widest path the CPU supports ... */
    int choice = PATH_PORTABLE;
    if (path_supported(PATH_NEON)) choice = PATH_NEON;
    if (path_supported(PATH_AVX2)) choice = PATH_AVX2;
    if (path_supported(PATH_AVX512)) choice = PATH_AVX512;
    /* ... unless RNN_EXT_SIMD names a supported one (otherwise ignored) */
    const int forced = path_by_name(getenv("RNN_EXT_SIMD"));
    if (forced >= 0 && path_supported(forced)) choice = forced;
    /* a concurrent first call or rnn_ext_wsr_set_path may have won */
    atomic_cas(&g_path, -1, choice);
    return (int)atomic_load(&g_path);
}

const char* rnn_ext_wsr_path(void) { return path_names[current_path()]; }

int rnn_ext_wsr_supported(const char* name) {
    const int p = path_by_name(name);
    return p >= 0 && path_supported(p);
}

/* ------------------------------------------------------------------------
 * weight gradients: C = A.T @ B over all T*B rows (K of them)
 *
 * BLIS's loops with one operand left in place: K in blocks of TN_KC rows;
 * per block, each panel of 32 columns of B is copied into a contiguous 16 KiB
 * buffer (it stays in L1 while every tile of rows reads it), and each tile
 * (up to 8 rows of C by the path's strip of columns: src/wsr_internal.h,
 * wsr_tn_tile_fn) broadcasts its elements of A's row k straight from A, so A
 * is never packed.  OpenBLAS packs both: at T*B = 6400, M = N = 512 it spent
 * 28 % of the product's time copying (Intel Xeon, one thread).  While a panel
 * computes, its tiles fetch into L2 the next block's rows of B in its columns
 * and a share of the next block's rows of A (strided rows no hardware
 * prefetcher follows).  C goes in column groups of at most TN_C_BYTES, so
 * that a group's C stays in L2 over all the blocks.  Every element of C is
 * one chain of fused multiply-adds over k = 0 .. K-1, ascending (between
 * blocks the chain's value waits in C, which rounds nothing). */

#define TN_KC 128
#define TN_C_BYTES ((size_t)1 << 20)
/* the largest C (in floats) rnn_ext_wsr_gemm_tn computes */
#define WSR_GEMM_TN_MAX ((size_t)1 << 18)

/* 64-byte lines in a row of a panel's cols columns of B (at most WSR_NR) */
static int tn_b_lines(int cols) { return cols > 16 ? 2 : 1; }

/* line j of what a panel fetches for the next block: first the rows of B in
 * its columns (cols of them, tn_b_lines a row), then its share of A's rows */
static void tn_fetch(const float* B, ptrdiff_t ldb, int n0, int cols, int b_rows,
                     const float* A, ptrdiff_t lda, int a_lines, int j) {
    const int per = tn_b_lines(cols);
    if (j < b_rows * per) {
        WSR_PREFETCH_L2(B + (j / per) * ldb + n0 + 16 * (j % per));
    } else {
        j -= b_rows * per;
        WSR_PREFETCH_L2((const char*)(A + (j / a_lines) * lda) + 64 * (j % a_lines));
    }
}

static void gemm_tn(const wsr_tn_tiles* t, int M, int N, int K, const float* A, ptrdiff_t lda,
                    const float* B, ptrdiff_t ldb, float* C, ptrdiff_t ldc) {
    /* the panel, on a 64-byte line: the tiles' vector loads never split */
    float Bp_raw[TN_KC * WSR_NR + 16];
    float* Bp = Bp_raw + ((64 - (uintptr_t)Bp_raw % 64) % 64) / sizeof(float);
    if (K <= 0) {
        for (int r = 0; r < M; r++) memset(C + r * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    /* ceil(M / mr_max) tiles of rows, as even as they can be (65 rows, 8 at most:
     * 2 x 8 + 7 x 7) */
    const int nb = (M + t->mr_max - 1) / t->mr_max, base = M / nb, big = M % nb;
    const int strip = t->strip, strips = WSR_NR / strip;
    int nc = (int)(TN_C_BYTES / ((size_t)M * sizeof(float))) / WSR_NR * WSR_NR;
    nc = nc < WSR_NR ? WSR_NR : nc;
    const int a_lines = (int)(((size_t)M * sizeof(float) + 63) / 64);
    for (int j0 = 0; j0 < N; j0 += nc) {
        const int j1 = N - j0 < nc ? N : j0 + nc;
        const int panels = (j1 - j0 + WSR_NR - 1) / WSR_NR;
        for (int k0 = 0; k0 < K; k0 += TN_KC) {
            const int kc = K - k0 < TN_KC ? K - k0 : TN_KC;
            /* the next block of K, or the next group's first */
            const int last = k0 + kc >= K;
            const int has_next = !last || j1 < N;
            const int k_next = last ? 0 : k0 + kc;
            const int rows_next = K - k_next < TN_KC ? K - k_next : TN_KC;
            for (int pi = 0; pi < panels; pi++) {
                const int n0 = j0 + pi * WSR_NR;
                const int cols = j1 - n0 < WSR_NR ? j1 - n0 : WSR_NR;
                /* the panel, zero past N */
                t->pack(B + k0 * ldb + n0, ldb, kc, cols, Bp);
                /* what this panel fetches: the next block's rows of B in its
                 * columns (in the next group, the panel as far into it), and a
                 * 1/panels share of the next block's rows of A */
                const int nn0 = last ? j1 + pi * WSR_NR : n0;
                const int ncols = has_next && nn0 < N ? (N - nn0 < WSR_NR ? N - nn0 : WSR_NR) : 0;
                const int a0 = rows_next * pi / panels, a1 = rows_next * (pi + 1) / panels;
                const float* Bn = B + (ptrdiff_t)k_next * ldb;
                const float* An = A + (ptrdiff_t)(k_next + a0) * lda;
                const int b_rows = ncols > 0 ? rows_next : 0;
                const int lines =
                    b_rows * tn_b_lines(ncols) + (has_next ? (a1 - a0) * a_lines : 0);
                const int tiles = nb * strips;
                int fetched = 0, ti = 0;
                for (int si = 0; si < strips; si++) {
                    const int c0 = si * strip;
                    if (c0 >= cols) break;
                    const int scols = cols - c0 < strip ? cols - c0 : strip;
                    int r0 = 0;
                    for (int i = 0; i < nb; i++, ti++) {
                        const int mr = base + (i < big);
                        for (const int upto = (int)((long long)lines * (ti + 1) / tiles);
                             fetched < upto; fetched++)
                            tn_fetch(Bn, ldb, nn0, ncols, b_rows, An, lda, a_lines, fetched);
                        /* the next tile's C: the next rows, or the next strip's or
                         * panel's first (read unless this is the first block,
                         * which only writes C) */
                        const float* next = NULL;
                        int next_rows = 0;
                        if (k0 > 0 || !last) {
                            if (i + 1 < nb) {
                                next = C + (r0 + mr) * ldc + n0 + c0;
                                next_rows = base + (i + 1 < big);
                            } else if (c0 + strip < cols || pi + 1 < panels) {
                                next = C + n0 + c0 + strip;
                                next_rows = base + (0 < big);
                            }
                        }
                        t->tile[mr](A + k0 * lda + r0, lda, Bp + c0, kc, C + r0 * ldc + n0 + c0,
                                    ldc, scols, k0 == 0, next, next_rows);
                        r0 += mr;
                    }
                }
                for (; fetched < lines; fetched++)
                    tn_fetch(Bn, ldb, nn0, ncols, b_rows, An, lda, a_lines, fetched);
            }
        }
    }
}

int rnn_ext_wsr_gemm_tn(int M, int N, int K, const float* A, ptrdiff_t lda, const float* B,
                        ptrdiff_t ldb, float* C, ptrdiff_t ldc) {
    const wsr_tn_tiles* t = path_kernels(current_path())->tn;
    /* where it gains (one thread, Intel Xeon with AVX-512, GFLOP/s against
     * OpenBLAS's): a few dozen rows (K = 3200, M = 65, N = 512: 114-121 against
     * 82-85), M = N = 512 (122-127 against 107-109), M = 256, N = 1024 (124
     * against 115); not with more rows, 4 KiB apart in A (K = 1600, M = 1024:
     * N = 256, 68 against 112; N = 1024, 106 against 117) */
    if (t == NULL || M <= 0 || N <= 0 || M > 512 || (size_t)M * (size_t)N > WSR_GEMM_TN_MAX)
        return 0;
    gemm_tn(t, M, N, K, A, lda, B, ldb, C, ldc);
    return 1;
}

int rnn_ext_wsr_set_path(const char* name) {
    const int p = path_by_name(name);
    if (p < 0 || !path_supported(p)) return -1;
    atomic_store(&g_path, p);
    return 0;
}

/* ------------------------------------------------------------------------
 * packing */

size_t rnn_ext_wsr_packed_size(int H) {
    const size_t P = ((size_t)H + WSR_NR - 1) / WSR_NR;
    return P * WSR_NR * (size_t)H;
}

/* panels p0 .. p1-1 of either layout */
static void pack_panels(const float* W, int H, float* packed_fwd, float* packed_bwd, int p0,
                        int p1) {
    /* the path's transpose of a whole panel, or NULL */
    const wsr_transpose_fn transpose = path_kernels(current_path())->transpose;
    for (int p = p0; p < p1; p++) {
        const ptrdiff_t base = (ptrdiff_t)p * H * WSR_NR;
        if (packed_fwd != NULL) {
            /* panel p, row k: W.T[k, p*32 + j] = W[p*32 + j, k] */
            int k0 = 0;
            if (transpose != NULL && (p + 1) * WSR_NR <= H) {
                k0 = H - H % 8;
                transpose(W + (ptrdiff_t)p * WSR_NR * H, H, k0, packed_fwd + base);
            }
            /* the rest one float at a time, in blocks of 32 k, so that the
             * block's panel rows stay in cache */
            for (; k0 < H; k0 += WSR_NR) {
                const int kn = H - k0 < WSR_NR ? H - k0 : WSR_NR;
                float* dst = packed_fwd + base + (ptrdiff_t)k0 * WSR_NR;
                for (int j = 0; j < WSR_NR; j++) {
                    const int c = p * WSR_NR + j;
                    if (c < H) {
                        const float* row = W + (ptrdiff_t)c * H + k0;
                        for (int k = 0; k < kn; k++) dst[k * WSR_NR + j] = row[k];
                    } else {
                        for (int k = 0; k < kn; k++) dst[k * WSR_NR + j] = 0.0f;
                    }
                }
            }
        }
        if (packed_bwd != NULL) {
            /* panel p, row k: W[k, p*32 + j] */
            const int nc = H - p * WSR_NR < WSR_NR ? H - p * WSR_NR : WSR_NR;
            /* a loop the compiler unrolls into vector moves: a call to memcpy
             * for each 128 bytes cost twice the copy itself */
            for (int k = 0; k < H; k++) {
                float* dst = packed_bwd + base + (ptrdiff_t)k * WSR_NR;
                const float* src = W + (ptrdiff_t)k * H + (ptrdiff_t)p * WSR_NR;
                if (nc == WSR_NR) {
                    for (int j = 0; j < WSR_NR; j++) dst[j] = src[j];
                } else {
                    for (int j = 0; j < nc; j++) dst[j] = src[j];
                    for (int j = nc; j < WSR_NR; j++) dst[j] = 0.0f;
                }
            }
        }
    }
}

void rnn_ext_wsr_pack(const float* W, int H, float* packed_fwd, float* packed_bwd) {
    pack_panels(W, H, packed_fwd, packed_bwd, 0, (H + WSR_NR - 1) / WSR_NR);
}

typedef struct {
    const float* W;
    float *fwd, *bwd;
    int H;
} pack_task;

static void pack_part(void* ctx, int i, int n) {
    const pack_task* t = (const pack_task*)ctx;
    const int P = (t->H + WSR_NR - 1) / WSR_NR;
    pack_panels(t->W, t->H, t->fwd, t->bwd, (int)((long long)P * i / n),
                (int)((long long)P * (i + 1) / n));
}

/* ------------------------------------------------------------------------
 * one layer-direction's recurrence, as run by each of n threads */

typedef struct wsr_job {
    rnn_ext_task_fn task; /* a generic task (rnn_ext_parallel) instead of a recurrence */
    void* task_ctx;
    wsr_kernel_fn kernel;
    const float* packed;
    float* x;        /* hs (forward) or delta (backward) */
    const float* hs; /* backward: the forward's hidden states */
    const ptrdiff_t* lengths;
    int T, B, H, reverse, relu, backward;
    int nthreads, npanels;
    int by_rows; /* threads own runs of batch rows (and every column): no barrier per step */
} wsr_job;

/* Threads split a recurrence by batch rows when W is at most
 * WSR_ROWS_MAX_H wide (or, up to WSR_ROWS_WIDE_MAX_H, when a thread's share
 * of W is more than twice the L2 and it gets WSR_ROWS_WIDE_MIN rows) and
 * every thread gets at least WSR_ROW_BLOCK rows.  The rows of a batch are independent sequences, so a
 * thread then runs all T steps of its own rows without meeting the others,
 * and reads no state another core wrote (but for the cache line two
 * threads' rows share when a row of H floats is not a whole number of
 * lines).  Otherwise W is split by columns (each thread holds a part of W;
 * one barrier per step).  Either way each output element is the same chain,
 * so results are the same for every split and thread count.
 *
 * W at H = 512 (1 MiB) fits a 1-2 MiB L2 beside the rows; on a 512 KiB L2
 * (AMD Zen 3) it does not, yet rows measured as fast as columns or faster
 * there too, two threads, B = 16 to 128, H = 256 to 768 (benchmarks/
 * README.md, fifth Zen 3 session).  Columns keep a thread's share of W in
 * its L2 at the price of a barrier per step; where that share is more than
 * twice the L2 it streams from L3 either way, and rows, with no barrier,
 * measured faster: the recurrence alone 0-5 %, a whole loss_and_grad 1-9 %
 * (two threads, B = 32 and 64, H = 768 and 1024, Zen 3; sixth session).
 * Wider still, rows (every thread streams all of W each step, twice the
 * columns' traffic from L3) measured 0-14 % slower there (H = 2048, 3072),
 * and so they did with 8 rows a thread (B = 16: 1.04-1.25x the time of
 * columns at H = 768 and 1024; 12 rows, B = 24: 0.94-0.98x). */
#define WSR_ROWS_MAX_H 512
#define WSR_ROWS_WIDE_MAX_H 1024
#define WSR_ROWS_WIDE_MIN 12
#define WSR_ROW_BLOCK 8

/* One core's L2 in bytes as the OS reports it, 0 when it does not (then
 * only WSR_ROWS_MAX_H decides); asked once */
static wsr_atomic g_l2 = -1;

static long l2_bytes(void) {
    long v = atomic_load(&g_l2);
    if (v >= 0) return v;
    v = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long s = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (s > 0 && s < (1L << 30)) v = s;
#endif
    atomic_cas(&g_l2, -1, v);
    return atomic_load(&g_l2);
}

/* 1 when n threads should split a recurrence with an H-wide W by batch rows */
static int split_by_rows(int H, int B, int n) {
    if (n <= 1 || B / WSR_ROW_BLOCK < 2) return 0;
    if (H <= WSR_ROWS_MAX_H) return 1;
    if (H > WSR_ROWS_WIDE_MAX_H || B / n < WSR_ROWS_WIDE_MIN) return 0;
    const long l2 = l2_bytes();
    return l2 > 0 && (double)sizeof(float) * H * H / n > 2.0 * (double)l2;
}

static void barrier(int n, int tid);

/* Step i of the job: the kernel's pointers in s (packed, B, H, relu set by
 * the caller), the rows that padded steps get (NULL: zeros); returns t. */
static int step_setup(const wsr_job* job, int i, wsr_step* s, const float** fill) {
    const int T = job->T;
    const ptrdiff_t BH = (ptrdiff_t)job->B * job->H;
    float* x = job->x;
    int t;
    *fill = NULL;
    if (!job->backward) {
        t = job->reverse ? T - 1 - i : i;
        if (!job->reverse) {
            /* hs[t+1] = f(A[t] + hs[t] @ W.T) */
            s->out = x + (t + 1) * BH;
            s->in = x + t * BH;
        } else {
            /* hs[t] = f(A[t] + hs[t+1] @ W.T); padded rows restart from h0 */
            s->out = x + t * BH;
            s->in = x + (t + 1) * BH;
            *fill = x + T * BH;
        }
        s->h = NULL;
    } else {
        t = job->reverse ? i : T - 1 - i;
        s->out = x + t * BH;
        if (!job->reverse) {
            /* delta[t] = (delta[t] + delta[t+1] @ W) * f'(hs[t+1]) */
            s->in = i == 0 ? NULL : x + (t + 1) * BH;
            s->h = job->hs + (t + 1) * BH;
        } else {
            /* delta[t] = (delta[t] + delta[t-1] @ W) * f'(hs[t]) */
            s->in = i == 0 ? NULL : x + (t - 1) * BH;
            s->h = job->hs + t * BH;
        }
    }
    return t;
}

/* columns per kernel call when a step runs its columns backwards: whole
 * panels, a few tiles of every shape (src/wsr_avx512.c: 32, 64 or 128 columns) */
#define ZIGZAG_COLS (4 * WSR_NR)

/* Thread tid of job->nthreads: every step for its own rows (by_rows) or its
 * own panels; split by panels, a barrier after each step, split by rows one
 * at the end (the last barrier also tells the caller the job is done). */
static void job_run(const wsr_job* job, int tid) {
    const int n = job->nthreads, P = job->npanels, T = job->T, H = job->H;
    if (job->task != NULL) {
        job->task(job->task_ctx, tid, n);
        if (n > 1) barrier(n, tid);
        return;
    }
    /* this thread's columns c0..c1 of rows r0..r1 */
    int c0 = 0, c1 = H, r0 = 0, r1 = job->B;
    if (job->by_rows) {
        /* an even share of the rows (run() leaves n <= B / WSR_ROW_BLOCK, so
         * each has at least that many); whole blocks of 8 would give the
         * threads 8 and 16 of 24 rows, and two threads 1.3-1.5x one instead
         * of 1.8-2.1x (B = 24, H = 128-512, AMD Zen 3) */
        r0 = (int)((long long)job->B * tid / n);
        r1 = (int)((long long)job->B * (tid + 1) / n);
    } else {
        const int p0 = (int)((long long)P * tid / n), p1 = (int)((long long)P * (tid + 1) / n);
        c0 = p0 * WSR_NR;
        c1 = p1 * WSR_NR < H ? p1 * WSR_NR : H;
    }
    const int B = r1 - r0;
    const ptrdiff_t skip = (ptrdiff_t)r0 * H; /* to this thread's first row */
    const int meet = n > 1 && !job->by_rows;  /* a barrier after every step */
    wsr_step s;
    s.packed = job->packed;
    s.B = B;
    s.H = H;
    s.relu = job->relu;
    for (int i = 0; i < T && B > 0; i++) {
        const float* fill;
        const int t = step_setup(job, i, &s, &fill);
        s.out += skip;
        if (s.in != NULL) s.in += skip;
        if (s.h != NULL) s.h += skip;
        if (fill != NULL) fill += skip;
        if (i + 1 < T && c0 < c1) {
            /* the next step's A[t] or upstream rows, and its h_t rows, into L2
             * while this step computes: each is read once, in the epilogue
             * or at a tile's start, and would otherwise miss to L3 */
            wsr_step next = s;
            const float* unused;
            step_setup(job, i + 1, &next, &unused);
            for (int b = 0; b < B; b++) {
                const float* o = next.out + skip + (ptrdiff_t)b * H;
                const float* h = next.h != NULL ? next.h + skip + (ptrdiff_t)b * H : NULL;
                for (int j = c0; j < c1; j += 16) {
                    WSR_PREFETCH_L2(o + j);
                    if (h != NULL) WSR_PREFETCH_L2(h + j);
                }
            }
        }
        if (c0 < c1) {
            /* every other step runs its columns last to first: the panels a
             * step read last are still in L2 when the next one starts (W
             * larger than L2 then streams from L3 only in part); the order
             * of the tiles changes no result */
            if (i % 2 == 0) {
                job->kernel(&s, c0, c1);
            } else {
                for (int hi = c1; hi > c0;) {
                    const int lo = c0 + (hi - 1 - c0) / ZIGZAG_COLS * ZIGZAG_COLS;
                    job->kernel(&s, lo, hi);
                    hi = lo;
                }
            }
            if (job->lengths != NULL) {
                for (int b = 0; b < B; b++) {
                    if (t < job->lengths[r0 + b]) continue;
                    float* row = s.out + (ptrdiff_t)b * H + c0;
                    if (fill != NULL)
                        memcpy(row, fill + (ptrdiff_t)b * H + c0, (size_t)(c1 - c0) * sizeof(float));
                    else
                        memset(row, 0, (size_t)(c1 - c0) * sizeof(float));
                }
            }
        }
        if (meet) barrier(n, tid);
    }
    /* split by rows: one meeting, at the end (it tells the caller the job is done) */
    if (n > 1 && !meet) barrier(n, tid);
}

/* ------------------------------------------------------------------------
 * the thread pool
 *
 * Workers 1 .. nworkers (the caller is thread 0) each wait on their own
 * slot's generation counter; a job is posted by writing the slot's job and
 * then bumping its generation.  Waiting spins (pause), then yields, then
 * sleeps on the pool's condition variable; whoever bumps a counter that a
 * sleeper may wait on wakes the sleepers (`sleepers` is read after the bump
 * and incremented before the sleeper's last check, both sequentially
 * consistent, so no wake-up is lost).  One caller at a time owns the pool
 * (`busy`); a concurrent caller runs its job single-threaded instead. */

/* how one thread waits (wait_change, below) */
typedef struct {
    long long spin_ns; /* the spin budget */
    int streak;        /* waits in a row that ended in the yield phase */
} wsr_waiter;

typedef struct {
    wsr_atomic gen;
    const wsr_job* job;
    wsr_waiter waiter; /* how this thread waits in barriers; its own */
    char pad[64 - sizeof(wsr_atomic) - sizeof(void*) - sizeof(wsr_waiter)];
} wsr_slot;

static struct {
    wsr_atomic busy;
    char pad0[64];
    wsr_atomic bar_count;
    char pad1[64];
    wsr_atomic bar_gen;
    char pad2[64];
    wsr_atomic sleepers;
    char pad3[64];
    wsr_slot slot[WSR_MAX_THREADS];
    int nworkers;
    int initialised;
#if defined(_WIN32)
    SRWLOCK lock;
    CONDITION_VARIABLE cond;
#else
    pthread_mutex_t lock;
    pthread_cond_t cond;
#endif
} g_pool;

/* How a thread waits: spin (pause), then yield, then sleep.  A partner
 * thread normally arrives within microseconds of a step, and a spin notices
 * it at once.  When the partner is waiting for this very core (an
 * oversubscribed machine, or two threads the scheduler placed on one core),
 * spinning only delays it: each thread keeps its own spin budget, halved
 * whenever a wait outlasted the spin and grown again when spins succeed, so
 * that it soon yields at once.  Two threads on one core that only ever yield
 * are never moved apart by the scheduler; after a streak of waits that ended
 * in yields the next wait sleeps, and the wake-up lets the scheduler place
 * the thread on an idle core.  Between jobs, workers spin briefly and sleep
 * sooner. */
#define SPIN_NS_MAX 20000LL
#define SPIN_NS_MIN 500LL
#define SPIN_NS_IDLE 5000LL
#define YIELD_NS_STEP 2000000LL
#define YIELD_NS_IDLE 200000LL
#define YIELD_STREAK 8

static long long now_ns(void) {
#if defined(_WIN32)
    LARGE_INTEGER t, f;
    QueryPerformanceCounter(&t);
    QueryPerformanceFrequency(&f);
    return (long long)((double)t.QuadPart * 1e9 / (double)f.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
}

static void os_yield(void) {
#if defined(_WIN32)
    SwitchToThread();
#else
    sched_yield();
#endif
}

/* wait until *p != old: spin, yield for up to yield_ns, then sleep; w adapts
 * (above) */
static void wait_change(wsr_atomic* p, long old, wsr_waiter* w, long long yield_ns) {
    if (atomic_load(p) != old) return;
    if (w->streak < YIELD_STREAK) {
        const long long start = now_ns();
        for (unsigned i = 1;; i++) {
            if (atomic_load(p) != old) {
                const long long room = SPIN_NS_MAX - w->spin_ns;
                w->spin_ns += w->spin_ns / 8 < room ? w->spin_ns / 8 : room;
                w->streak = 0;
                return;
            }
            cpu_relax();
            if (i % 16 == 0 && now_ns() - start > w->spin_ns) break;
        }
        w->spin_ns = w->spin_ns / 2 > SPIN_NS_MIN ? w->spin_ns / 2 : SPIN_NS_MIN;
        for (;;) {
            if (atomic_load(p) != old) {
                w->streak++;
                return;
            }
            os_yield();
            if (now_ns() - start > w->spin_ns + yield_ns) break;
        }
    }
    w->streak = 0;
#if defined(_WIN32)
    AcquireSRWLockExclusive(&g_pool.lock);
    atomic_add(&g_pool.sleepers, 1);
    while (atomic_load(p) == old) SleepConditionVariableSRW(&g_pool.cond, &g_pool.lock, INFINITE, 0);
    atomic_add(&g_pool.sleepers, -1);
    ReleaseSRWLockExclusive(&g_pool.lock);
#else
    pthread_mutex_lock(&g_pool.lock);
    atomic_add(&g_pool.sleepers, 1);
    while (atomic_load(p) == old) pthread_cond_wait(&g_pool.cond, &g_pool.lock);
    atomic_add(&g_pool.sleepers, -1);
    pthread_mutex_unlock(&g_pool.lock);
#endif
}

/* after bumping a counter: wake whoever sleeps */
static void wake_sleepers(void) {
    if (atomic_add(&g_pool.sleepers, 0) == 0) return;
#if defined(_WIN32)
    AcquireSRWLockExclusive(&g_pool.lock);
    WakeAllConditionVariable(&g_pool.cond);
    ReleaseSRWLockExclusive(&g_pool.lock);
#else
    pthread_mutex_lock(&g_pool.lock);
    pthread_cond_broadcast(&g_pool.cond);
    pthread_mutex_unlock(&g_pool.lock);
#endif
}

/* all n threads of the current job meet here; tid is the caller's */
static void barrier(int n, int tid) {
    const long gen = atomic_load(&g_pool.bar_gen);
    if (atomic_add(&g_pool.bar_count, 1) == n - 1) {
        atomic_store(&g_pool.bar_count, 0);
        atomic_add(&g_pool.bar_gen, 1);
        wake_sleepers();
    } else {
        wait_change(&g_pool.bar_gen, gen, &g_pool.slot[tid].waiter, YIELD_NS_STEP);
    }
}

static void worker_loop(int id) {
    long seen = 0;
    for (;;) {
        wsr_waiter idle = {SPIN_NS_IDLE, 0};
        wait_change(&g_pool.slot[id].gen, seen, &idle, YIELD_NS_IDLE);
        seen = atomic_load(&g_pool.slot[id].gen);
        job_run(g_pool.slot[id].job, id);
    }
}

#if defined(_WIN32)
static unsigned __stdcall worker_main(void* arg) {
    worker_loop((int)(intptr_t)arg);
    return 0;
}
#else
static void* worker_main(void* arg) {
    worker_loop((int)(intptr_t)arg);
    return NULL;
}

/* in a forked child the workers are gone: start again from none */
static void pool_after_fork_child(void) {
    pthread_mutex_init(&g_pool.lock, NULL);
    pthread_cond_init(&g_pool.cond, NULL);
    g_pool.nworkers = 0;
    g_pool.sleepers = 0;
    g_pool.bar_count = 0;
    g_pool.bar_gen = 0;
    for (int i = 0; i < WSR_MAX_THREADS; i++) g_pool.slot[i].gen = 0;
    g_pool.busy = 0;
}
#endif

/* With the pool owned: make sure workers 1 .. want exist; returns how many do. */
static int pool_grow(int want) {
    if (!g_pool.initialised) {
#if defined(_WIN32)
        InitializeSRWLock(&g_pool.lock);
        InitializeConditionVariable(&g_pool.cond);
#else
        pthread_mutex_init(&g_pool.lock, NULL);
        pthread_cond_init(&g_pool.cond, NULL);
        pthread_atfork(NULL, NULL, pool_after_fork_child);
#endif
        /* the caller's, whichever thread it is */
        g_pool.slot[0].waiter.spin_ns = SPIN_NS_MAX;
        g_pool.initialised = 1;
    }
    if (want > WSR_MAX_THREADS - 1) want = WSR_MAX_THREADS - 1;
#if !defined(_WIN32)
    /* workers take no signals: they stay with the threads that handle them */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
#endif
    while (g_pool.nworkers < want) {
        const int id = g_pool.nworkers + 1;
        g_pool.slot[id].gen = 0;
        g_pool.slot[id].waiter.spin_ns = SPIN_NS_MAX;
        g_pool.slot[id].waiter.streak = 0;
#if defined(_WIN32)
        uintptr_t h = _beginthreadex(NULL, 0, worker_main, (void*)(intptr_t)id, 0, NULL);
        if (h == 0) break;
        CloseHandle((HANDLE)h);
#else
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 1 << 18);
        const int rc = pthread_create(&th, &attr, worker_main, (void*)(intptr_t)id);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
#endif
        g_pool.nworkers = id;
    }
#if !defined(_WIN32)
    pthread_sigmask(SIG_SETMASK, &old, NULL);
#endif
    return g_pool.nworkers < want ? g_pool.nworkers : want;
}

static void run(wsr_job* job, int nthreads) {
    /* a recurrence gives each thread at least one panel (or block of rows);
     * a task splits itself */
    int n = nthreads;
    if (job->task == NULL) {
        const int blocks = job->B / WSR_ROW_BLOCK;
        job->by_rows = split_by_rows(job->H, job->B, n);
        const int most = job->by_rows ? blocks : job->npanels;
        n = most < n ? most : n;
    }
    if (n > WSR_MAX_THREADS) n = WSR_MAX_THREADS;
    if (n <= 1 || !atomic_cas(&g_pool.busy, 0, 1)) {
        job->nthreads = 1;
        job_run(job, 0);
        return;
    }
    n = pool_grow(n - 1) + 1;
    job->nthreads = n;
    for (int i = 1; i < n; i++) {
        g_pool.slot[i].job = job;
        atomic_add(&g_pool.slot[i].gen, 1);
    }
    wake_sleepers();
    job_run(job, 0);
    atomic_store(&g_pool.busy, 0);
}

/* ------------------------------------------------------------------------
 * the public entry points */

void rnn_ext_parallel(rnn_ext_task_fn fn, void* ctx, int nthreads) {
    wsr_job job;
    memset(&job, 0, sizeof job);
    job.task = fn;
    job.task_ctx = ctx;
    run(&job, nthreads);
}

void rnn_ext_wsr_pack_threads(const float* W, int H, float* packed_fwd, float* packed_bwd,
                              int nthreads) {
    const int P = (H + WSR_NR - 1) / WSR_NR;
    pack_task t = {W, packed_fwd, packed_bwd, H};
    rnn_ext_parallel(pack_part, &t, nthreads < P ? nthreads : P);
}

void rnn_ext_wsr_forward(const float* packed_fwd, int T, int B, int H, float* hs, int reverse,
                         const ptrdiff_t* lengths, int relu, int nthreads) {
    if (T <= 0 || B <= 0 || H <= 0) return;
    wsr_job job;
    memset(&job, 0, sizeof job);
    job.kernel = path_kernels(current_path())->forward;
    job.packed = packed_fwd;
    job.x = hs;
    job.lengths = lengths;
    job.T = T;
    job.B = B;
    job.H = H;
    job.reverse = reverse != 0;
    job.relu = relu != 0;
    job.npanels = (H + WSR_NR - 1) / WSR_NR;
    run(&job, nthreads);
}

void rnn_ext_wsr_backward(const float* packed_bwd, int T, int B, int H, float* delta,
                          const float* hs, int reverse, const ptrdiff_t* lengths, int relu,
                          int nthreads) {
    if (T <= 0 || B <= 0 || H <= 0) return;
    wsr_job job;
    memset(&job, 0, sizeof job);
    job.kernel = path_kernels(current_path())->backward;
    job.packed = packed_bwd;
    job.x = delta;
    job.hs = hs;
    job.lengths = lengths;
    job.T = T;
    job.B = B;
    job.H = H;
    job.reverse = reverse != 0;
    job.relu = relu != 0;
    job.backward = 1;
    job.npanels = (H + WSR_NR - 1) / WSR_NR;
    run(&job, nthreads);
}
