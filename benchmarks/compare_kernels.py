"""The recurrence alone (rnn_ext._wsr) of two builds in one process, timed in turn.

    python benchmarks/compare_kernels.py OLD_TREE NEW_TREE [--H 256,512,1024]
        [--B 16,32,64] [--T 100] [--threads 1] [--rounds 9] [--min-time 0.3]

Each tree is a source checkout built in place (``python setup.py build_ext
--inplace``) or a directory holding a built ``rnn_ext/`` package.  Only the
two ``_wsr`` extension modules are loaded (from their files, under one module
name each time), so each build's kernels, packing and thread pool are its own.

For every (B, H): both builds pack the same W and run the same forward and
backward on the same inputs; the script checks that their results are the
same bits (a kernel change that keeps each element's chain of fused
multiply-adds must).  Then each round times OLD and NEW in turn (in
alternating order), forward then backward, restoring the inputs before every
call (not timed).  Reported: the median over rounds of the per-round speed
ratio NEW/OLD (above 1: the new build is faster), with its range.  As with
compare_inprocess.py, run it with the trees swapped as well.
"""

import argparse
import glob
import importlib.util
import os
import statistics
import time
from functools import partial

import numpy as np


def int_list(text):
    return [int(v) for v in text.split(",") if v]


def load_wsr(tree):
    """The _wsr extension module built in tree/rnn_ext."""
    found = glob.glob(os.path.join(tree, "rnn_ext", "_wsr.*.so")) + glob.glob(
        os.path.join(tree, "rnn_ext", "_wsr.*.pyd"))
    if not found:
        raise SystemExit(f"no built rnn_ext/_wsr module in {tree}: build it in place first")
    spec = importlib.util.spec_from_file_location("rnn_ext._wsr", found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seconds_per_call(call, restore, min_time):
    """Seconds per call over calls totalling at least min_time; restore() runs
    before each call, outside the timing."""
    total, calls = 0.0, 0
    while total < min_time or calls == 0:
        restore()
        start = time.perf_counter()
        call()
        total += time.perf_counter() - start
        calls += 1
    return total / calls


def compare(mods, T, B, H, threads, rounds, min_time):
    rng = np.random.default_rng(B * 10000 + H)
    W = (rng.standard_normal((H, H)) * (0.9 / np.sqrt(H))).astype(np.float32)
    hs0 = rng.standard_normal((T + 1, B, H)).astype(np.float32)
    d0 = rng.standard_normal((T, B, H)).astype(np.float32)
    packed = [m.pack(W) for m in mods]
    results = []
    for m, (fwd, bwd) in zip(mods, packed):
        hs = hs0.copy()
        m.forward_packed(fwd, hs, nthreads=threads)
        d = d0.copy()
        m.backward_packed(bwd, d, hs, nthreads=threads)
        results.append((hs, d))
    same = all(np.array_equal(a, b) for a, b in zip(*results))
    hs_done = results[0][0]
    work, dwork = np.empty_like(hs0), np.empty_like(d0)
    # per kind: (the two builds' calls, the restore before each call)
    kinds = {
        "fwd": ([partial(m.forward_packed, fwd, work, nthreads=threads)
                 for m, (fwd, _) in zip(mods, packed)], partial(np.copyto, work, hs0)),
        "bwd": ([partial(m.backward_packed, bwd, dwork, hs_done, nthreads=threads)
                 for m, (_, bwd) in zip(mods, packed)], partial(np.copyto, dwork, d0)),
    }
    ratios = {kind: [] for kind in kinds}
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for kind, (calls, restore) in kinds.items():
            t = [0.0, 0.0]
            for i in order:
                t[i] = seconds_per_call(calls[i], restore, min_time)
            ratios[kind].append(t[0] / t[1])
    return same, ratios


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--B", type=int_list, default=[16, 32, 64])
    p.add_argument("--H", type=int_list, default=[256, 512, 1024])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per timed block")
    args = p.parse_args(argv)
    mods = [load_wsr(args.old), load_wsr(args.new)]
    print(f"paths: old {mods[0].path()}, new {mods[1].path()}; T={args.T}, "
          f"{args.threads} thread(s), {args.rounds} rounds; speed new/old (above 1: faster)")
    differ = 0
    for H in args.H:
        for B in args.B:
            same, ratios = compare(mods, args.T, B, H, args.threads, args.rounds, args.min_time)
            differ += not same
            cells = "  ".join(
                f"{kind} {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"
                for kind, v in ratios.items())
            print(f"B={B:4d} H={H:5d}  {cells}  {'same bits' if same else 'RESULTS DIFFER'}",
                  flush=True)
    if differ:
        raise SystemExit(f"{differ} case(s) gave different results in the two builds")


if __name__ == "__main__":
    main()
