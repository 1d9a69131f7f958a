"""Two builds of rnn_ext in one process, their calls interleaved round by round.

    python benchmarks/compare_inprocess.py OLD_TREE NEW_TREE [--threads 1]
        [--T 100] [--B 64] [--DK 65] [--H 512] [--op loss_and_grad] [--rounds 11]

Each tree is a source checkout built in place (``python setup.py build_ext
--inplace``) or a directory holding a built ``rnn_ext/`` package.  The first
is imported, its modules are taken out of ``sys.modules``, and the second is
imported the same way, so the process holds both: the extension modules are
different files, so each build keeps its own code, state and thread pool.

compare_builds.py times each build in processes of its own; on a machine
whose speed drifts within minutes, or where each process's memory layout
differs, the spread between such processes (2-4 % for the same build twice
on a 2-core AMD Zen 3 guest) hides changes of that size.  Here every round
times OLD and NEW back to back (in alternating order) on the same arrays, and
the reported ratio is the median of the per-round ratios NEW/OLD (below 1:
the new build is faster).  Both builds must give the same loss.  Run it with
the trees swapped as well: the same build against a copy of itself read
1.014 and 1.030 (T = 100, B = 32, H = 128, 15 rounds), the tree loaded
second a little slower.
"""

import argparse
import statistics
import sys
import time

import numpy as np


def load(tree):
    """Import rnn_ext from `tree` and forget it in sys.modules (so that the
    next load imports the other tree); returns the package."""
    sys.path.insert(0, tree)
    try:
        import rnn_ext
    finally:
        sys.path.remove(tree)
    for name in [n for n in sys.modules if n == "rnn_ext" or n.startswith("rnn_ext.")]:
        del sys.modules[name]
    return rnn_ext


def per_call(call, min_time):
    """Seconds per call, calling for at least min_time seconds."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time:
        call()
        n += 1
    return (time.perf_counter() - t0) / n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--B", type=int, default=64)
    p.add_argument("--DK", type=int, default=65, help="D = K; the inputs are ids")
    p.add_argument("--H", type=int, default=512)
    p.add_argument("--op", choices=("forward", "loss_and_grad"), default="loss_and_grad")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per timing")
    a = p.parse_args(argv)

    libs = [load(a.old), load(a.new)]
    if libs[0].__file__ == libs[1].__file__:
        sys.exit("OLD and NEW are the same package")
    rng = np.random.default_rng(0)
    x = rng.integers(0, a.DK, size=(a.T, a.B))
    y = rng.integers(0, a.DK, size=(a.T, a.B))
    calls = []
    for lib in libs:
        lib.set_num_threads(a.threads)
        m = lib.RNN(a.DK, a.H, a.DK, seed=0)
        calls.append(
            (lambda m=m: m.forward(x)) if a.op == "forward" else (lambda m=m: m.loss_and_grad(x, y))
        )
    if a.op == "loss_and_grad":
        losses = [c()[0] for c in calls]
        if not np.isclose(losses[0], losses[1], rtol=1e-5):
            sys.exit(f"the builds disagree: loss {losses[0]!r} against {losses[1]!r}")
    for c in calls:
        for _ in range(3):
            c()

    times = ([], [])
    for r in range(a.rounds):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            libs[i].set_num_threads(a.threads)
            times[i].append(per_call(calls[i], a.min_time))
    # a call that imported a module of the package lazily would have found
    # neither tree's rnn_ext in sys.modules and imported one from sys.path
    stray = sorted(n for n in sys.modules if n == "rnn_ext" or n.startswith("rnn_ext."))
    if stray:
        sys.exit(
            f"a call imported {', '.join(stray)} again from sys.path: the timings may mix builds"
        )
    ratios = [new / old for old, new in zip(*times)]
    print(
        f"{a.threads} thread(s), T={a.T} B={a.B} D=K={a.DK} H={a.H} {a.op}, {a.rounds} rounds: "
        f"old {1e3 * statistics.median(times[0]):.3f} ms, new {1e3 * statistics.median(times[1]):.3f} ms, "
        f"new/old {statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
