/* The weight-stationary recurrence of rnn_ext (DESIGN.md §7), float32.
 *
 * Shape letters: T time steps, B batch, H hidden size.  Every array is
 * C-contiguous, row-major, float32 unless said otherwise.
 *
 * Once per pass W (H x H) is packed into column panels of 32 output columns
 * (zero-padded past H); every time step then runs one register-blocked
 * micro-kernel per (rows x columns) tile on the packed panels, with the
 * elementwise epilogue (f or f', masking) fused while the tile is in
 * registers.  With n threads and H <= 512 each
 * thread owns a fixed run of batch rows, blocks of 8, and runs every step of
 * them without meeting the others (the rows are independent sequences); with
 * a wider W, or fewer than 16 rows, each thread owns a fixed run of whole
 * panels and the threads meet once per step.  Every output element is one fixed chain of
 * fused multiply-adds over k = 0 .. H-1, so results are bit-identical for
 * every thread count (they differ between instruction-set paths, by rounding).
 * Every other step runs a thread's columns last to first, so that the panels
 * the step before read last are still in L2 when W is larger than L2 (at
 * B = 1, H = 1024 on one thread: 0.69x the time of a GEMV per step); the
 * order of the tiles changes no result.  At H >= 900 the AVX-512 kernels also
 * fetch the next panel into L2 while the last row block of a panel computes
 * (B = 16 and 32, H = 1024, one thread: 1-4 % faster).
 *
 * Instruction-set paths: "avx512" (AVX-512F), "avx2" (AVX2 + FMA), "neon"
 * (aarch64 Advanced SIMD) and "portable" (plain C), chosen once, at the first
 * call, from the CPU's features.  The environment variable RNN_EXT_SIMD=
 * portable|avx2|avx512|neon, read at that moment, forces a path; an unknown
 * name or a path this CPU or build lacks is ignored (the automatic choice
 * stands) and rnn_ext_wsr_path() names the path actually in use, so a caller
 * that forces a path checks it there.  The packed layout is the same for
 * every path, so the path may change between pack and use.
 *
 * Threads: a persistent pool (pthreads; Win32 threads under _WIN32), created
 * at the first multi-threaded call and reused.  Thread i owns a fixed run of
 * rows or of whole panels (above) for the whole call; split by panels, the
 * threads meet once per time step at a
 * barrier (spin, then yield, then sleep; the spin adapts, so threads that
 * share a core on an oversubscribed machine yield at once).  One call at a
 * time uses the pool; a call made while another holds it runs
 * single-threaded instead (same results, never a deadlock).  The pool is
 * rebuilt in a fork()ed child.  nthreads <= 1 runs inline on the calling
 * thread; otherwise min(nthreads, B / 8 or P = ceil(H / 32), 64) threads
 * run, the caller among them.  nthreads is honoured as given: a barrier costs about
 * half a microsecond, so one thread is faster when a step has little work
 * (break-even measured on a 2-core AVX-512 machine: B*H*H around 2^15).
 * Other threads that busy-wait take cores from the pool: OpenBLAS's workers
 * keep yielding for about 2^28 cycles after each multi-threaded BLAS call
 * (OPENBLAS_THREAD_TIMEOUT), which halves a 2-thread recurrence that follows
 * one.  So a pass that uses the pool runs everything parallel on it (the
 * large products through rnn_ext_parallel, src/_pgemm.pxd) with the BLAS
 * itself at one thread.
 *
 * The caller guarantees: H >= 1, B >= 1 (T <= 0 does nothing); packed
 * buffers written by rnn_ext_wsr_pack for this W and H and not changed since;
 * buffers of the sizes below, not overlapping except as stated; lengths in
 * [1, T].  No alignment is required (64-byte-aligned buffers are fastest).
 * The functions touch no Python state (call them with the GIL released),
 * never fail and never allocate, except that the first multi-threaded call
 * starts the pool's threads (if that fails, fewer threads run).
 */
#ifndef RNN_EXT_WSR_H
#define RNN_EXT_WSR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* floats needed for a packed copy of W (H x H, row-major) in each layout */
size_t rnn_ext_wsr_packed_size(int H);

