"""rnn_ext.RNN and the oracle against PyTorch autograd (nn.RNN + nn.Linear + cross_entropy).

PyTorch is an independent implementation of the same network, so agreement
on the loss, the hidden states and every gradient checks both the compiled
model and the oracle.  Ragged batches go through pack_padded_sequence, whose
semantics (zeros past a sequence's length, h_n at its last step) are the
ones rnn_ext implements.
"""

import itertools
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import rnn_ext  # noqa: E402
from rnn_ext import oracle  # noqa: E402

# max |got - want| / max |want|
from_torch = rnn_ext.RNN.from_torch


def to_torch(model):
    return model.to_torch()


TOL = {np.float32: 1e-4, np.float64: 1e-10}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
GRADS = ("U", "W", "V", "b", "c", "h0", "x")


# --- the PyTorch reference ------------------------------------------------------------


def torch_reference(p, x, y, h0, lengths, nonlinearity, reduction, ignore_index,
                    dtype, batch_first):
    """Loss, h, probs, h_last and every gradient by autograd, as float64 numpy arrays.

    p holds U, W, V, b, c (b, c may be None); x, y, h0, lengths are laid out as
    the rnn_ext model takes them (batch-first when batch_first is True)."""
    tdt = TORCH_DTYPE[dtype]
    H, D = p["U"].shape
    K = p["V"].shape[0]
    bias = p["b"] is not None
    rnn = torch.nn.RNN(D, H, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                       dtype=tdt)
    linear = torch.nn.Linear(H, K, bias=bias, dtype=tdt)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(p["U"]))
        rnn.weight_hh_l0.copy_(torch.from_numpy(p["W"]))
        linear.weight.copy_(torch.from_numpy(p["V"]))
        if bias:
            rnn.bias_ih_l0.copy_(torch.from_numpy(p["b"]))
            rnn.bias_hh_l0.zero_()
            linear.bias.copy_(torch.from_numpy(p["c"]))
    if x.dtype.kind in "iu":  # id i is the one-hot e_i
        X = F.one_hot(torch.from_numpy(x).long(), D).to(tdt)
    else:
        X = torch.tensor(x, dtype=tdt, requires_grad=True)
    h0_leaf = torch.tensor(h0, dtype=tdt, requires_grad=True)
    T = x.shape[1] if batch_first else x.shape[0]
    if lengths is None:
        out, h_n = rnn(X, h0_leaf.unsqueeze(0))
        valid = torch.ones(X.shape[:2], dtype=torch.bool)
    else:
        lens = torch.from_numpy(np.asarray(lengths)).long()
        packed = pack_padded_sequence(X, lens, batch_first=batch_first, enforce_sorted=False)
        out_packed, h_n = rnn(packed, h0_leaf.unsqueeze(0))
        out, _ = pad_packed_sequence(out_packed, batch_first=batch_first, total_length=T)
        steps = torch.arange(T)[:, None] < lens[None, :]  # (T, B)
        valid = steps.T if batch_first else steps
    Z = linear(out)
    if y.dtype.kind in "iu":
        target = torch.from_numpy(y).long().clone()
        target[~valid] = ignore_index  # padded rows count nothing
        loss = F.cross_entropy(Z.reshape(-1, K), target.reshape(-1), reduction=reduction,
                               ignore_index=ignore_index)
    else:
        rows = torch.tensor(y, dtype=tdt)
        loss = F.cross_entropy(Z[valid], rows[valid], reduction=reduction)
    loss.backward()

    def grad(t):
        return t.grad.detach().double().numpy()

    result = {
        "loss": loss.item(),
        "h": out.detach().double().numpy(),
        "probs": torch.softmax(Z, -1).detach().double().numpy(),
        "h_last": h_n[0].detach().double().numpy(),
        "U": grad(rnn.weight_ih_l0),
        "W": grad(rnn.weight_hh_l0),
        "V": grad(linear.weight),
        "b": grad(rnn.bias_ih_l0) if bias else None,
        "c": grad(linear.bias) if bias else None,
        "h0": grad(h0_leaf),
        "x": grad(X) if X.requires_grad else None,
    }
    return result


# --- cases ------------------------------------------------------------------------------------


