"""model.step / layer.step: one time step equals the forward pass's step."""

import numpy as np
import pytest

import rnn_ext

TOL = {np.float32: 2e-6, np.float64: 1e-14}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("kind", ["ids", "floats"])
@pytest.mark.parametrize("B", [1, 3])
def test_steps_equal_forward(dtype, L, kind, B):
    rng = np.random.default_rng(L + B)
    m = rnn_ext.RNN(5, 6, 4, num_layers=L, nonlinearity="relu" if L == 2 else "tanh",
                    dtype=dtype, seed=1)
    T = 7
    x = rng.integers(0, 5, size=(T, B)) if kind == "ids" else rng.normal(size=(T, B, 5))
    h0 = rng.normal(size=(L, B, 6))
    f = m.forward(x, h0)
    h = h0
    for t in range(T):
        h, p = m.step(x[t], h)
        np.testing.assert_allclose(p, f.probs[t], rtol=TOL[dtype], atol=TOL[dtype])
    assert h.dtype == dtype and p.dtype == dtype
    np.testing.assert_allclose(h, f.h_n, rtol=TOL[dtype], atol=TOL[dtype])
    # the layer alone gives the same states
    hl = h0
    for t in range(T):
        hl = m.layer.step(x[t], hl)
    np.testing.assert_allclose(hl, f.h_n, rtol=TOL[dtype], atol=TOL[dtype])


def test_unbatched_and_defaults():
    m = rnn_ext.RNN(5, 6, 4, seed=0, dtype=np.float64)
    h, p = m.step(3)
    assert h.shape == (1, 6) and p.shape == (4,)
    f = m.forward(np.array([3]))
    np.testing.assert_allclose(p, f.probs[0], rtol=1e-14)
    h2, _ = m.step(np.int64(2), h[0])          # (H,) accepted with one layer
    h3, _ = m.step(2, h)
    np.testing.assert_array_equal(h2, h3)
    hx, _ = m.step(np.zeros(5), None)         # float input
    assert hx.shape == (1, 6)


def test_step_bad_input():
    m = rnn_ext.RNN(5, 6, 4, num_layers=2, seed=0)
    with pytest.raises(ValueError, match=r"x_t id must be in \[0, 5\)"):
        m.step(5)
    with pytest.raises(ValueError, match=r"x_t ids must be in \[0, 5\)"):
        m.step(np.array([0, -1]))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 1, 6\)"):
        m.step(np.array([1]), np.zeros((1, 6)))
    with pytest.raises(ValueError, match=r"x_t of floats must be \(5,\) or \(B, 5\)"):
        m.step(np.zeros(4))
    with pytest.raises(ValueError, match="h must be finite"):
        m.step(1, np.full((2, 6), np.nan))
    with pytest.raises(TypeError, match="x_t must be a numeric array"):
        m.step("a")
    bi = rnn_ext.RNN(5, 6, 4, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        bi.step(1)
    h = np.zeros((2, 6), np.float32)
    keep = h.copy()
    m.step(1, h)
    np.testing.assert_array_equal(h, keep)   # the carried state is not modified
