"""The short path of forward, loss and loss_and_grad gives the general path's bits.

RNN._short takes the common call (float32, one direction, (T, B) intp ids in
and class ids out, no h0, lengths or dropout, reduction "sum") through the
bound parameters (_kernels.FastPass).  Passing h0 = zeros, which the short
path does not take, runs the general path on the same numbers: both must
agree bit for bit, for every entry point and result.  Inputs the short path
declines (bad ones included) must still get the general path's results and
errors, and an assignment to a parameter must be seen by the next call.
"""

import numpy as np
import pytest

import rnn_ext
from rnn_ext import model as model_module


def case(T, B, D, H, K, L=1, bias=True, relu=False, seed=0):
    m = rnn_ext.RNN(D, H, K, num_layers=L, bias=bias,
                    nonlinearity="relu" if relu else "tanh", seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, D, size=(T, B))
    y = rng.integers(0, K, size=(T, B))
    y[rng.random((T, B)) < 0.1] = -100  # some ignored targets
    return m, x, y


CASES = [
    dict(T=1, B=1, D=2, H=2, K=2),
    dict(T=25, B=1, D=65, H=128, K=65),
    dict(T=7, B=5, D=11, H=40, K=9, L=3),
    dict(T=30, B=16, D=20, H=96, K=30, relu=True),   # B >= 2: the pool's recurrence
    dict(T=3, B=64, D=300, H=33, K=7, bias=False),    # T*B < D: no transposed U
]


def zeros_h0(m, B):
    """h0 = 0 as the user gives it: (B, H) for one layer (then dh0 comes back (B, H))."""
    shape = (B, m.hidden_size) if m.num_layers == 1 else (m.num_layers, B, m.hidden_size)
    return np.zeros(shape, dtype=np.float32)


def same(a, b, what):
    assert type(a) is type(b), what
    if isinstance(a, float):
        assert a == b, what
    elif a is None:
        assert b is None, what
    else:
        assert a.shape == b.shape and a.dtype == b.dtype, what
        assert a.tobytes() == b.tobytes(), f"{what} differs in its bits"


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_short_path_bit_identical_to_general(kw, monkeypatch):
    m, x, y = case(**kw)
    B = x.shape[1]
    taken = []
    original = model_module.RNN._short

    def spy(self, what, xx, yy):
        out = original(self, what, xx, yy)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(model_module.RNN, "_short", spy)
    f, f0 = m.forward(x), m.forward(x, h0=zeros_h0(m, B))
    for name in ("h", "probs", "h_last", "h_n"):
        same(getattr(f, name), getattr(f0, name), f"forward .{name}")
    same(m.loss(x, y), m.loss(x, y, h0=zeros_h0(m, B)), "loss")
    loss, g = m.loss_and_grad(x, y)
    loss0, g0 = m.loss_and_grad(x, y, h0=zeros_h0(m, B))
    same(loss, loss0, "loss_and_grad loss")
    for name in ("U", "W", "V", "b", "c", "h0", "x", "h_last", "h_n", "flat"):
        same(getattr(g, name), getattr(g0, name), f"grads .{name}")
    assert g.parameters().keys() == g0.parameters().keys()
    for name, a in g.parameters().items():
        same(a, g0.parameters()[name], f"grads.parameters()[{name!r}]")
    assert taken == [True, True, True]  # the calls without h0 took the short path


def test_declined_inputs_go_the_general_way():
    m, x, y = case(T=6, B=3, D=10, H=16, K=10)
    want = m.loss(x, y)
    assert m.loss(x.astype(np.int32), y) == want          # other int dtype
    assert m.loss(np.asfortranarray(x), y) == want        # not C-contiguous
    assert m.loss(x.tolist(), y) == want                  # a list
    assert m.loss(x, y, reduction="mean") == pytest.approx(want / np.count_nonzero(y != -100))
    with pytest.raises(ValueError, match=r"x ids must be in \[0, 10\)"):
        m.loss(np.full_like(x, 10), y)
    with pytest.raises(ValueError, match="y class ids must be in"):
        m.loss_and_grad(x, np.full_like(y, 10))
    with pytest.raises(ValueError, match="x ids"):
        m.forward(x - 1)
    with pytest.raises(ValueError, match="y"):
        m.loss(x, y[:, :2])


def test_assignment_is_seen_by_the_next_short_call():
    m, x, y = case(T=5, B=2, D=8, H=12, K=8)
    before = m.loss(x, y)
    m.W = np.zeros_like(m.W)
    m.V = m.V * 2
    after = m.loss(x, y)
    assert after != before
    assert after == m.loss(x, y, h0=zeros_h0(m, 2))


