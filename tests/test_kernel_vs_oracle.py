"""The compiled path against the pure-Python oracle, over a grid of small shapes.

Every case runs the model in float32 and float64 and the oracle on the very
same parameters and inputs (converted to Python floats), so the difference
measures only the kernel's rounding.  A failure names the case.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import rnn_ext
from rnn_ext import oracle

# Relative error max|got - want| / max|want| allowed, per dtype and per kind of
# result: 8x the worst seen over this module's whole grid (840 cases per
# dtype; measured on x86-64 with scipy's OpenBLAS, the float32 tanh/exp loops
# on AVX2).  "loss": the loss (worst seen 5.8e-8 in float32, 3.3e-16 in
# float64).  "out": the forward pass and the output side of the gradient (h,
# probs, h_last, dV, dc; worst 1.41e-6 and 3.7e-15).  "bptt": the gradients
# carried back through time (dU, dW, db, dh0, dx; worst 1.04e-5 and 2.3e-14,
# where the sums cancel).  A bias of 5e-5 in float32's dV exceeds "out".
RTOL = {
    np.float32: {"loss": 5e-7, "out": 1.2e-5, "bptt": 8.5e-5},
    np.float64: {"loss": 3e-15, "out": 3e-14, "bptt": 2e-13},
}
KIND = {"h": "out", "probs": "out", "h_last": "out", "V": "out", "c": "out",
        "U": "bptt", "W": "bptt", "b": "bptt", "h0": "bptt", "x": "bptt"}
SHAPES = [  # (T, B, D, H, K)
    (T, B, D, H, K)
    for (T, B), (D, H, K) in itertools.product(
        [(1, 1), (2, 3), (3, 2), (6, 1), (5, 3)],
        [(1, 1, 1), (1, 3, 2), (4, 2, 5), (7, 5, 3), (3, 7, 7), (6, 4, 1)],
    )
]
OPTIONS = ["plain", "relu", "lengths", "ignore", "soft", "mean", "h0"]


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(np.abs(want).max(initial=0.0), 1e-30)
    return float(np.abs(got - want).max(initial=0.0) / scale)


def make_case(T, B, D, H, K, *, dtype, bias, inp, option, seed=0):
    rng = np.random.default_rng([T, B, D, H, K, bias, inp == "ids", OPTIONS.index(option), seed])
    model = rnn_ext.RNN(D, H, K, bias=bias, dtype=dtype, seed=int(rng.integers(1 << 30)),
                        nonlinearity="relu" if option == "relu" else "tanh")
    # weights larger than the default init, so the recurrence matters
    model.W = rng.normal(scale=0.8, size=(H, H))
    x = rng.integers(0, D, size=(T, B)) if inp == "ids" else rng.normal(size=(T, B, D)).astype(dtype)
    if option == "soft":
        y = rng.random((T, B, K)).astype(dtype)
    else:
        y = rng.integers(0, K, size=(T, B))
        if option == "ignore":
            y[rng.random((T, B)) < 0.4] = -100
    kw = {"reduction": "mean" if option in ("mean", "ignore") else "sum"}
    if option == "lengths":
        kw["lengths"] = rng.integers(1, T + 1, size=B)
    if option == "h0":
        kw["h0"] = rng.normal(size=(B, H)).astype(dtype)
    return model, x, y, kw


def oracle_args(model):
    p = {n: (None if a is None else a.tolist()) for n, a in
         [("U", model.U), ("W", model.W), ("V", model.V), ("b", model.b), ("c", model.c)]}
    return dict(p, nonlinearity=model.nonlinearity)


def listify(kw):
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}


CASES = [
    pytest.param(shape, dtype, bias, inp, option,
                 id=f"T{shape[0]}B{shape[1]}D{shape[2]}H{shape[3]}K{shape[4]}-{np.dtype(dtype).name}"
                    f"-{'bias' if bias else 'nobias'}-{inp}-{option}")
    for shape in SHAPES
    for dtype in (np.float32, np.float64)
    for bias in (True, False)
    for inp in ("ids", "float")
    for option in OPTIONS
]


@pytest.mark.parametrize("shape, dtype, bias, inp, option", CASES)
def test_loss_and_grad_match_oracle(shape, dtype, bias, inp, option):
    model, x, y, kw = make_case(*shape, dtype=dtype, bias=bias, inp=inp, option=option)
    loss, g = model.loss_and_grad(x, y, **kw)
    want_loss, want = oracle.loss_and_grad(x=x.tolist(), y=y.tolist(), **oracle_args(model),
                                           **listify(kw))
    tol = RTOL[dtype]
    assert abs(loss - want_loss) <= tol["loss"] * max(abs(want_loss), 1e-30)
    for name in ("U", "W", "V", "b", "c", "h0", "x", "h_last"):
        got = getattr(g, name)
        if want[name] is None:
            assert got is None, name
            continue
        assert got.dtype == dtype, name
        err = rel_err(got, want[name])
        assert err <= tol[KIND[name]], f"d{name}: relative error {err:.3g} > {tol[KIND[name]]:g}"


@pytest.mark.parametrize("shape, dtype, bias, inp, option", CASES)
def test_forward_loss_grad_v_match_oracle(shape, dtype, bias, inp, option):
    model, x, y, kw = make_case(*shape, dtype=dtype, bias=bias, inp=inp, option=option)
    tol = RTOL[dtype]
    fkw = {k: v for k, v in kw.items() if k in ("h0", "lengths")}
    out = model.forward(x, **fkw)
    want = oracle.forward(x=x.tolist(), **oracle_args(model), **listify(fkw))
    for name in ("h", "probs", "h_last"):
        got = getattr(out, name)
        assert got.dtype == dtype
        assert rel_err(got, want[name]) <= tol["out"], name
    args = dict(x=x.tolist(), y=y.tolist(), **oracle_args(model), **listify(kw))
    want_loss = oracle.loss(**args)
    assert abs(model.loss(x, y, **kw) - want_loss) <= tol["loss"] * max(abs(want_loss), 1e-30)
    loss, dV, dc = model.grad_V(x, y, **kw)
    _, want_dV, want_dc = oracle.grad_V(**args)
    assert abs(loss - want_loss) <= tol["loss"] * max(abs(want_loss), 1e-30)
    assert dV.dtype == dtype and rel_err(dV, want_dV) <= tol["out"]
    if bias:
        assert dc.dtype == dtype and rel_err(dc, want_dc) <= tol["out"]
    else:
        assert dc is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inp", ["ids", "float"])
def test_unbatched_matches_batch_of_one(dtype, inp):
    model, x, y, kw = make_case(5, 1, 4, 6, 3, dtype=dtype, bias=True, inp=inp, option="plain")
    loss_b, gb = model.loss_and_grad(x, y)
    loss_u, gu = model.loss_and_grad(x[:, 0], y[:, 0])
    assert loss_u == loss_b
    np.testing.assert_array_equal(gu.h0, gb.h0[0])
    np.testing.assert_array_equal(gu.h_last, gb.h_last[0])
    np.testing.assert_array_equal(gu.W, gb.W)
    if inp == "float":
        np.testing.assert_array_equal(gu.x, gb.x[:, 0])


def test_inputs_are_not_modified():
    model, x, y, kw = make_case(4, 3, 5, 6, 4, dtype=np.float64, bias=True, inp="float", option="h0")
    ys = np.random.default_rng(1).random((4, 3, 4))
    lengths = np.array([4, 1, 2])
    before = [a.copy() for a in (x, y, ys, kw["h0"], lengths)]
    params = {n: a.copy() for n, a in model.parameters().items()}
    model.forward(x, h0=kw["h0"], lengths=lengths)
    model.loss_and_grad(x, y, h0=kw["h0"], lengths=lengths)
    model.loss_and_grad(x, ys, h0=kw["h0"], lengths=lengths, reduction="mean")
    for a, b in zip((x, y, ys, kw["h0"], lengths), before):
        np.testing.assert_array_equal(a, b)
    for n, a in model.parameters().items():
        np.testing.assert_array_equal(a, params[n])


def test_large_transposed_gather_path_matches_strided():
    # T*B >= D takes the transposed-U gather and scatter; T*B < D the strided
    # one.  Both must give the same answer.
    model = rnn_ext.RNN(50, 8, 6, dtype=np.float64, seed=3)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 50, size=(7, 8))
    y = rng.integers(0, 6, size=(7, 8))
    loss_all, g_all = model.loss_and_grad(x, y)
    loss_sum = 0.0
    dU = np.zeros_like(model.U)
    for b in range(8):  # one sequence at a time: T*B = 7 < D = 50
        loss_b, g_b = model.loss_and_grad(x[:, b:b + 1], y[:, b:b + 1])
        loss_sum += loss_b
        dU += g_b.U
    assert abs(loss_sum - loss_all) <= 1e-12 * abs(loss_all)
    np.testing.assert_allclose(dU, g_all.U, rtol=1e-12, atol=1e-14)