def make_case(seed, nonlinearity, dtype, inputs, targets, reduction, bias, ragged,
              batch_first, T=5, B=3, D=4, H=6, K=5, torch_init=False):
    """Random problem in the model's layout, every float already rounded to dtype.

    Small cases use large weights so that every term matters; torch_init=True
    draws the parameters as PyTorch initialises them, U(-1/sqrt(H), 1/sqrt(H)),
    which keeps a long recurrence well conditioned (with the large weights W's
    spectral radius is ~4 and 50 steps of BPTT lose ~8 digits in any
    implementation, PyTorch's and the oracle's included)."""
    rng = np.random.default_rng(seed)
    ignore_index = -1 if seed % 2 else -100

    def floats(*shape, scale=1.0):
        return (scale * rng.uniform(-1, 1, size=shape)).astype(dtype)

    s = 1 / np.sqrt(H) if torch_init else 1.0
    p = {"U": floats(H, D, scale=s), "W": floats(H, H, scale=0.8 * s),
         "V": floats(K, H, scale=1.5 * s), "b": floats(H, scale=s) if bias else None,
         "c": floats(K, scale=s) if bias else None}
    tb = (B, T) if batch_first else (T, B)
    x = rng.integers(0, D, size=tb) if inputs == "ids" else floats(*tb, D)
    if targets == "ids":
        y = rng.integers(0, K, size=tb)
        y[rng.uniform(size=tb) < 0.2] = ignore_index
        y[(0, 0)] = 1  # at least one counted target, so torch's mean is defined
    else:
        y = rng.uniform(0, 1, size=tb + (K,))
        y = (y / y.sum(-1, keepdims=True)).astype(dtype)  # probability rows, as torch wants
    lengths = None
    if ragged:
        lengths = rng.integers(1, T + 1, size=B)
        lengths[0] = T
    return {"p": p, "x": x, "y": y, "h0": floats(B, H, scale=0.5), "lengths": lengths,
            "nonlinearity": nonlinearity, "reduction": reduction,
            "ignore_index": ignore_index, "dtype": dtype, "batch_first": batch_first}


CASES = []
for i, (nonlinearity, dtype, inputs, targets, reduction) in enumerate(itertools.product(
    ("tanh", "relu"), (np.float32, np.float64), ("ids", "floats"), ("ids", "rows"),
    ("sum", "mean"),
)):
    # bits of i: 0 reduction, 1 targets, 2 inputs, 3 dtype, 4 nonlinearity; the
    # flags below mix them so each flag meets every value of every axis
    bit = [(i >> k) & 1 for k in range(5)]
    bias = i % 3 != 2
    ragged = (bit[0] ^ bit[1] ^ bit[2]) == 0
    batch_first = (bit[0] ^ bit[3] ^ bit[4]) == 1
    case_id = (f"{nonlinearity}-{np.dtype(dtype).name}-x_{inputs}-y_{targets}-{reduction}"
               f"{'' if bias else '-nobias'}{'-ragged' if ragged else ''}"
               f"{'-batch_first' if batch_first else ''}")
    CASES.append(pytest.param(
        make_case(i, nonlinearity, dtype, inputs, targets, reduction, bias, ragged, batch_first),
        id=case_id,
    ))
CASES64 = [c for c in CASES if c.values[0]["dtype"] is np.float64]


