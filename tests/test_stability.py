"""Numerical stability: huge logits, very long sequences, and how the loss is summed.

docs/reliability.md states what these tests hold the kernel to:
- the softmax is computed with the row maximum subtracted, so logits of any
  finite size (here 1e4 and 1e30) give a finite loss and finite gradients;
- a contractive recurrence runs T = 10 000 steps without overflow or NaN, in
  both dtypes, and stays on the float64 NumPy reference;
- the loss of a float32 model is accumulated in float64 (each row's term is
  formed in double from the float32 logits), so summing 10^5 rows loses no
  more than float64 does, where a float32 running sum would drop whole rows;
- a recurrence that really overflows (relu with weights > 1) gives inf/NaN or
  a ValueError: never a crash, never an unrelated exception.
"""

import math

import numpy as np
import pytest
from test_properties import reference

import rnn_ext

DTYPES = [np.float32, np.float64]
# Errors allowed against the float64 NumPy reference: about 8x the worst seen
# in this module (x86-64, scipy's OpenBLAS).  "loss": relative (worst seen
# 3.7e-8 in float32, 2.2e-15 in float64).  "values": max |error| / max(1,
# max |want|) of hidden states and gradients (2.4e-6 and 7.0e-15, at
# T = 10 000).  "saturated": the same for the gradients in the huge-logits
# tests, where h = ±(1 - tiny) and float32's 1 - h² keeps only a few bits
# (9.5e-5; float64 6.1e-16).
TOL = {
    np.dtype(np.float32): {"loss": 3e-7, "values": 2e-5, "saturated": 8e-4},
    np.dtype(np.float64): {"loss": 2e-14, "values": 6e-14, "saturated": 6e-14},
}


def params64(m):
    return {n: None if a is None else a.astype(np.float64)
            for n, a in ((n, getattr(m, n)) for n in ("U", "W", "V", "b", "c"))}


def assert_close(got, want, dtype, what, kind="values"):
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(np.asarray(got, np.float64) - want).max())
    tol = TOL[np.dtype(dtype)][kind]
    assert err <= tol * scale, f"{what}: max error {err:.3g} at scale {scale:.3g} > {tol:g}"


def check_all_finite(loss, g):
    assert math.isfinite(loss), loss
    for name, a in g.parameters().items():
        assert np.isfinite(a).all(), name
    assert np.isfinite(g.h0).all()
    if g.x is not None:
        assert np.isfinite(g.x).all()


# --- logits of magnitude 1e4 (and 1e30) ---------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("magnitude", [1e4, 1e30])
@pytest.mark.parametrize("via", ["V", "c"])
def test_huge_logits_give_finite_loss_and_gradients(dtype, magnitude, via):
    T, B, D, H, K = 6, 3, 4, 5, 7
    m = rnn_ext.RNN(D, H, K, dtype=dtype, seed=1)
    rng = np.random.default_rng(0)
    m.U = 10 * m.U / np.abs(m.U).max()        # saturate h at about ±1
    if via == "V":
        m.V = magnitude / H * rng.choice([-1.0, 1.0], size=(K, H))
    else:
        m.c = magnitude * rng.choice([-1.0, 1.0], size=K)
    x = rng.integers(0, D, size=(T, B))
    y = rng.integers(0, K, size=(T, B))
    out = m.forward(x)
    assert np.isfinite(out.probs).all() and np.isfinite(out.h).all()
    np.testing.assert_allclose(out.probs.sum(-1), 1, rtol=1e-5)
    loss, g = m.loss_and_grad(x, y)
    check_all_finite(loss, g)
    # the loss is of the size of the logits, and right to the dtype's precision
    ref = reference(params64(m), False, x, y, np.zeros((B, H)), None)
    assert loss == pytest.approx(ref["loss"], rel=TOL[np.dtype(dtype)]["loss"])
    assert loss > magnitude / 10, "targets were drawn at random, so some are far from the argmax"
    for name in ("V", "c", "W", "U", "b"):
        assert_close(getattr(g, name), ref["d" + name], dtype, name, "saturated")
    # the output-layer gradient is a difference of probabilities: |dz| <= 1 per row
    assert np.abs(g.c).max() <= T * B + 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_with_soft_targets_and_mean(dtype):
    T, B, D, H, K = 5, 2, 3, 4, 6
    m = rnn_ext.RNN(D, H, K, dtype=dtype, seed=2)
    m.c = np.linspace(-1e4, 1e4, K)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, D))
    y = rng.dirichlet(np.ones(K), size=(T, B))
    loss, g = m.loss_and_grad(x, y, reduction="mean")
    check_all_finite(loss, g)
    ref = reference(params64(m), False, x.astype(dtype).astype(np.float64),
                    y.astype(dtype).astype(np.float64), np.zeros((B, H)), None, "mean")
    assert loss == pytest.approx(ref["loss"], rel=TOL[np.dtype(dtype)]["loss"])


