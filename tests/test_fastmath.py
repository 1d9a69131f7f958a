"""Bounds on the float32 tanh and exp approximations of src/_fastmath.h.

They are reached through the public API: with U = I, W = 0 and no bias,
one time step gives h = tanh(x) exactly as the kernel computes it, and
probs = softmax(V h) exercises the exp loop.  float64 must stay libm-exact.
"""

import math

import numpy as np
import pytest

import rnn_ext


def ulp_error(got32: np.ndarray, exact: np.ndarray) -> float:
    """Error of float32 results in units in the last place of the exact value."""
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return float((np.abs(got32.astype(np.float64) - exact) / spacing).max())


def tanh_through_kernel(x: np.ndarray, dtype) -> np.ndarray:
    # one step, one unit, the values spread over the batch: h = tanh(1 * x)
    m = rnn_ext.RNN(1, 1, 1, bias=False, dtype=dtype)
    m.U = np.ones((1, 1))
    m.W = np.zeros((1, 1))
    return m.forward(x.reshape(1, -1, 1).astype(dtype)).h.ravel()


@pytest.mark.parametrize("lo, hi", [(-10.0, 10.0), (-1.0, 1.0), (-1e-3, 1e-3)])
def test_float32_tanh_within_a_few_ulp(lo, hi):
    x = np.linspace(lo, hi, 2001, dtype=np.float32)
    got = tanh_through_kernel(x, np.float32)
    assert got.dtype == np.float32
    exact = np.tanh(x.astype(np.float64))
    assert ulp_error(got, exact) <= 7
    assert np.all(np.abs(got) <= 1)


def test_float32_tanh_special_values():
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0, 3e38, -3e38], dtype=np.float32)
    got = tanh_through_kernel(x, np.float32)
    np.testing.assert_array_equal(got, np.tanh(x))


def test_float64_tanh_is_libm_exact():
    x = np.linspace(-10, 10, 1001)
    exact = np.array([math.tanh(v) for v in x])
    np.testing.assert_array_equal(tanh_through_kernel(x, np.float64), exact)


@pytest.mark.parametrize("spread", [1.0, 30.0, 200.0])
def test_float32_softmax_within_a_few_ulp(spread):
    # relu, no bias, U = 1: h = 1 exactly, so the logits are V's column as
    # stored and every error left is the softmax's own
    K = 257
    rng = np.random.default_rng(int(spread))
    m = rnn_ext.RNN(1, 1, K, bias=False, nonlinearity="relu", dtype=np.float32)
    m.U = np.ones((1, 1))
    m.W = np.zeros((1, 1))
    m.V = rng.normal(scale=spread, size=(K, 1))
    out = m.forward(np.zeros((3, 2), dtype=np.int64))
    z = np.broadcast_to(m.V[:, 0].astype(np.float64), out.probs.shape)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    big = p > 1e-30  # below that float32 flushes toward the exp(-87) floor
    rel = np.abs(out.probs.astype(np.float64) - p)[big] / p[big]
    # float32 rounds z - max z to half an ulp of its size, which exp turns
    # into that much relative error; beyond it allow a few ulp of exp, sum
    # and division
    allowed = (np.abs(z - z.max(-1, keepdims=True))[big] + 8) * 2.0**-23
    assert np.all(rel <= allowed)


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 6, 7, 8, 9, 65])
def test_float32_softmax_finds_the_max_wherever_it_is(K):
    # the softmax takes each row's max in four interleaved runs (src/_output.pxd);
    # a max it missed would leave exp(z - max) overflowing at logits this far apart
    for where in range(K):
        z = np.linspace(-1000.0, -900.0, K)
        z[where] = 1000.0
        m = rnn_ext.RNN(1, 1, K, bias=False, nonlinearity="relu", dtype=np.float32)
        m.U = np.ones((1, 1))
        m.W = np.zeros((1, 1))
        m.V = z.reshape(K, 1)
        x = np.zeros((1, 1), dtype=np.int64)
        y = np.full((1, 1), (where + 1) % K)
        probs = m.forward(x).probs.ravel()
        assert probs[where] == 1
        # the others at the exp(-87) floor of src/_fastmath.h, ~1.6e-38
        assert np.all(np.delete(probs, where) < 1e-37)
        loss, g = m.loss_and_grad(x, y)
        # -log p_y = logsumexp(z) - z_y = 1000 - z_y (the others are e^-1900 below)
        assert loss == pytest.approx(1000.0 - z[(where + 1) % K], rel=1e-6) if K > 1 else loss == 0
        assert np.all(np.isfinite(g.V))
