"""The weight-gradient kernel against the BLAS it replaces, in one process.

    python benchmarks/gemm_tn_bench.py                       # the shapes below, 15 rounds
    python benchmarks/gemm_tn_bench.py --shape 3200,512,512 --rounds 31
    RNN_EXT_SIMD=avx2 python benchmarks/gemm_tn_bench.py     # another path's tiles

C = A.T @ B with A (K, M) and B (K, N) float32, C-contiguous: the product a
pass computes for dW (M = N = H over half of T*B rows: ``pgemm_tn_sum`` in
``src/_pgemm.pxd`` cuts them into two parts) and for dV and a dense input's
dU (M = K or D, N = H).  Two implementations, on the same arrays:

    rnn_ext  rnn_ext._wsr.gemm_tn(A, B): rnn_ext_wsr_gemm_tn (src/wsr.c and
             the path's tiles), which the pass calls when the path has tiles
             and M <= 512, M*N <= 2^18
    blas     scipy.linalg.blas.sgemm on the transposed views (C.T = B.T @ A,
             no copy of either operand): scipy's OpenBLAS, the library the
             pass falls back to, held to one thread

Each round times the two in turn (alternating which goes first), each a block
of calls lasting at least --min-time seconds, then the large sgemm (the
limit, benchmarks/roofline.py).  Reported per shape: GFLOP/s of each (median
over rounds), and the median of the per-round time ratios rnn_ext/blas (below
1: the kernel is faster), with their range.  Both allocate their result on
every call.  Before timing, each result is checked against the float64
product: within 2 K eps32 max(|A|.T @ |B|), a bound on float32 rounding.

Defaults (K, M, N): (3200, 512, 512) dW at T = 100, B = 64, H = 512;
(3200, 65, 512) dV there; (1600, 256, 1024) a wide C; (3200, 512, 65) the
transposed shape, which no pass asks for.
"""

import argparse
import os
import statistics
import sys
from functools import partial

import numpy as np
from scipy.linalg import blas

try:
    import rnn_ext
except ImportError:  # run from a source tree that was built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import rnn_ext
import roofline  # noqa: E402 (after rnn_ext, which it imports)

from rnn_ext import _wsr  # noqa: E402

DEFAULT_SHAPES = ((3200, 512, 512), (3200, 65, 512), (1600, 256, 1024), (3200, 512, 65))


def parse_shape(text):
    try:
        K, M, N = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K,M,N (three integers), got {text!r}") from None
    if min(K, M, N) < 1:
        raise argparse.ArgumentTypeError(f"K, M and N must be at least 1, got {text!r}")
    return K, M, N


def compare(K, M, N, rounds, min_time, rng):
    """One shape: check both results, then time them in turn; prints a line."""
    A = rng.standard_normal((K, M), dtype=np.float32)
    B = rng.standard_normal((K, N), dtype=np.float32)
    C = _wsr.gemm_tn(A, B)
    if C is None:
        print(f"K={K} M={M} N={N}: the path {_wsr.path()} has no kernel for it")
        return
    # C.T = B.T @ A on the transposed (Fortran-ordered) views: no copies
    ref = partial(blas.sgemm, 1.0, B.T, A.T, trans_b=True)
    exact = A.astype(np.float64).T @ B.astype(np.float64)
    bound = 2 * K * np.finfo(np.float32).eps * (np.abs(A).T @ np.abs(B)).max()
    err = max(np.abs(C - exact).max(), np.abs(ref().T - exact).max())
    if not err <= bound:
        raise SystemExit(f"K={K} M={M} N={N}: error {err:.3g} above {bound:.3g}")
    own = partial(_wsr.gemm_tn, A, B)
    t_own, t_blas, ratios, limits = [], [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            a, b = roofline.timed(own, min_time), roofline.timed(ref, min_time)
        else:
            b, a = roofline.timed(ref, min_time), roofline.timed(own, min_time)
        t_own.append(a)
        t_blas.append(b)
        ratios.append(a / b)
        limits.append(roofline.sgemm_gflops(threads=1, repeat=3)[0])
    flops = 2.0 * K * M * N
    g_own = flops / statistics.median(t_own) / 1e9
    g_blas = flops / statistics.median(t_blas) / 1e9
    print(
        f"K={K:5d} M={M:4d} N={N:4d}: rnn_ext {g_own:6.1f} GFLOP/s, blas {g_blas:6.1f}, "
        f"sgemm {statistics.median(limits):6.1f}; rnn_ext/blas time "
        f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        help="K,M,N (repeatable); default: the four shapes in the docstring",
    )
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed block")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.min_time <= 0:
        p.error("--rounds must be at least 1 and --min-time positive")

    print(
        f"{roofline.cpu_name()}; path {_wsr.path()}; BLAS: {roofline.blas_description()}; "
        f"{args.rounds} rounds"
    )
    rng = np.random.default_rng(0)
    with rnn_ext.threads(1):
        for K, M, N in args.shape or DEFAULT_SHAPES:
            compare(K, M, N, args.rounds, args.min_time, rng)


if __name__ == "__main__":
    main()