def rel_err(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    scale = np.max(np.abs(want)) if want.size else 0.0
    diff = np.max(np.abs(got - want)) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def assert_all_close(got, want, tol):
    """got and want map names to arrays (or None); every pair must agree within tol."""
    failures = []
    for name, w in want.items():
        g = got[name]
        if w is None or g is None:
            if (w is None) != (g is None):
                failures.append(f"{name}: one is None ({g is None=}, {w is None=})")
            continue
        err = rel_err(g, w)
        if not err <= tol:
            failures.append(f"{name}: max relative difference {err:.3g} > {tol:g}")
    assert not failures, "\n".join(failures)


def make_model(case):
    p, dtype = case["p"], case["dtype"]
    H, D = p["U"].shape
    model = rnn_ext.RNN(D, H, p["V"].shape[0], bias=p["b"] is not None,
                        nonlinearity=case["nonlinearity"], dtype=dtype,
                        batch_first=case["batch_first"])
    for name, value in p.items():
        if value is not None:
            setattr(model, name, value)
    return model


def reference(case):
    keys = ("x", "y", "h0", "lengths", "nonlinearity", "reduction", "ignore_index", "dtype",
            "batch_first")
    return torch_reference(case["p"], **{k: case[k] for k in keys})


# --- the compiled model against PyTorch -----------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_model_matches_torch(case):
    want = reference(case)
    model = make_model(case)
    kw = {"h0": case["h0"], "lengths": case["lengths"]}
    loss, g = model.loss_and_grad(case["x"], case["y"], reduction=case["reduction"],
                                  ignore_index=case["ignore_index"], **kw)
    out = model.forward(case["x"], **kw)
    tol = TOL[case["dtype"]]
    assert isinstance(loss, float)
    assert abs(loss - want["loss"]) <= tol * max(1.0, abs(want["loss"]))
    for a in (out.h, out.probs, out.h_last, g.U, g.W, g.V, g.h0, g.h_last):
        assert a.dtype == case["dtype"]
    got = {"h": out.h, "probs": out.probs, "h_last": out.h_last, **{n: getattr(g, n) for n in GRADS}}
    assert_all_close(got, {k: want[k] for k in got}, tol)
    assert_all_close({"h_last": g.h_last}, {"h_last": want["h_last"]}, tol)


@pytest.mark.parametrize("case", CASES)
def test_model_loss_and_grad_V_match_torch(case):
    want = reference(case)
    model = make_model(case)
    kw = {"h0": case["h0"], "lengths": case["lengths"], "reduction": case["reduction"],
          "ignore_index": case["ignore_index"]}
    tol = TOL[case["dtype"]]
    loss, dV, dc = model.grad_V(case["x"], case["y"], **kw)
    assert abs(model.loss(case["x"], case["y"], **kw) - want["loss"]) <= tol * max(1.0, abs(want["loss"]))
    assert abs(loss - want["loss"]) <= tol * max(1.0, abs(want["loss"]))
    assert_all_close({"V": dV, "c": dc}, {"V": want["V"], "c": want["c"]}, tol)


# --- the oracle against PyTorch (float64) ------------------------------------------------------


def _time_major(a, batch_first):
    if a is None or not batch_first:
        return a
    return np.swapaxes(a, 0, 1)


@pytest.mark.parametrize("case", CASES64)
def test_oracle_matches_torch(case):
    want = reference(case)
    bf = case["batch_first"]
    p = {k: (v.tolist() if v is not None else None) for k, v in case["p"].items()}
    args = dict(
        **p, x=_time_major(case["x"], bf).tolist(), y=_time_major(case["y"], bf).tolist(),
        h0=case["h0"].tolist(), lengths=None if case["lengths"] is None else case["lengths"].tolist(),
        nonlinearity=case["nonlinearity"],
    )
    loss, g = oracle.loss_and_grad(**args, reduction=case["reduction"],
                                   ignore_index=case["ignore_index"])
    fwd_args = {k: v for k, v in args.items() if k != "y"}
    out = oracle.forward(**fwd_args)
    tol = TOL[np.float64]
    assert abs(loss - want["loss"]) <= tol * max(1.0, abs(want["loss"]))
    got = {"h": _time_major(np.array(out["h"]), bf), "probs": _time_major(np.array(out["probs"]), bf),
           "h_last": out["h_last"], "h_last_grads": g["h_last"],
           **{n: (None if g[n] is None else np.array(g[n])) for n in GRADS}}
    got["x"] = _time_major(got["x"], bf)
    want = {**want, "h_last_grads": want["h_last"]}
    assert_all_close(got, {k: want[k] for k in got}, tol)


# --- from_torch / to_torch -------------------------------------------------------------------------


@pytest.mark.parametrize("tdtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_from_torch_computes_what_torch_computes(tdtype, bias, batch_first, nonlinearity):
    torch.manual_seed(0)
    D, H, K, T, B = 3, 5, 4, 6, 2
    rnn = torch.nn.RNN(D, H, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                       dtype=tdtype)
    linear = torch.nn.Linear(H, K, bias=bias, dtype=tdtype)
    model = from_torch(rnn, linear)
    dtype = np.float64 if tdtype == torch.float64 else np.float32
    assert model.dtype == dtype
    assert (model.input_size, model.hidden_size, model.output_size) == (D, H, K)
    assert model.bias == bias and model.batch_first == batch_first
    assert model.nonlinearity == nonlinearity
    x = torch.randn((B, T, D) if batch_first else (T, B, D), dtype=tdtype)
    out, h_n = rnn(x)
    probs = torch.softmax(linear(out), -1)
    res = model.forward(x.numpy())
    tol = TOL[dtype]
    assert rel_err(res.h, out.detach().numpy()) <= tol
    assert rel_err(res.probs, probs.detach().numpy()) <= tol
    assert rel_err(res.h_last, h_n[0].detach().numpy()) <= tol
    if bias:  # b is the sum of PyTorch's two hidden biases
        b = rnn.bias_ih_l0.detach().double() + rnn.bias_hh_l0.detach().double()
        np.testing.assert_array_equal(model.b, b.numpy().astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_to_torch_round_trip(dtype, bias):
    model = rnn_ext.RNN(3, 5, 4, bias=bias, nonlinearity="relu", dtype=dtype, seed=1,
                        batch_first=True)
    rnn, linear = to_torch(model)
    assert rnn.weight_ih_l0.dtype == TORCH_DTYPE[dtype] and linear.weight.dtype == TORCH_DTYPE[dtype]
    assert rnn.batch_first and rnn.nonlinearity == "relu" and rnn.bias == bias
    assert (linear.bias is not None) == bias
    np.testing.assert_array_equal(rnn.weight_ih_l0.detach().numpy(), model.U)
    np.testing.assert_array_equal(rnn.weight_hh_l0.detach().numpy(), model.W)
    np.testing.assert_array_equal(linear.weight.detach().numpy(), model.V)
    if bias:
        np.testing.assert_array_equal(rnn.bias_ih_l0.detach().numpy(), model.b)
        assert not rnn.bias_hh_l0.detach().any()
        np.testing.assert_array_equal(linear.bias.detach().numpy(), model.c)
    back = from_torch(rnn, linear)
    assert back.dtype == model.dtype and back.batch_first and back.nonlinearity == "relu"
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], value, err_msg=name)
    x = np.random.default_rng(2).integers(0, 3, size=(2, 7))  # (B, T) ids
    np.testing.assert_array_equal(back.forward(x).probs, model.forward(x).probs)
    # the class-level entry points delegate here
    back = rnn_ext.RNN.from_torch(*model.to_torch())
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(back.parameters()[name], value, err_msg=name)


def test_from_torch_dtype_argument():
    rnn, linear = torch.nn.RNN(2, 3), torch.nn.Linear(3, 2)  # float32
    model = from_torch(rnn, linear, dtype=np.float64)
    assert model.dtype == np.float64
    np.testing.assert_array_equal(model.U, rnn.weight_ih_l0.detach().double().numpy())
    half = torch.nn.RNN(2, 3, dtype=torch.float16), torch.nn.Linear(3, 2, dtype=torch.float16)
    with pytest.raises(ValueError, match="float32 or float64"):
        from_torch(*half)
    assert from_torch(*half, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="different dtypes"):
        from_torch(torch.nn.RNN(2, 3, dtype=torch.float64), torch.nn.Linear(3, 2))


@pytest.mark.parametrize(
    "rnn_kw, linear_args, linear_kw, error, match",
    [
        ({"bidirectional": True}, (3, 2), {}, ValueError, "in_features"),
        ({}, (4, 2), {}, ValueError, "in_features"),
        ({"bias": False}, (3, 2), {}, ValueError, "bias"),
        ({}, (3, 2), {"bias": False}, ValueError, "bias"),
    ],
    ids=["bidirectional_size_mismatch", "size_mismatch", "rnn_without_bias", "linear_without_bias"],
)
def test_from_torch_rejects_what_rnn_ext_cannot_hold(rnn_kw, linear_args, linear_kw, error, match):
    rnn = torch.nn.RNN(2, 3, **rnn_kw)
    linear = torch.nn.Linear(*linear_args, **linear_kw)
    with pytest.raises(error, match=match):
        from_torch(rnn, linear)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="torch.nn.RNN"):
        from_torch(torch.nn.LSTM(2, 3), torch.nn.Linear(3, 2))
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        from_torch(torch.nn.RNN(2, 3), torch.nn.Identity())


