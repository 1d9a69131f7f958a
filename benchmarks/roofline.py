"""The roofline: sgemm GFLOP/s of the BLAS that rnn_ext's kernel calls.

rnn_ext calls scipy's BLAS (scipy.linalg.cython_blas), so the limit is
scipy.linalg.blas.sgemm on large square float32 matrices (Fortran order, so
no copies), at the thread count being measured.

    python benchmarks/roofline.py [--size 2048] [--threads 1,2] [--repeat 5]
"""

import argparse
import os
import platform
import statistics
import time

import numpy as np
import scipy.linalg.blas

from rnn_ext import _threads


def sgemm_gflops(n=2048, threads=1, repeat=5):
    """Median and best GFLOP/s of C = A B, all (n, n) float32, on `threads` threads."""
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((n, n), dtype=np.float32))
    c = np.zeros((n, n), dtype=np.float32, order="F")
    flops = 2.0 * n**3
    times = []
    with _threads.threads(threads):
        scipy.linalg.blas.sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=True)  # warm-up
        for _ in range(repeat):
            start = time.perf_counter()
            scipy.linalg.blas.sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=True)
            times.append(time.perf_counter() - start)
    return flops / statistics.median(times) / 1e9, flops / min(times) / 1e9


def timed(fn, min_time):
    """Seconds per call of fn, looped for at least min_time."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / calls


def cpu_name():
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def blas_description():
    info = _threads.blas_info()
    return "; ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}, "
        f"{os.path.basename(i.get('filepath', ''))})"
        for i in info
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"BLAS: {blas_description()}")
    for n in sorted({int(t) for t in args.threads.split(",")}):
        median, best = sgemm_gflops(args.size, n, args.repeat)
        print(f"sgemm {args.size}^3 on {n} thread(s): {median:6.1f} GFLOP/s median, {best:6.1f} best")


if __name__ == "__main__":
    main()
