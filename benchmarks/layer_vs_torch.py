"""rnn_ext.Recurrent against torch.nn.RNN: forward + backward from an upstream
gradient, same configuration, same thread count, interleaved in one run.

    python benchmarks/layer_vs_torch.py                     # the issue's two sizes
    python benchmarks/layer_vs_torch.py --T 100 --B 32 --D 256 --H 256 --layers 2 --bidirectional

Each round times one block of each implementation in turn (a block loops the
call for --min-time seconds); reported: the median ms per call and the median
of the per-round ratios torch/rnn_ext (above 1: rnn_ext is faster).
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

try:
    import rnn_ext
except ImportError:  # run from a source tree that was built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import rnn_ext


def block(fn, min_time):
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def case(T, B, D, H, L, bidir, threads, rounds, min_time):
    torch.set_num_threads(threads)
    rnn_ext.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rnn = torch.nn.RNN(D, H, L, bidirectional=bidir)
    layer = rnn_ext.Recurrent.from_torch(rnn)
    dirs = 2 if bidir else 1
    x = rng.normal(size=(T, B, D)).astype(np.float32)
    d_out = rng.normal(size=(T, B, dirs * H)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    dt = torch.tensor(d_out)

    def ours():
        fwd = layer.forward(x)
        layer.backward(fwd, d_out)

    def theirs():
        out, _ = rnn(xt)
        torch.autograd.grad(out, [xt, *rnn.parameters()], dt)

    for fn in (ours, theirs):
        fn()
    a, b, r = [], [], []
    for _ in range(rounds):
        ta, tb = block(ours, min_time), block(theirs, min_time)
        a.append(ta), b.append(tb), r.append(tb / ta)
    return statistics.median(a), statistics.median(b), statistics.median(r)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int)
    p.add_argument("--B", type=int)
    p.add_argument("--D", type=int)
    p.add_argument("--H", type=int)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-time", type=float, default=0.2)
    a = p.parse_args()
    if a.T is None:
        sizes = [(100, 32, 256, 256, 2, True), (25, 1, 65, 128, 2, True)]
    else:
        sizes = [(a.T, a.B, a.D, a.H, a.layers, a.bidirectional)]
    print(f"torch {torch.__version__}, rnn_ext {rnn_ext.__version__}, float32, fwd+bwd\n")
    print("| T | B | D | H | layers | dirs | threads | rnn_ext ms | torch ms | torch/rnn_ext |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for T, B, D, H, L, bidir in sizes:
        for threads in (int(t) for t in a.threads.split(",")):
            ours, theirs, ratio = case(T, B, D, H, L, bidir, threads, a.rounds, a.min_time)
            print(f"| {T} | {B} | {D} | {H} | {L} | {2 if bidir else 1} | {threads} | "
                  f"{1e3 * ours:.3f} | {1e3 * theirs:.3f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
