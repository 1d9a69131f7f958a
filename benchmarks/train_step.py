"""A complete training step, rnn_ext against PyTorch, in characters per second.

    python benchmarks/train_step.py                          # the three cases below, 1 and 2 threads
    python benchmarks/train_step.py --case 512,64,100 --threads 2 --rounds 9

One step = forward and backward through the whole sequence, gradient
clipping by value (5.0) and an Adam update (lr 1e-3), float32, a character
vocabulary D = K = 65 (integer ids in, integer targets out):

    rnn_ext  model.loss_and_grad(x, y); Adam.step(g, clip_value=5) (the clip in the
             update's loop, as rnn_ext.training.Trainer steps)
    torch    nn.RNN + nn.Linear + cross_entropy(reduction="sum"), backward,
             clip_grad_value_(params, 5), torch.optim.Adam.step (the ids as a
             one-hot float tensor made once, outside the timing)

Cases (H, B, T): (512, 64, 100), (1024, 32, 100), (128, 1, 25).  Per case,
round after round, every thread count takes its turn: the same run's large
sgemm (benchmarks/roofline.py, the limit) is timed once, then rnn_ext and
PyTorch one block each (a block loops the step for at least --min-time
seconds).  The machine's speed drifts between rounds, so every ratio is a
median of per-round ratios, each from timings taken side by side: rnn_ext
against PyTorch, GFLOP/s as % of that round's sgemm, and two threads against
one (for rnn_ext, PyTorch and sgemm alike).  Times are medians over --rounds
rounds; characters per second = T*B / time.  GFLOP/s counts the fwd+bwd
arithmetic 6·T·B·(D·H + H·H + H·K).  Thread counts: rnn_ext.threads(n) and
torch.set_num_threads(n).
"""

import argparse
import os
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

from rnn_ext.optim import Adam

CASES = ((512, 64, 100), (1024, 32, 100), (128, 1, 25))
DK = 65


def rnn_ext_step(H, B, T, x, y):
    model = rnn_ext.RNN(DK, H, DK, seed=0)
    opt = Adam(model, lr=1e-3)

    def step():
        _, g = model.loss_and_grad(x, y)
        opt.step(g, clip_value=5.0)

    return step


def torch_step(H, B, T, x, y):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    rnn = torch.nn.RNN(DK, H, nonlinearity="tanh")
    lin = torch.nn.Linear(H, DK)
    params = list(rnn.parameters()) + list(lin.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    xt = F.one_hot(torch.from_numpy(x), DK).float()
    yt = torch.from_numpy(y).reshape(-1)

    def step():
        opt.zero_grad(set_to_none=True)
        h, _ = rnn(xt)
        loss = F.cross_entropy(lin(h).reshape(-1, DK), yt, reduction="sum")
        loss.backward()
        torch.nn.utils.clip_grad_value_(params, 5.0)
        opt.step()

    return step


def set_threads(n):
    rnn_ext.set_num_threads(n)
    try:
        import torch
        torch.set_num_threads(n)
    except ImportError:
        pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help="H,B,T (repeatable); default: the three above")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--sgemm-size", type=int, default=2048, help="the limit's sgemm, n x n x n")
    args = ap.parse_args(argv)
    cases = [tuple(int(v) for v in c.split(",")) for c in args.case] if args.case else CASES
    counts = [int(n) for n in args.threads.split(",")]
    try:
        import torch
    except ImportError:
        torch = None
    print(f"{roofline.cpu_name()}; rnn_ext {rnn_ext.__version__}, recurrence path "
          f"{rnn_ext._kernels.wsr_path()}; torch {torch.__version__ if torch else '-'}")
    rows = []
    for H, B, T in cases:
        rng = np.random.default_rng(0)
        x = rng.integers(0, DK, (T, B))
        y = rng.integers(0, DK, (T, B))
        impls = {"rnn_ext": rnn_ext_step(H, B, T, x, y)}
        if torch is not None:
            impls["torch"] = torch_step(H, B, T, x, y)
        flop = 6.0 * T * B * (DK * H + H * H + H * DK)
        for n in counts:  # warm-up
            set_threads(n)
            for fn in impls.values():
                roofline.timed(fn, args.min_time / 3)
        times = {(n, k): [] for n in counts for k in impls}
        limit = {n: [] for n in counts}
        for _ in range(args.rounds):
            for n in counts:
                set_threads(n)
                limit[n].append(roofline.sgemm_gflops(args.sgemm_size, n, repeat=1)[0])
                if n > 1:
                    time.sleep(0.1)  # the BLAS's threads stop spinning
                for k, fn in impls.items():
                    times[n, k].append(roofline.timed(fn, args.min_time))
        for n in counts:
            ours = times[n, "rnn_ext"]
            med = {k: statistics.median(times[n, k]) for k in impls}
            frac = statistics.median(flop / t / 1e9 / g for t, g in zip(ours, limit[n]))
            ratio = (statistics.median(p / o for p, o in zip(times[n, "torch"], ours))
                     if "torch" in impls else float("nan"))
            rows.append(dict(threads=n, H=H, B=B, T=T, ms=med, gflops=flop / med["rnn_ext"] / 1e9,
                             sgemm=statistics.median(limit[n]), of_sgemm=frac, vs_torch=ratio))
            print(f"threads {n}  H={H:5d} B={B:3d} T={T:3d}  rnn_ext {med['rnn_ext'] * 1e3:8.2f} ms "
                  f"({T * B / med['rnn_ext']:10.0f} chars/s, {flop / med['rnn_ext'] / 1e9:6.1f} GFLOP/s, "
                  f"{100 * frac:3.0f}% of sgemm {statistics.median(limit[n]):.0f})"
                  + (f"  torch {med['torch'] * 1e3:8.2f} ms ({T * B / med['torch']:10.0f} chars/s)"
                     f"  rnn_ext/torch speed {ratio:5.2f}x" if "torch" in impls else ""),
                  flush=True)
        if len(counts) > 1:
            n1, n2 = counts[0], counts[-1]
            gain = {k: statistics.median(a / b for a, b in zip(times[n1, k], times[n2, k]))
                    for k in impls}
            gain["sgemm"] = statistics.median(b / a for a, b in zip(limit[n1], limit[n2]))
            rows[-1]["speedup"] = gain
            print(f"          {n2} threads over {n1}: "
                  + ", ".join(f"{k} {v:.2f}x" for k, v in gain.items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
