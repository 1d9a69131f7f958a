"""torch.nn.RNN against rnn_ext.torch.RNN, the drop-in, inside an ordinary PyTorch training step.

    python benchmarks/torch_dropin.py                  # every case, 1 thread
    python benchmarks/torch_dropin.py --threads 2 --rounds 9
    python benchmarks/torch_dropin.py --quick          # fewer rounds, a minute or so

Training step (float32): one-hot characters x (T, B, D) -> RNN -> nn.Linear(H, K)
-> cross_entropy(mean) -> backward -> torch.optim.Adam step, with
``zero_grad`` first: exactly the loop a PyTorch user writes, once with
``torch.nn.RNN`` and once with ``rnn_ext.torch.RNN`` holding the same state
dict (everything else identical and PyTorch's own).  Cases: T=25, B=1, D=K=65,
H=128 (a character model at batch 1) and T=100, B=64, D=K=65, H=512, each with
1 and 2 layers.

One-step inference: a single time step with the state carried over
(``out, h = rnn(x_t, h)`` under ``torch.inference_mode()``), as in generation
or reinforcement learning, at B=1, D=65, H=128.

Both implementations use the same number of threads: ``torch.set_num_threads(n)``
for PyTorch's intra-op pool and ``rnn_ext.set_num_threads(n)`` for the BLAS
rnn_ext's kernels call (scipy's OpenBLAS, via threadpoolctl).  Timing: rounds
interleave the two implementations (the order alternating between rounds),
each round times a block of calls lasting at least --min-time; the table gives
the median time per call over the rounds and the speed-up nn.RNN / rnn_ext.
Before timing, each case checks that both give the same loss and gradients.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import rnn_ext
except ImportError:  # run from a source tree that was built in place
    sys.path.insert(0, os.path.dirname(HERE))
    import rnn_ext
import rnn_ext.torch

IMPLS = {"nn.RNN": torch.nn.RNN, "rnn_ext.torch.RNN": rnn_ext.torch.RNN}
TRAIN_CASES = [  # (T, B, D=K, H, num_layers)
    (25, 1, 65, 128, 1),
    (25, 1, 65, 128, 2),
    (100, 64, 65, 512, 1),
    (100, 64, 65, 512, 2),
]
STEP_CASES = [(1, 65, 128, 1), (1, 65, 128, 2)]  # (B, D, H, num_layers)


class TrainStep:
    """One model (rnn + head + Adam) and its data; ``()`` runs one training step."""

    def __init__(self, rnn_cls, state, head_state, x, y, num_layers):
        D, H, K = x.shape[-1], head_state["weight"].shape[1], head_state["weight"].shape[0]
        self.rnn = rnn_cls(D, H, num_layers=num_layers)
        self.rnn.load_state_dict(state)
        self.head = torch.nn.Linear(H, K)
        self.head.load_state_dict(head_state)
        self.params = [*self.rnn.parameters(), *self.head.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=1e-3)
        self.x, self.y, self.K = x, y, K

    def loss(self):
        out, _ = self.rnn(self.x)
        return torch.nn.functional.cross_entropy(self.head(out).reshape(-1, self.K), self.y)

    def __call__(self):
        self.opt.zero_grad()
        loss = self.loss()
        loss.backward()
        self.opt.step()
        return loss


class OneStep:
    """Carried-state inference, one time step per call."""

    def __init__(self, rnn_cls, state, D, H, num_layers, B):
        self.rnn = rnn_cls(D, H, num_layers=num_layers)
        self.rnn.load_state_dict(state)
        self.rnn.eval()
        g = torch.Generator().manual_seed(1)
        self.xs = torch.nn.functional.one_hot(torch.randint(0, D, (64, 1, B), generator=g),
                                              D).float()
        self.h = torch.zeros(num_layers, B, H)
        self.i = 0

    def __call__(self):
        with torch.inference_mode():
            out, self.h = self.rnn(self.xs[self.i % 64], self.h)
        self.i += 1
        return out


def block_time(fn, min_time):
    """Seconds per call of fn, over a block of calls lasting at least min_time."""
    fn()
    n, elapsed = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n
        n = max(2 * n, int(n * min_time / max(elapsed, 1e-9)) + 1)


def interleaved(fns, rounds, min_time):
    """{name: median seconds per call}, the implementations taking turns each round."""
    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(block_time(fns[name], min_time))
    return {name: statistics.median(t) for name, t in times.items()}


def train_case(T, B, D, H, num_layers, rounds, min_time):
    torch.manual_seed(0)
    ref = torch.nn.RNN(D, H, num_layers=num_layers)
    head = torch.nn.Linear(H, D)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.one_hot(torch.randint(0, D, (T, B), generator=g), D).float()
    y = torch.randint(0, D, (T * B,), generator=g)
    steps = {name: TrainStep(cls, ref.state_dict(), head.state_dict(), x, y, num_layers)
             for name, cls in IMPLS.items()}
    # the same loss and gradients before timing
    losses, grads = [], []
    for step in steps.values():
        step.opt.zero_grad()
        loss = step.loss()
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in step.params])
    assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0]), losses
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), "gradients differ"
    return interleaved(steps, rounds, min_time)


def step_case(B, D, H, num_layers, rounds, min_time):
    torch.manual_seed(0)
    state = torch.nn.RNN(D, H, num_layers=num_layers).state_dict()
    steps = {name: OneStep(cls, state, D, H, num_layers, B) for name, cls in IMPLS.items()}
    outs = [step() for step in steps.values()]
    assert (outs[0] - outs[1]).abs().max() <= 1e-5, "one-step outputs differ"
    return interleaved(steps, rounds, min_time)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for both PyTorch and rnn_ext's BLAS (default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds per timed block (default 0.2)")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.1 s blocks")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.min_time = 3, 0.1
    torch.set_num_threads(args.threads)
    rnn_ext.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, rnn_ext {rnn_ext.__version__}, numpy {np.__version__}, "
          f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
          f"{args.threads} thread(s) each; median of {args.rounds} interleaved rounds, "
          f"blocks >= {args.min_time} s; float32")
    print()
    print("| case | layers | nn.RNN | rnn_ext.torch.RNN | speed-up |")
    print("|---|---:|---:|---:|---:|")

    def row(label, layers, t):
        a, b = t["nn.RNN"], t["rnn_ext.torch.RNN"]
        unit, scale = ("ms", 1e3) if a >= 1e-3 else ("µs", 1e6)
        print(f"| {label} | {layers} | {a * scale:.3g} {unit} | {b * scale:.3g} {unit} "
              f"| {a / b:.2f}x |", flush=True)

    for T, B, D, H, layers in TRAIN_CASES:
        t = train_case(T, B, D, H, layers, args.rounds, args.min_time)
        row(f"train step T={T} B={B} D=K={D} H={H}", layers, t)
    for B, D, H, layers in STEP_CASES:
        t = step_case(B, D, H, layers, args.rounds, args.min_time)
        row(f"one-step inference B={B} D={D} H={H}", layers, t)


if __name__ == "__main__":
    main()