def test_float64_and_bidirectional_models_decline():
    m64 = rnn_ext.RNN(5, 8, 5, dtype=np.float64, seed=1)
    bi = rnn_ext.RNN(5, 8, 5, bidirectional=True, seed=1)
    x = np.zeros((3, 2), dtype=np.intp)
    assert m64._short(model_module._LOSS, x, x) is None
    assert bi._short(model_module._LOSS, x, x) is None
    assert m64.loss(x, x) == pytest.approx(m64.loss(x, x, h0=np.zeros((1, 2, 8))), rel=0)


def test_fast_pass_checks_what_it_is_given():
    """FastPass.run is entered with plain arrays: it checks them itself (a
    caller bypassing RNN._short gets an error, never a crash), returns None for
    ids out of range and leaves its inputs alone."""
    from rnn_ext import _kernels

    m, x, y = case(T=4, B=3, D=6, H=8, K=5)
    m.loss(x, y)  # binds the parameters
    fast = m._fast
    x, y = x.astype(np.intp), y.astype(np.intp)
    x0, y0 = x.copy(), y.copy()
    total, hs, Z, dflat, dh0, h_n = fast.run(_kernels.FULL, x, y, False, False, False, 0)
    # (m.loss runs with U.T and packed W as scratch: the same sums, other order)
    assert total == pytest.approx(m.loss(x, y), rel=1e-6)
    assert hs is None and Z is None and h_n.shape == (1, 3, 8)
    assert dflat.shape == m.flat.shape and dh0.shape == (1, 3, 8)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)
    _, hs, Z, dflat, dh0, h_n2 = fast.run(_kernels.FORWARD, x, None, True, True, True, 0)
    assert hs.shape == (1, 5, 3, 8) and not hs[:, 0].any() and Z.shape == (12, 5)
    assert dflat is None and dh0 is None and np.array_equal(h_n2, hs[:, 4])
    np.testing.assert_allclose(h_n2, h_n, rtol=1e-5, atol=1e-6)
    assert fast.run(_kernels.LOSS, x, y, True, False, True, 0)[1:] == (None,) * 5
    assert fast.run(_kernels.LOSS, x, np.full_like(y, 5), False, False, False, 0) is None
    assert fast.run(_kernels.FORWARD, np.full_like(x, -1), None, False, False, False, 0) is None
    bad = [
        (_kernels.LOSS, x.astype(np.int32), y),                     # dtype
        (_kernels.LOSS, np.asfortranarray(np.zeros((3, 4), np.intp)), y),
        (_kernels.LOSS, x, None),                                   # no targets
        (_kernels.FORWARD, x, y),                                   # targets given
        (_kernels.LOSS, x, y[:2]),                                  # y's size
        (_kernels.GRAD_V, x, y),                                    # not a short pass
        (_kernels.LOSS, x[:0], y[:0]),                              # T = 0
    ]
    for args in bad:
        with pytest.raises(ValueError):
            fast.run(*args, False, False, False, 0)


def test_reused_scratch_never_shows_in_results():
    """The short path keeps its scratch for the next call: calls of growing and
    shrinking sizes, interleaved, each give the general path's bits, and what
    one call returned is not changed by the next."""
    m, _, _ = case(T=1, B=1, D=13, H=24, K=9)
    rng = np.random.default_rng(3)
    kept = []
    for T, B in [(5, 4), (40, 16), (3, 2), (40, 16), (1, 1), (12, 7)]:
        x = rng.integers(0, 13, size=(T, B))
        y = rng.integers(0, 9, size=(T, B))
        h0 = zeros_h0(m, B)
        f, loss, (lg, g) = m.forward(x), m.loss(x, y), m.loss_and_grad(x, y)
        kept.append((f, g, [a.copy() for a in (f.h, f.probs, f.h_n, g.flat, g.h0, g.h_n)]))
        want_f, want_g = m.forward(x, h0=h0), m.loss_and_grad(x, y, h0=h0)[1]
        same(loss, m.loss(x, y, h0=h0), "loss")
        same(lg, loss, "loss_and_grad's loss")
        for a, b, what in [(f.h, want_f.h, "h"), (f.probs, want_f.probs, "probs"),
                           (f.h_n, want_f.h_n, "h_n"), (g.flat, want_g.flat, "grads"),
                           (g.h0, want_g.h0, "dh0"), (g.h_last, want_g.h_last, "h_last")]:
            same(a, b, what)
    for f, g, copies in kept:
        for a, b in zip((f.h, f.probs, f.h_n, g.flat, g.h0, g.h_n), copies):
            assert np.array_equal(a, b), "a result changed after a later call"
