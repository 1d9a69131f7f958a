"""The weight-stationary recurrence (src/wsr.h) against sgemm and the per-step BLAS loop.

    python benchmarks/wsr_bench.py                   # B 1,16,32,64 x H 128..1024, 1 and 2 threads
    python benchmarks/wsr_bench.py --B 32 --H 1024 --threads 1 --rounds 9
    RNN_EXT_SIMD=avx2 python benchmarks/wsr_bench.py # another instruction-set path

Per case (T, B, H; float32, tanh) and thread count n, four recurrences of T
steps, each 2·T·B·H² flops:

    wsr fwd    rnn_ext_wsr_forward on W packed once beforehand (n threads)
    wsr bwd    rnn_ext_wsr_backward, likewise
    blas fwd   one sgemm a step plus the tanh loop, as src/_kernels.pyx runs
               today (scipy's BLAS on n threads)
    blas bwd   one sgemm a step plus the f' product, likewise

reported as GFLOP/s and as % of the large-sgemm rate on n threads
(scipy.linalg.blas.sgemm, 2048 x 2048, benchmarks/roofline.py) timed just
before the case in the same round.  Packing W (once per pass, both layouts,
into buffers allocated once) is timed on its own and shown as % of the wsr
fwd time.
Cases, recurrences and thread counts are interleaved: every round times
each once (a block of calls lasting at least --min-time), each case after
its own sgemm; GFLOP/s are medians over --rounds rounds, and every ratio
(% of sgemm, wsr over blas, two threads over one) a median of per-round
ratios, so that a noisy, shared machine's drift cancels out.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import rnn_ext
except ImportError:  # run from a source tree that was built in place
    sys.path.insert(0, os.path.dirname(HERE))
    import rnn_ext
import roofline

from rnn_ext import _threads, _wsr

KINDS = ("wsr fwd", "wsr bwd", "blas fwd", "blas bwd")


def int_list(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--B", type=int_list, default=[1, 16, 32, 64])
    parser.add_argument("--H", type=int_list, default=[128, 256, 512, 1024])
    parser.add_argument("--threads", type=int_list, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--min-time", type=float, default=0.02, help="seconds per timed block")
    parser.add_argument("--sgemm-size", type=int, default=2048)
    return parser.parse_args(argv)


class Case:
    """Buffers of one (T, B, H) case; each run restores its inputs first (not timed)."""

    def __init__(self, T, B, H):
        rng = np.random.default_rng(B * 10000 + H)
        self.T, self.B, self.H = T, B, H
        self.W = (rng.standard_normal((H, H)) * (0.9 / np.sqrt(H))).astype(np.float32)
        self.hs0 = rng.standard_normal((T + 1, B, H)).astype(np.float32)
        self.d0 = rng.standard_normal((T, B, H)).astype(np.float32)
        self.fwd, self.bwd = _wsr.pack(self.W)
        self.hs = self.hs0.copy()
        _wsr.forward_packed(self.fwd, self.hs)
        self.work = np.empty_like(self.hs0)
        self.dwork = np.empty_like(self.d0)
        self.flops = 2.0 * T * B * H * H

    def call(self, kind, n):
        if kind == "wsr fwd":
            _wsr.forward_packed(self.fwd, self.work, nthreads=n)
        elif kind == "wsr bwd":
            _wsr.backward_packed(self.bwd, self.dwork, self.hs, nthreads=n)
        elif kind == "blas fwd":
            _wsr.blas_forward(self.W, self.work)
        elif kind == "blas bwd":
            _wsr.blas_backward(self.W, self.dwork, self.hs)
        elif kind == "pack":
            _wsr.pack(self.W, out=(self.fwd, self.bwd))

    def time(self, kind, n, min_time):
        """Seconds per call: calls in one block until min_time has passed."""
        total, calls = 0.0, 0
        while total < min_time or calls == 0:
            np.copyto(self.work, self.hs0)
            np.copyto(self.dwork, self.d0)
            start = time.perf_counter()
            self.call(kind, n)
            total += time.perf_counter() - start
            calls += 1
        return total / calls


def main(argv=None):
    args = parse_args(argv)
    load_start = os.getloadavg()
    cases = [Case(args.T, B, H) for B in args.B for H in args.H]
    times = {}  # (n, B, H, kind) -> [seconds]
    sgemm = {}  # (n, B, H) -> [GFLOP/s, one per round, just before the case]
    for c in cases:  # warm-up: the pool, the caches, the BLAS threads
        for n in args.threads:
            with _threads.threads(n):
                for kind in (*KINDS, "pack"):
                    c.time(kind, n, 0.0)
    for r in range(args.rounds):
        for c in cases:
            for n in args.threads:
                sgemm.setdefault((n, c.B, c.H), []).append(
                    roofline.sgemm_gflops(args.sgemm_size, n, repeat=1)[0])
                with _threads.threads(n):
                    for kind in (*KINDS, "pack"):
                        key = (n, c.B, c.H, kind)
                        times.setdefault(key, []).append(c.time(kind, n, args.min_time))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    load_end = os.getloadavg()
    print(f"rnn_ext {rnn_ext.__version__}, path {_wsr.path()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus; T={args.T}, float32, tanh; medians of {args.rounds} rounds")
    print(f"BLAS: {roofline.blas_description()}")
    print(f"load average (1, 5, 15 min) at start {load_start[0]:.2f} {load_start[1]:.2f} "
          f"{load_start[2]:.2f}, at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    for n in args.threads:
        rates = [v for (m, _, _), vs in sgemm.items() if m == n for v in vs]
        print(f"\n{n} thread(s): sgemm {args.sgemm_size}^2 = {statistics.median(rates):.1f} GFLOP/s "
              f"(median of {len(rates)}, {min(rates):.0f} to {max(rates):.0f})")
        print(f"{'B':>4} {'H':>5} | " + " | ".join(f"{k:>14}" for k in KINDS)
              + " | wsr/blas fwd, bwd | pack")
        for c in cases:
            t = {k: times[(n, c.B, c.H, k)] for k in (*KINDS, "pack")}
            limit = sgemm[(n, c.B, c.H)]
            cells = [f"{c.flops / statistics.median(t[k]) / 1e9:6.1f} "
                     f"{100 * paired([c.flops / v / 1e9 for v in t[k]], limit):5.0f}%"
                     for k in KINDS]
            print(f"{c.B:>4} {c.H:>5} | " + " | ".join(f"{v:>14}" for v in cells)
                  + f" | {paired(t['blas fwd'], t['wsr fwd']):5.2f}x "
                  f"{paired(t['blas bwd'], t['wsr bwd']):5.2f}x"
                  + f" | {100 * paired(t['pack'], t['wsr fwd']):4.1f}%")
    if len(args.threads) > 1:
        n1, n2 = args.threads[0], args.threads[-1]
        print(f"\nspeed-up of {n2} threads over {n1} (wsr fwd, wsr bwd; blas fwd, blas bwd; "
              f"the same rounds' sgemm):")
        for c in cases:
            ratio = [paired(times[(n1, c.B, c.H, k)], times[(n2, c.B, c.H, k)]) for k in KINDS]
            ratio.append(paired(sgemm[(n2, c.B, c.H)], sgemm[(n1, c.B, c.H)]))
            print(f"{c.B:>4} {c.H:>5} | " + "  ".join(f"{v:5.2f}x" for v in ratio))


def paired(num, den):
    """Median of num[r] / den[r] over the rounds r."""
    return statistics.median(a / b for a, b in zip(num, den))

if __name__ == "__main__":
    main()
