"""ONNX Runtime against rnn_ext's forward on the exported default model.

The default model is what ``rnn-ext train`` builds with its defaults: H=128,
tanh, bias, float32, the vocabulary of CPython's pydoc topics (the default
corpus), integer-id input.  (Trained weights take the same room in the file as
fresh ones, so a seeded model stands in for a trained one.)

Prints the exported file's size, the largest relative difference between the
two (max |ort - rnn_ext| / max |rnn_ext| over probs and h_n), and the time of
one forward pass at T=100, B=32: the two calls interleaved, REPEATS rounds,
medians.  Each side uses its own default threading (ONNX Runtime: one
intra-op thread per core; rnn_ext: chosen per pass), then one thread each.

    python benchmarks/onnx_bench.py [--repeats 30] [--T 100] [--B 32]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import onnxruntime as ort

import rnn_ext
import rnn_ext.onnx as ro
from rnn_ext.text import Vocab, default_corpus


def interleaved(calls, repeats):
    """Median seconds per call, the calls taking turns within each round."""
    times = {name: [] for name in calls}
    for fn in calls.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--B", type=int, default=32)
    args = ap.parse_args()

    vocab = Vocab.from_text(default_corpus())
    K, H = len(vocab), 128
    model = rnn_ext.RNN(K, H, K, seed=0)
    model.vocab = vocab
    rng = np.random.default_rng(0)
    x = rng.integers(0, K, size=(args.T, args.B))
    h0 = np.zeros((1, args.B, H), np.float32)
    lengths = np.full(args.B, args.T)

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        ro.export(model, path)
        size = os.path.getsize(path)
        params = sum(a.nbytes for a in model.parameters().values())
        print(f"default model: vocab {K}, hidden {H}; {path.rsplit('/', 1)[1]} {size:,} bytes "
              f"({params:,} bytes of float32 parameters); onnxruntime {ort.__version__}, "
              f"{os.cpu_count()} cores")
        feed = {"x": x, "h0": h0, "lengths": lengths}
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        probs, h_n = sess.run(None, feed)
        want = model.forward(x)
        diff = max(np.abs(probs - want.probs).max() / np.abs(want.probs).max(),
                   np.abs(h_n[0] - want.h_last).max() / np.abs(want.h_last).max())
        print(f"max relative difference (probs, h_n): {diff:.2e}")

        one = ort.SessionOptions()
        one.intra_op_num_threads = 1
        one.inter_op_num_threads = 1
        sess1 = ort.InferenceSession(path, one, providers=["CPUExecutionProvider"])
        for label, s, threads in (("default threads", sess, None), ("1 thread each", sess1, 1)):
            def rnn_forward(threads=threads):
                if threads is None:
                    return model.forward(x)
                with rnn_ext.threads(threads):
                    return model.forward(x)

            med = interleaved({"onnxruntime": lambda s=s: s.run(None, feed),
                               "rnn_ext": rnn_forward}, args.repeats)
            print(f"forward T={args.T} B={args.B}, {label}: onnxruntime "
                  f"{med['onnxruntime'] * 1e3:.2f} ms, rnn_ext {med['rnn_ext'] * 1e3:.2f} ms "
                  f"(onnxruntime / rnn_ext = {med['onnxruntime'] / med['rnn_ext']:.2f}); "
                  f"medians of {args.repeats}")


if __name__ == "__main__":
    main()
