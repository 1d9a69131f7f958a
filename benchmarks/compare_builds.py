"""Two builds of rnn_ext side by side: the same calls timed in turn, A B A B ...

    python benchmarks/compare_builds.py OLD_TREE NEW_TREE [--rounds 7] [--threads 1]

Each tree is a source checkout built in place (``python setup.py build_ext
--inplace``).  For every case (the single-layer grid of bench.py: T, B, D=K, H;
float32 ids) and operation, each round runs one timing process per tree, in
alternating order; a process times the call in a loop for --min-time seconds
after a warm-up and prints seconds per call.  Reported: the median per tree and
the median of the per-round ratios NEW/OLD (below 1: the new build is faster).
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, rnn_ext
T, B, DK, H, threads, min_time = map(float, sys.argv[2:8]); op = sys.argv[8]
T, B, DK, H, threads = int(T), int(B), int(DK), int(H), int(threads)
rnn_ext.set_num_threads(threads)
m = rnn_ext.RNN(DK, H, DK, seed=0)
rng = np.random.default_rng(0)
x = rng.integers(0, DK, size=(T, B)); y = rng.integers(0, DK, size=(T, B))
call = {"forward": lambda: m.forward(x), "loss_and_grad": lambda: m.loss_and_grad(x, y)}[op]
for _ in range(3):
    call()
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < min_time:
    call(); n += 1
print(json.dumps((time.perf_counter() - t0) / n))
"""


def time_once(tree, case, threads, min_time, op):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", WORKER, os.path.abspath(tree), *map(str, case),
                          str(threads), str(min_time), op],
                         capture_output=True, text=True, check=True, cwd="/", env=env)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", type=float, default=0.3)
    p.add_argument("--ops", default="forward,loss_and_grad")
    p.add_argument("--T", default="25,100")
    p.add_argument("--B", default="1,32")
    p.add_argument("--DK", default="65,256")
    p.add_argument("--H", default="64,128,256,1024")
    a = p.parse_args()
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    cases = list(itertools.product(ints(a.T), ints(a.B), ints(a.DK), ints(a.H)))
    print("| T | B | D=K | H | op | old ms | new ms | new/old |\n|---|---|---|---|---|---|---|---|")
    for case in cases:
        for op in a.ops.split(","):
            old, new, ratio = [], [], []
            for r in range(a.rounds):
                order = (a.old, a.new) if r % 2 == 0 else (a.new, a.old)
                got = {tree: time_once(tree, case, a.threads, a.min_time, op) for tree in order}
                old.append(got[a.old])
                new.append(got[a.new])
                ratio.append(got[a.new] / got[a.old])
            print(f"| {' | '.join(map(str, case))} | {op} | {1e3 * statistics.median(old):.3f} | "
                  f"{1e3 * statistics.median(new):.3f} | {statistics.median(ratio):.3f} |",
                  flush=True)


if __name__ == "__main__":
    main()
