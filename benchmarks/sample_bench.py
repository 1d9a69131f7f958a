"""Text generation at B = 1: ``rnn_ext.text.sample`` and ``model.step``.

    python benchmarks/sample_bench.py                    # the default model of `rnn-ext train`
    python benchmarks/sample_bench.py --model m.npz      # a model file written by `rnn-ext train`
    PYTHONPATH=OTHER_TREE python benchmarks/sample_bench.py   # another build, same script

The default model is the one ``rnn-ext train`` builds with its defaults: the
vocabulary of the default corpus (CPython's ``pydoc_data.topics``, 103
characters), hidden size 128, one layer, tanh, float32.  Nothing is trained:
the weights are the seed-0 initialisation (the speed does not depend on their
values; ``--model`` times a trained file instead).

Measured, in turn, round after round (``--rounds``, default 7; the median
over rounds is reported):

- ``sample``: ``sample(model, prime="The ", length=N, temperature=0.8,
  seed=round)`` (N = ``--length``, default 10,000), in characters per second;
  also with ``--top-k`` (default 10) and greedy (temperature 0);
- ``model.step``: ``h, p = model.step(id, h)`` with the state carried, one
  block of ``--calls`` calls (default 100,000), in microseconds per call;
  likewise ``model.layer.step(id, h)`` (the states only, no output layer).

Only public API is called, so the script times any build: put a tree built in
place first on PYTHONPATH to compare (``rnn_ext.__file__`` is printed).  The
BLAS runs at its default thread count, as a user's would; ``--threads N``
pins it.  Run from the checkout root after building in place.
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import rnn_ext
except ImportError:  # run from a source tree that was built in place
    sys.path.insert(0, ROOT)
    import rnn_ext
import roofline  # noqa: E402 (after rnn_ext, which it imports)

from rnn_ext.text import Vocab, default_corpus, sample


def default_model(hidden, dtype):
    """The model `rnn-ext train` makes with its defaults, untrained (seed 0)."""
    vocab = Vocab.from_text(default_corpus())
    m = rnn_ext.RNN(len(vocab), hidden, len(vocab), dtype=dtype, seed=0)
    m.vocab = vocab
    return m


def time_sample(m, length, seed, **kw):
    t0 = time.perf_counter()
    text = sample(m, prime="The ", length=length, seed=seed, **kw)
    dt = time.perf_counter() - t0
    assert len(text) == length
    return dt


def time_steps(step, x_id, h, calls):
    """Seconds per call of ``h = step(x_id, h)`` (the state carried)."""
    t0 = time.perf_counter()
    for _ in range(calls):
        h = step(x_id, h)
    return (time.perf_counter() - t0) / calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", metavar="NPZ", help="a model file (default: the default-size model)")
    ap.add_argument("--hidden", type=int, default=128, help="hidden size of the default model")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--length", type=int, default=10_000, help="characters per sample call")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=10, help="top_k of the top-k sample row")
    ap.add_argument("--calls", type=int, default=100_000, help="step calls per timed block")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="pin the BLAS thread count")
    args = ap.parse_args(argv)

    if args.threads is not None:
        rnn_ext.set_num_threads(args.threads)
    m = rnn_ext.load(args.model) if args.model else default_model(args.hidden, np.dtype(args.dtype))
    K, H = m.output_size, m.hidden_size
    x_id = int(m.vocab.encode("e")[0]) if "e" in m.vocab else 0

    def model_step(x, h):
        return m.step(x, h)[0]

    samples = {
        f"sample T={args.temperature:g}": dict(temperature=args.temperature),
        f"sample T={args.temperature:g} top_k={args.top_k}": dict(temperature=args.temperature,
                                                                 top_k=args.top_k),
        "sample greedy": dict(temperature=0),
    }
    steps = {"model.step": model_step, "model.layer.step": m.layer.step}
    h0 = np.zeros((m.num_layers, H), dtype=m.dtype)
    # warm-up: imports, the BLAS's first calls, the thread controller
    for kw in samples.values():
        time_sample(m, min(args.length, 1000), 0, **kw)
    for step in steps.values():
        time_steps(step, x_id, h0, 1000)

    times: dict[str, list[float]] = {k: [] for k in (*samples, *steps)}
    for r in range(args.rounds):
        for k, kw in samples.items():
            times[k].append(time_sample(m, args.length, r, **kw))
        for k, step in steps.items():
            times[k].append(time_steps(step, x_id, h0, args.calls))

    print(f"rnn_ext {rnn_ext.__version__} from {os.path.dirname(rnn_ext.__file__)}")
    print(f"{roofline.cpu_name()}, {os.cpu_count()} cores; Python {platform.python_version()}, "
          f"numpy {np.__version__}; load average {os.getloadavg()[0]:.2f}")
    print(f"model: {'file ' + args.model if args.model else 'default size, untrained'}: "
          f"K = D = {K}, H = {H}, {m.num_layers} layer(s), {m.dtype.name}; "
          f"median of {args.rounds} rounds")
    for k in samples:
        t = statistics.median(times[k])
        print(f"  {k:28s} {args.length / t:12,.0f} chars/s   ({t * 1e3:.1f} ms for {args.length:,})")
    for k in steps:
        t = statistics.median(times[k])
        print(f"  {k:28s} {t * 1e6:12.2f} us/call  (B = 1, state carried)")
    return times


if __name__ == "__main__":
    main()
