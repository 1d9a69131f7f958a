"""Print how far rnn_ext (and its oracle) land from PyTorch autograd, per gradient.

    python benchmarks/parity_report.py [--T 50] [--B 8] [--D 30] [--H 64] [--K 30] [--seed 0]

float64 throughout, parameters drawn as PyTorch draws them, a ragged batch
(lengths through pack_padded_sequence) and sum-reduced cross-entropy.  Each
entry is max |a - b| / max |b|, with b the PyTorch (or oracle) value.
"""

import argparse
import time

import numpy as np

import rnn_ext
from rnn_ext import oracle

NAMES = ("loss", "h", "h_last", "U", "W", "V", "b", "c", "h0", "x")


def torch_run(model, x, y, h0, lengths):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rnn, linear = model.to_torch()
    T, B = y.shape
    D, K = model.input_size, model.output_size
    if x.dtype.kind in "iu":
        X = torch.nn.functional.one_hot(torch.from_numpy(x), D).double()
    else:
        X = torch.tensor(x, requires_grad=True)
    h0_t = torch.tensor(h0, requires_grad=True)
    lens = torch.from_numpy(lengths)
    packed = pack_padded_sequence(X, lens, enforce_sorted=False)
    out, h_n = rnn(packed, h0_t[None])
    out, _ = pad_packed_sequence(out, total_length=T)
    target = torch.from_numpy(y).clone()
    target[torch.arange(T)[:, None] >= lens[None, :]] = -100  # padded rows count nothing
    loss = torch.nn.functional.cross_entropy(linear(out).reshape(-1, K), target.reshape(-1),
                                             reduction="sum")
    loss.backward()
    return {"loss": loss.item(), "h": out.detach().numpy(), "h_last": h_n[0].detach().numpy(),
            "U": rnn.weight_ih_l0.grad.numpy(), "W": rnn.weight_hh_l0.grad.numpy(),
            "V": linear.weight.grad.numpy(), "b": rnn.bias_ih_l0.grad.numpy(),
            "c": linear.bias.grad.numpy(), "h0": h0_t.grad.numpy(),
            "x": None if x.dtype.kind in "iu" else X.grad.numpy()}


def model_run(model, x, y, h0, lengths):
    loss, g = model.loss_and_grad(x, y, h0=h0, lengths=lengths)
    out = model.forward(x, h0=h0, lengths=lengths)
    return {"loss": loss, "h": out.h, "h_last": out.h_last,
            **{n: getattr(g, n) for n in ("U", "W", "V", "b", "c", "h0", "x")}}


def oracle_run(model, x, y, h0, lengths):
    p = {n: a.tolist() for n, a in model.parameters().items()}
    args = dict(p, x=x.tolist(), h0=h0.tolist(), lengths=lengths.tolist(),
                nonlinearity=model.nonlinearity)
    loss, g = oracle.loss_and_grad(**args, y=y.tolist())
    out = oracle.forward(**args)
    return {"loss": loss, "h": out["h"], "h_last": out["h_last"],
            **{n: g[n] for n in ("U", "W", "V", "b", "c", "h0", "x")}}


def rel(a, b):
    if a is None or b is None:
        return None
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in [("T", 50), ("B", 8), ("D", 30), ("H", 64), ("K", 30), ("seed", 0)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("PyTorch is required for this report: pip install rnn-ext[torch]") from None
    torch.set_num_threads(1)
    print(f"T={a.T} B={a.B} D={a.D} H={a.H} K={a.K} float64, rnn_ext {rnn_ext.__version__}, "
          f"torch {torch.__version__}")
    rng = np.random.default_rng(a.seed)
    lengths = rng.integers(1, a.T + 1, size=a.B)
    lengths[0] = a.T
    y = rng.integers(0, a.K, size=(a.T, a.B))
    h0 = rng.uniform(-0.5, 0.5, size=(a.B, a.H))
    for nonlinearity, inputs in [("tanh", "ids"), ("tanh", "floats"), ("relu", "floats")]:
        model = rnn_ext.RNN(a.D, a.H, a.K, nonlinearity=nonlinearity, dtype=np.float64,
                            seed=a.seed)
        if inputs == "ids":
            x = rng.integers(0, a.D, size=(a.T, a.B))
        else:
            x = rng.standard_normal((a.T, a.B, a.D))
        ref = torch_run(model, x, y, h0, lengths)
        got = model_run(model, x, y, h0, lengths)
        t0 = time.perf_counter()
        orc = oracle_run(model, x, y, h0, lengths)
        t_oracle = time.perf_counter() - t0
        print(f"\n{nonlinearity}, x {inputs} (oracle took {t_oracle:.1f} s)")
        print(f"{'':8s}{'rnn_ext vs torch':>18s}{'oracle vs torch':>18s}{'rnn_ext vs oracle':>19s}")
        for n in NAMES:
            cols = [rel(got[n], ref[n]), rel(orc[n], ref[n]), rel(got[n], orc[n])]
            if cols[0] is None:
                continue
            print(f"{n:8s}" + "".join(f"{c:18.1e}" for c in cols[:2]) + f"{cols[2]:19.1e}")


if __name__ == "__main__":
    main()