/* pack once per pass: fwd layout for  a_t += h_{t-1} @ W.T,  bwd layout for  d += d_next @ W.
 * Either output may be NULL (that layout is not written). */
void rnn_ext_wsr_pack(const float* W, int H, float* packed_fwd, float* packed_bwd);
/* the same, the panels split among nthreads threads of the pool below */
void rnn_ext_wsr_pack_threads(const float* W, int H, float* packed_fwd, float* packed_bwd,
                              int nthreads);

/* the whole forward recurrence of one layer-direction.
   reverse=0: hs is (T+1,B,H); hs[0] = h0; hs[t+1] holds A[t] (input projection + bias) on entry;
     for t = 0..T-1: hs[t+1] = f(hs[t+1] + hs[t] @ W.T); rows b with t >= lengths[b] set to 0.
   reverse=1: hs is (T+1,B,H); hs[T] = h0; hs[t] holds A[t] on entry;
     for t = T-1..0: hs[t] = f(hs[t] + hs[t+1] @ W.T); rows b with t >= lengths[b] are set to
     h0[b] (a copy of hs[T][b]) so that the sequence's own last valid step starts from h0.
   f = tanh, or max(0,.) when relu.  lengths: (B,) in [1,T], or NULL (= all T).
   Overwrites hs[1:] (reverse=0) or hs[:T] (reverse=1); reads the rest. */
void rnn_ext_wsr_forward(const float* packed_fwd, int T, int B, int H, float* hs, int reverse,
                         const ptrdiff_t* lengths, int relu, int nthreads);

/* the whole BPTT recurrence of eq. (5) for one layer-direction.
   delta is (T,B,H): dL/dh_t from above on entry, delta_t on exit; hs as in the forward (after it).
   reverse=0: for t = T-1..0: delta[t] = (delta[t] + delta[t+1] @ W) * f'(h_t), h_t = hs[t+1],
              delta[T] := 0;  reverse=1: for t = 0..T-1: delta[t] = (delta[t] + delta[t-1] @ W) * f'(h_t),
              h_t = hs[t], delta[-1] := 0.   Rows b with t >= lengths[b]: delta[t][b] = 0
              (whatever the upstream value).  f'(h) = 1 - h*h (tanh) or [h > 0] (relu).
   Overwrites delta in place; reads hs (which must not overlap delta). */
void rnn_ext_wsr_backward(const float* packed_bwd, int T, int B, int H, float* delta,
                          const float* hs, int reverse, const ptrdiff_t* lengths, int relu,
                          int nthreads);

/* Run fn(ctx, i, n) for i = 0 .. n-1, each on its own thread of the pool above (the caller
   runs i = 0), n = min(nthreads, 64); returns once every one has returned.  nthreads <= 1, or
   the pool held by another call: fn(ctx, 0, 1) on the calling thread.  So fn splits its work
   by (i, n) and must give the same results for every n.  For the other parallel work of a
   pass (the large products, packing), so that the pass's threads are this pool's alone. */
typedef void (*rnn_ext_task_fn)(void* ctx, int i, int n);
void rnn_ext_parallel(rnn_ext_task_fn fn, void* ctx, int nthreads);

const char* rnn_ext_wsr_path(void);      /* "avx512", "avx2", "neon" or "portable" */
/* C := A.T @ B, row-major: A (K x M, row stride lda), B (K x N, ldb), C (M x N, ldc), with
   K the long side (a weight gradient over all T*B rows).  Each element of C is one chain of
   fused multiply-adds over k = 0 .. K-1, ascending.  Returns 1, or 0 without touching C
   when the path in use has no such kernel or the shape is one it does not take: M > 512
   or C larger than 2^18 floats (then the caller multiplies with its BLAS). */
int rnn_ext_wsr_gemm_tn(int M, int N, int K, const float* A, ptrdiff_t lda, const float* B,
                        ptrdiff_t ldb, float* C, ptrdiff_t ldc);
int rnn_ext_wsr_set_path(const char*);   /* force a path (0 ok, -1 unknown/unsupported) */

#ifdef __cplusplus
}
#endif

#endif
