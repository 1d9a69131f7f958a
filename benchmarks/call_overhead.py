"""The fixed cost of one call: forward, loss, loss_and_grad and step on a tiny model.

    python benchmarks/call_overhead.py
    python benchmarks/call_overhead.py --H 128 --T 1 --B 1

With T = B = 1 and D = H = K = 2 (the defaults) a pass's arithmetic is a few
nanoseconds, so the time per call is what every call pays whatever its size:
argument checks, the kernel call, the result arrays and objects.  ``step``
is called as generation calls it: an int id and the state the previous
step returned.  Each call
is timed with timeit, best of --repeat runs of --number calls (the best, not
the median: the fixed cost is the floor, and anything above it is the machine
doing something else).  The BLAS runs on one thread (rnn_ext.threads(1)).
"""

import argparse
import platform
import timeit

import numpy as np

import rnn_ext


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--D", type=int, default=2, help="input size = output size")
    parser.add_argument("--H", type=int, default=2)
    parser.add_argument("--T", type=int, default=1)
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--number", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)

    m = rnn_ext.RNN(args.D, args.H, args.D, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, args.D, size=(args.T, args.B))
    y = rng.integers(0, args.D, size=(args.T, args.B))
    # step as generation calls it: an int id and the state the last step returned
    x_t = int(x[0, 0])
    h, _ = m.step(x_t)
    h_layer = m.layer.step(x_t)
    calls = {
        "forward(x)": lambda: m.forward(x),
        "loss(x, y)": lambda: m.loss(x, y),
        "loss_and_grad(x, y)": lambda: m.loss_and_grad(x, y),
        "step(x_t, h)": lambda: m.step(x_t, h),
        "layer.step(x_t, h)": lambda: m.layer.step(x_t, h_layer),
    }
    print(f"rnn_ext {rnn_ext.__version__}; {platform.processor() or platform.machine()}; "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"T={args.T} B={args.B} D=K={args.D} H={args.H} float32; "
          f"best of {args.repeat} x {args.number} calls")
    with rnn_ext.threads(1):
        for name, call in calls.items():
            call()
            best = min(timeit.repeat(call, number=args.number, repeat=args.repeat))
            print(f"  {name:<22} {best / args.number * 1e6:7.2f} us/call")


if __name__ == "__main__":
    main()