# --- T = 10 000 ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("kind", ["ids", "floats"])
def test_ten_thousand_steps(dtype, nonlinearity, kind):
    T, B, D, H, K = 10_000, 2, 5, 8, 5
    m = rnn_ext.RNN(D, H, K, nonlinearity=nonlinearity, dtype=dtype, seed=3)
    # spectral norm 0.9: the recurrence neither explodes nor needs to
    W = m.W.astype(np.float64)
    m.W = 0.9 * W / np.linalg.norm(W, 2)
    rng = np.random.default_rng(2)
    x = rng.integers(0, D, size=(T, B)) if kind == "ids" else rng.standard_normal((T, B, D))
    y = rng.integers(0, K, size=(T, B))
    lengths = np.array([T, T // 3])
    out = m.forward(x, lengths=lengths)
    assert np.isfinite(out.h).all() and np.isfinite(out.probs).all()
    loss, g = m.loss_and_grad(x, y, lengths=lengths)
    check_all_finite(loss, g)
    xr = x if kind == "ids" else x.astype(dtype).astype(np.float64)
    ref = reference(params64(m), nonlinearity == "relu", xr, y, np.zeros((B, H)), lengths)
    assert loss == pytest.approx(ref["loss"], rel=TOL[np.dtype(dtype)]["loss"])
    assert_close(out.h, ref["h"], dtype, "h")
    assert_close(out.h_last, ref["h_last"], dtype, "h_last")
    for name in ("U", "W", "V", "b", "c"):
        assert_close(getattr(g, name), ref["d" + name], dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_overflowing_recurrence_is_not_a_crash(dtype):
    """relu with W = 3 I doubles h at every step: it reaches inf in a few hundred
    steps, then inf - inf = NaN in the logits.  That is the model's math, not an
    input error: the passes return (inf/NaN in the results) or refuse with
    ValueError, and nothing else happens."""
    m = rnn_ext.RNN(3, 4, 5, nonlinearity="relu", dtype=dtype, seed=0)
    m.W = 3 * np.eye(4)
    m.U = np.abs(m.U) + 0.1
    m.b = np.abs(m.b) + 0.1
    T, B = 1000, 2
    x = np.zeros((T, B), np.int64)
    y = np.zeros((T, B), np.int64)
    ys = np.full((T, B, 5), 0.2)
    for call in (lambda: m.forward(x), lambda: m.loss(x, y), lambda: m.grad_V(x, ys),
                 lambda: m.loss_and_grad(x, y), lambda: m.loss_and_grad(x, ys, reduction="mean")):
        try:
            r = call()
        except ValueError as exc:
            assert str(exc)
            continue
        loss = r if isinstance(r, float) else r[0] if isinstance(r, tuple) else None
        if loss is not None:
            assert not math.isfinite(loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tiny_and_subnormal_inputs(dtype):
    """Inputs far below 1 (float32 subnormals included) flow through untouched."""
    tiny = np.finfo(dtype).smallest_subnormal
    m = rnn_ext.RNN(3, 4, 5, dtype=dtype, seed=4)
    x = np.full((7, 2, 3), tiny, dtype=dtype)
    h0 = np.full((2, 4), tiny, dtype=dtype)
    ys = np.full((7, 2, 5), tiny, dtype=dtype)
    loss, g = m.loss_and_grad(x, ys, h0=h0)
    check_all_finite(loss, g)
    assert 0 <= loss < 1e-20


# --- the float32 loss is accumulated in float64 ----------------------------------------

@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_float32_loss_accumulates_in_float64(reduction):
    """One row with a large loss, then 10^5 rows whose loss is below half an ulp
    of the running total in float32.  A float32 running sum would stay stuck at
    the first row's loss (relative error ~1.5e-3); the kernel sums in double,
    so the float32 model gives the float64 model's loss to ~1e-10."""
    T, B, K = 1000, 100, 2
    rows = T * B
    # V = 0 and c = 0: every logit is 0 and every row's softmax is (1/2, 1/2),
    # so a target row y costs exactly (y_0 + y_1) log 2
    models = {}
    for dt in DTYPES:
        m = rnn_ext.RNN(1, 1, K, dtype=dt, seed=0)
        m.V = np.zeros((K, 1))
        m.c = np.zeros(K)
        models[dt] = m
    big, small = 2.0**14, 2.0**-12          # exact in float32
    y = np.zeros((T, B, K))
    y[..., 0] = small
    y[0, 0, 0] = big
    x = np.zeros((T, B), np.int64)
    exact = (big + (rows - 1) * small) * math.log(2)
    if reduction == "mean":
        exact /= rows
    l32 = models[np.float32].loss(x, y, reduction=reduction)
    l64 = models[np.float64].loss(x, y, reduction=reduction)
    assert l64 == pytest.approx(exact, rel=1e-10)
    assert l32 == pytest.approx(l64, rel=1e-9)
    # ... and the test can tell: a float32 running sum of the same row losses is far off
    terms = (y.sum(-1) * np.float32(math.log(2))).astype(np.float32).reshape(-1)
    naive = np.cumsum(terms, dtype=np.float32)[-1] / (rows if reduction == "mean" else 1)
    assert abs(float(naive) - exact) / exact > 1e-3
    # the same holds for the loss returned with the gradients
    assert models[np.float32].loss_and_grad(x, y, reduction=reduction)[0] == pytest.approx(l64, rel=1e-9)


def test_float32_loss_close_to_float64_at_large_T_times_B():
    """Random ids, T*B = 128 000 rows: the float32 model's loss is within 1e-5 of
    the float64 model's with the same parameters (the float32 error is in the
    hidden states and logits, not in the sum)."""
    T, B, D, H, K = 2000, 64, 20, 16, 30
    m32 = rnn_ext.RNN(D, H, K, dtype=np.float32, seed=5)
    m64 = rnn_ext.RNN(D, H, K, dtype=np.float64, seed=5)
    for n, a in m32.parameters().items():
        setattr(m64, n, a)  # the float32 values, exactly
    rng = np.random.default_rng(3)
    x = rng.integers(0, D, size=(T, B))
    y = rng.integers(0, K, size=(T, B))
    l32, l64 = m32.loss(x, y), m64.loss(x, y)
    assert abs(l32 - l64) / l64 < 1e-5, (l32, l64)
    mean32, mean64 = m32.loss(x, y, reduction="mean"), m64.loss(x, y, reduction="mean")
    assert abs(mean32 - mean64) / mean64 < 1e-5
