"""The optimizer step and a complete training step at B=1, against loss_and_grad alone.

    python benchmarks/optim_step.py                    # T=25, B=1, D=K=65, H=128, float32
    python benchmarks/optim_step.py --baseline main    # also the optim/clip of a git ref

Times, per call: ``Adam.step(g)``, ``clip_grad_value(g, 5)``, ``loss_and_grad``
alone, and a complete training step two ways: ``loss_and_grad``,
``clip_grad_value``, ``Adam.step``; and ``loss_and_grad``,
``Adam.step(g, clip_value=5)`` (the clip in the update's loop, as
rnn_ext.training.Trainer does it).  With ``--baseline REF``
the modules rnn_ext/optim.py and rnn_ext/clip.py of that git ref are loaded
beside the current ones (as the package ``baseline``, whose ``_flat`` is the
current build's compiled loops: this compares the Python side only) and timed
on the same model in the same rounds.  Every
operation is timed in turn, one short block each, repeated ``--rounds``
times; the reported time is the median over rounds of each block's best
call average, so a busy neighbour on a shared machine moves single blocks,
not the median.  Run from the checkout root after building in place.
"""

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
try:
    import rnn_ext
except ImportError:  # run from a source tree that was built in place
    sys.path.insert(0, ROOT)
    import rnn_ext
from rnn_ext.clip import clip_grad_value
from rnn_ext.optim import Adam


def load_baseline(ref):
    """rnn_ext/optim.py and clip.py of git ref ``ref``, as modules baseline.optim, baseline.clip."""
    where = tempfile.mkdtemp(prefix="rnn_ext_baseline_")
    for name in ("optim", "clip"):
        text = subprocess.run(["git", "-C", ROOT, "show", f"{ref}:rnn_ext/{name}.py"],
                              check=True, capture_output=True, text=True).stdout
        with open(os.path.join(where, f"{name}.py"), "w") as f:
            f.write(text)
    pkg = types.ModuleType("baseline")
    # their `from . import _flat` takes the current compiled loops
    pkg.__path__ = [where, os.path.dirname(rnn_ext.__file__)]
    sys.modules["baseline"] = pkg
    return importlib.import_module("baseline.optim"), importlib.import_module("baseline.clip")


def block(fn, calls, repeat=3):
    """Best average seconds per call over ``repeat`` runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=25)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--DK", type=int, default=65)
    ap.add_argument("--H", type=int, default=128)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--calls", type=int, default=20, help="calls per timed block")
    ap.add_argument("--baseline", metavar="REF", help="git ref whose optim.py/clip.py to time too")
    args = ap.parse_args(argv)

    rnn_ext.set_num_threads(1)
    m = rnn_ext.RNN(args.DK, args.H, args.DK, dtype=np.dtype(args.dtype), seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, args.DK, (args.T, args.B))
    y = rng.integers(0, args.DK, (args.T, args.B))
    _, g = m.loss_and_grad(x, y)
    n_params = sum(p.size for p in m.parameters().values())
    flat = getattr(m, "flat", None) is not None and getattr(g, "flat", None) is not None

    opt = Adam(m)
    ops = {
        "Adam.step": lambda: opt.step(g),
        "clip_grad_value": lambda: clip_grad_value(g, 5.0),
        "loss_and_grad": lambda: m.loss_and_grad(x, y),
    }

    def train_step(opt=opt, clip=clip_grad_value):
        _, gg = m.loss_and_grad(x, y)
        clip(gg, 5.0)
        opt.step(gg)

    ops["training step"] = train_step

    def train_step_fused(opt=opt):
        _, gg = m.loss_and_grad(x, y)
        opt.step(gg, clip_value=5.0)

    ops["training step, clip in step"] = train_step_fused
    if args.baseline:
        old_optim, old_clip = load_baseline(args.baseline)
        old = old_optim.Adam(m)
        ops["Adam.step (baseline)"] = lambda: old.step(g)
        ops["clip_grad_value (baseline)"] = lambda: old_clip.clip_grad_value(g, 5.0)
        ops["training step (baseline)"] = lambda: train_step(old, old_clip.clip_grad_value)

    for fn in ops.values():  # warm-up
        block(fn, 2, 1)
    times = {k: [] for k in ops}
    for _ in range(args.rounds):
        for k, fn in ops.items():
            times[k].append(block(fn, args.calls))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"T={args.T} B={args.B} D=K={args.DK} H={args.H} {args.dtype}, {n_params} parameters, "
          f"gradients {'with' if flat else 'without'} .flat; median of {args.rounds} rounds")
    lg = med["loss_and_grad"]
    for k, t in med.items():
        ratio = f"  {t / lg:.2f}x loss_and_grad" if k.startswith("training step") else ""
        print(f"  {k:28s} {t * 1e6:9.1f} us{ratio}")
    return med


if __name__ == "__main__":
    main()