def test_missing_torch_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"PyTorch is required .*pip install rnn-ext\[torch\]"):
        from_torch(object(), object())
    with pytest.raises(ImportError, match="PyTorch is required"):
        to_torch(rnn_ext.RNN(2, 3, 2))


# --- parity at a realistic size ----------------------------------------------------------------


def test_model_matches_torch_at_report_size(capsys):
    """T=50, B=8, D=K=30, H=64, float64 (the numbers benchmarks/parity_report.py prints)."""
    case = make_case(2024, "tanh", np.float64, "ids", "ids", "sum", True, True, False,
                     T=50, B=8, D=30, H=64, K=30, torch_init=True)
    want = reference(case)
    model = make_model(case)
    loss, g = model.loss_and_grad(case["x"], case["y"], h0=case["h0"], lengths=case["lengths"],
                                  ignore_index=case["ignore_index"])
    errs = {"loss": abs(loss - want["loss"]) / abs(want["loss"])}
    errs.update({n: rel_err(getattr(g, n), want[n]) for n in ("U", "W", "V", "b", "c", "h0")})
    with capsys.disabled():
        print("\nmax relative difference to PyTorch:",
              ", ".join(f"{n} {e:.1e}" for n, e in errs.items()))
    assert max(errs.values()) <= TOL[np.float64], errs
