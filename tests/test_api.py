"""The public behaviour of rnn_ext.RNN: shapes, dtypes, layouts and options.

Correctness of the numbers themselves is tested against the oracle elsewhere;
here each option is held against a simpler call that must give the same
result (batch_first against time-major, lengths against each sequence run
alone, soft one-hot targets against class ids, mean against sum / count), and
the loss against -log of forward's probabilities.
"""

import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import rnn_ext
from rnn_ext import RNN

DTYPES = [np.float32, np.float64]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
ATOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-13}
GRAD_NAMES = ("U", "W", "V", "b", "c", "h0", "x")

D, H, K = 5, 6, 4


def close(actual, expected, dtype, scale=1.0):
    dtype = np.dtype(dtype)
    assert_allclose(actual, expected, rtol=RTOL[dtype], atol=ATOL[dtype] * scale)


def make_model(dtype=np.float64, *, bias=True, nonlinearity="tanh", batch_first=False, seed=0,
               d=D, h=H, k=K):
    return RNN(d, h, k, bias=bias, nonlinearity=nonlinearity, dtype=dtype, seed=seed,
               batch_first=batch_first)


def copy_params(src, dst):
    for name, value in src.parameters().items():
        setattr(dst, name, value)
    return dst


def data(kind, T=5, B=3, seed=1, d=D, k=K):
    """(x, y) time-major: kind is "ids" or "float"."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, d, size=(T, B)) if kind == "ids" else rng.normal(size=(T, B, d))
    y = rng.integers(0, k, size=(T, B))
    return x, y


def one_hot(y, k=K):
    return np.eye(k)[y]


def grads_of(g):
    return {n: getattr(g, n) for n in GRAD_NAMES if getattr(g, n) is not None}


def assert_same_grads(g1, g2, dtype, scale=1.0):
    a, b = grads_of(g1), grads_of(g2)
    assert a.keys() == b.keys()
    for n in a:
        close(a[n], b[n], dtype, scale)


# --- the README example ---------------------------------------------------------


def test_readme_example():
    model = rnn_ext.RNN(input_size=65, hidden_size=128, output_size=65, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 65, size=(25, 4))
    y = rng.integers(0, 65, size=(25, 4))
    out = model.forward(x)
    assert out.h.shape == (25, 4, 128)
    assert out.probs.shape == (25, 4, 65)
    assert out.h_last.shape == (4, 128)
    for a in (out.h, out.probs, out.h_last):
        assert a.dtype == np.float32
    assert_allclose(out.probs.sum(axis=-1), 1.0, rtol=1e-5)
    loss = model.loss(x, y)
    assert type(loss) is float
    loss2, dV, dc = model.grad_V(x, y)
    assert type(loss2) is float
    assert loss2 == pytest.approx(loss, rel=1e-6)
    assert dV.shape == (65, 128) and dV.dtype == np.float32
    assert dc.shape == (65,) and dc.dtype == np.float32
    # the loss is summed over time and batch: about T*B*log(K) at initialisation
    assert loss == pytest.approx(25 * 4 * np.log(65), rel=0.1)


def test_defaults():
    m = RNN(3, 4, 5)
    assert m.dtype == np.float32
    assert (m.input_size, m.hidden_size, m.output_size) == (3, 4, 5)
    assert m.bias is True and m.nonlinearity == "tanh" and m.batch_first is False
    assert m.vocab is None
    assert m.U.shape == (4, 3) and m.W.shape == (4, 4) and m.V.shape == (5, 4)
    assert m.b.shape == (4,) and m.c.shape == (5,)
    assert isinstance(m.dtype, np.dtype)
    assert "RNN(" in repr(m)


def test_numpy_int_sizes_accepted():
    m = RNN(np.int64(3), np.int32(4), np.uint8(5))
    assert (m.input_size, m.hidden_size, m.output_size) == (3, 4, 5)
    assert all(type(n) is int for n in (m.input_size, m.hidden_size, m.output_size))


def test_no_bias_model():
    m = make_model(bias=False)
    assert m.b is None and m.c is None
    assert set(m.parameters()) == {"U", "W", "V"}
    x, y = data("ids")
    loss, dV, dc = m.grad_V(x, y)
    assert dc is None
    loss, g = m.loss_and_grad(x, y)
    assert g.b is None and g.c is None
    assert set(g.parameters()) == {"U", "W", "V"}


# --- dtypes ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["ids", "float32-x", "float64-x", "int32-ids"])
@pytest.mark.parametrize("soft", [False, True], ids=["int-y", "soft-y"])
def test_outputs_keep_model_dtype(dtype, kind, soft):
    m = make_model(dtype)
    if kind.endswith("ids"):
        x, y = data("ids")
        x = x.astype(np.int32) if kind == "int32-ids" else x
    else:
        x, y = data("float")
        x = x.astype(kind.split("-")[0])
    if soft:
        y = one_hot(y).astype(np.float64 if dtype == np.float32 else np.float32)
    h0 = np.zeros((3, H), dtype=np.float64 if dtype == np.float32 else np.float32)
    out = m.forward(x, h0=h0)
    arrays = [out.h, out.probs, out.h_last]
    loss, dV, dc = m.grad_V(x, y, h0=h0)
    assert type(loss) is float
    arrays += [dV, dc]
    loss, g = m.loss_and_grad(x, y, h0=h0)
    assert type(loss) is float
    assert type(m.loss(x, y, h0=h0)) is float
    arrays += list(grads_of(g).values()) + [g.h_last]
    arrays += list(m.parameters().values())
    assert (g.x is None) == (kind.endswith("ids"))
    for a in arrays:
        assert isinstance(a, np.ndarray)
        assert a.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_float32_close_to_float64(dtype):
    m64 = make_model(np.float64)
    m = copy_params(m64, make_model(dtype))
    x, y = data("float")
    l64, g64 = m64.loss_and_grad(x, y)
    loss, g = m.loss_and_grad(x, y)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    assert loss == pytest.approx(l64, rel=tol)
    for n, a in grads_of(g).items():
        assert_allclose(a, grads_of(g64)[n], rtol=tol, atol=tol * np.abs(grads_of(g64)[n]).max())


# --- unbatched input -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ids", "float"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_unbatched_gives_unbatched(kind, dtype):
    m = make_model(dtype)
    T = 6
    x, y = data(kind, T=T, B=1)
    x1, y1 = x[:, 0], y[:, 0]
    h0 = np.linspace(-0.5, 0.5, H)
    out = m.forward(x1, h0=h0)
    assert out.h.shape == (T, H)
    assert out.probs.shape == (T, K)
    assert out.h_last.shape == (H,)
    loss, g = m.loss_and_grad(x1, y1, h0=h0)
    assert g.h0.shape == (H,)
    assert g.h_last.shape == (H,)
    if kind == "float":
        assert g.x.shape == (T, D)
    else:
        assert g.x is None
    # the same numbers as a batch of one
    outb = m.forward(x, h0=h0[None])
    close(out.h, outb.h[:, 0], dtype)
    close(out.probs, outb.probs[:, 0], dtype)
    close(out.h_last, outb.h_last[0], dtype)
    lossb, gb = m.loss_and_grad(x, y, h0=h0[None])
    assert loss == pytest.approx(lossb, rel=RTOL[np.dtype(dtype)])
    for n in ("U", "W", "V", "b", "c"):
        close(getattr(g, n), getattr(gb, n), dtype)
    close(g.h0, gb.h0[0], dtype)
    if kind == "float":
        close(g.x, gb.x[:, 0], dtype)
    # unbatched soft targets (T, K)
    loss_soft = m.loss(x1, one_hot(y1))
    assert loss_soft == pytest.approx(m.loss(x1, y1), rel=RTOL[np.dtype(dtype)])


# --- batch_first -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ids", "float"])
@pytest.mark.parametrize("soft", [False, True], ids=["int-y", "soft-y"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_batch_first_is_transposed_time_major(kind, soft, with_lengths):
    tm = make_model()
    bf = copy_params(tm, make_model(batch_first=True))
    assert bf.batch_first is True
    T, B = 5, 3
    x, y = data(kind, T=T, B=B)
    yt = one_hot(y) if soft else y
    h0 = np.random.default_rng(5).normal(size=(B, H)) * 0.3
    lengths = np.array([3, 5, 1]) if with_lengths else None
    xb, yb = x.swapaxes(0, 1), yt.swapaxes(0, 1)

    out_t = tm.forward(x, h0=h0, lengths=lengths)
    out_b = bf.forward(xb, h0=h0, lengths=lengths)
    assert out_b.h.shape == (B, T, H) and out_b.probs.shape == (B, T, K)
    close(out_b.h, out_t.h.swapaxes(0, 1), np.float64)
    close(out_b.probs, out_t.probs.swapaxes(0, 1), np.float64)
    close(out_b.h_last, out_t.h_last, np.float64)

    loss_t, g_t = tm.loss_and_grad(x, yt, h0=h0, lengths=lengths)
    loss_b, g_b = bf.loss_and_grad(xb, yb, h0=h0, lengths=lengths)
    assert loss_b == pytest.approx(loss_t, rel=1e-12)
    assert bf.loss(xb, yb, h0=h0, lengths=lengths) == pytest.approx(loss_t, rel=1e-12)
    for n in ("U", "W", "V", "b", "c", "h0", "h_last"):
        close(getattr(g_b, n), getattr(g_t, n), np.float64)
    if kind == "float":
        assert g_b.x.shape == (B, T, D)
        close(g_b.x, g_t.x.swapaxes(0, 1), np.float64)
    _, dV_b, dc_b = bf.grad_V(xb, yb, h0=h0, lengths=lengths)
    close(dV_b, g_t.V, np.float64)
    close(dc_b, g_t.c, np.float64)


def test_batch_first_unbatched_is_unchanged():
    """Unbatched input has no batch axis, so batch_first changes nothing."""
    tm = make_model()
    bf = copy_params(tm, make_model(batch_first=True))
    x, y = data("float", T=4, B=1)
    x1, y1 = x[:, 0], y[:, 0]
    close(bf.forward(x1).h, tm.forward(x1).h, np.float64)
    loss_b, g_b = bf.loss_and_grad(x1, y1)
    loss_t, g_t = tm.loss_and_grad(x1, y1)
    assert loss_b == pytest.approx(loss_t, rel=1e-12)
    assert_same_grads(g_b, g_t, np.float64)


# --- the loss against forward's probabilities --------------------------------------


def nll_from_probs(probs, y, ignore_index=-100, lengths=None):
    """-Σ log probs[t, b, y[t, b]] over counted targets, and how many counted."""
    T, B = y.shape
    counted = y != ignore_index
    if lengths is not None:
        counted &= np.arange(T)[:, None] < np.asarray(lengths)[None, :]
    tt, bb = np.nonzero(counted)
    return -np.log(probs[tt, bb, y[tt, bb]].astype(np.float64)).sum(), int(counted.sum())


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kind", ["ids", "float"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_loss_is_negative_log_prob(dtype, kind, nonlinearity):
    m = make_model(dtype, nonlinearity=nonlinearity)
    x, y = data(kind, T=7, B=4)
    probs = m.forward(x).probs
    assert_allclose(probs.sum(axis=-1), 1.0, rtol=RTOL[np.dtype(dtype)] * 10)
    assert (probs > 0).all()
    expected, count = nll_from_probs(probs, y)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert m.loss(x, y) == pytest.approx(expected, rel=rtol)
    assert m.loss(x, y, reduction="mean") == pytest.approx(expected / count, rel=rtol)


def test_grad_V_equals_loss_and_grad():
    for kind in ("ids", "float"):
        for bias in (True, False):
            m = make_model(bias=bias)
            x, y = data(kind)
            lengths = [5, 2, 4]
            for reduction in ("sum", "mean"):
                loss_v, dV, dc = m.grad_V(x, y, lengths=lengths, reduction=reduction)
                loss, g = m.loss_and_grad(x, y, lengths=lengths, reduction=reduction)
                assert loss_v == pytest.approx(loss, rel=1e-14)
                assert m.loss(x, y, lengths=lengths, reduction=reduction) == pytest.approx(loss, rel=1e-14)
                close(dV, g.V, np.float64)
                if bias:
                    close(dc, g.c, np.float64)
                else:
                    assert dc is None and g.c is None


def test_h_last_of_loss_and_grad_is_forwards():
    m = make_model()
    x, y = data("float")
    h0 = np.full((3, H), 0.1)
    lengths = [2, 5, 3]
    out = m.forward(x, h0=h0, lengths=lengths)
    _, g = m.loss_and_grad(x, y, h0=h0, lengths=lengths)
    close(g.h_last, out.h_last, np.float64)


# --- reduction and ignore_index --------------------------------------------------------


@pytest.mark.parametrize("kind", ["ids", "float"])
@pytest.mark.parametrize("soft", [False, True], ids=["int-y", "soft-y"])
def test_mean_is_sum_over_count(kind, soft):
    m = make_model()
    x, y = data(kind, T=6, B=3)
    lengths = np.array([6, 2, 4])
    if soft:
        yt = one_hot(y)
        count = int(lengths.sum())
    else:
        yt = y.copy()
        yt[0, 0] = yt[3, 2] = yt[1, 1] = -100  # (1, 1) is also inside sequence 1's length
        count = int(lengths.sum()) - 3
    loss_s, g_s = m.loss_and_grad(x, yt, lengths=lengths)
    loss_m, g_m = m.loss_and_grad(x, yt, lengths=lengths, reduction="mean")
    assert loss_m == pytest.approx(loss_s / count, rel=1e-13)
    for n, a in grads_of(g_s).items():
        close(grads_of(g_m)[n], a / count, np.float64)
    _, dV_m, dc_m = m.grad_V(x, yt, lengths=lengths, reduction="mean")
    close(dV_m, g_s.V / count, np.float64)
    close(dc_m, g_s.c / count, np.float64)


@pytest.mark.parametrize("ignore_index", [-100, -1, 7])
@pytest.mark.parametrize("kind", ["ids", "float"])
def test_ignored_targets_count_nothing(ignore_index, kind):
    m = make_model()
    x, y = data(kind, T=6, B=3)
    yi = y.copy()
    ignored = np.zeros(y.shape, dtype=bool)
    ignored[[0, 2, 5, 5], [1, 0, 2, 0]] = True
    yi[ignored] = ignore_index
    probs = m.forward(x).probs
    expected, count = nll_from_probs(probs, yi, ignore_index=ignore_index)
    assert count == y.size - 4
    loss, g = m.loss_and_grad(x, yi, ignore_index=ignore_index)
    assert loss == pytest.approx(expected, rel=1e-12)
    # an ignored row acts as an all-zero soft target row: no loss, no gradient
    ys = one_hot(y)
    ys[ignored] = 0.0
    loss_s, g_s = m.loss_and_grad(x, ys)
    assert loss == pytest.approx(loss_s, rel=1e-12)
    assert_same_grads(g, g_s, np.float64)
    assert m.loss(x, yi, ignore_index=ignore_index, reduction="mean") == pytest.approx(expected / count, rel=1e-12)


def test_ignore_index_is_only_special_when_out_of_range():
    """An ignore_index that is a valid class id ignores that class."""
    m = make_model()
    x, y = data("ids", T=8, B=3)
    y[0, 0] = 2
    mask = y != 2
    probs = m.forward(x).probs
    expected = -np.log(probs[mask, y[mask]]).sum()
    assert m.loss(x, y, ignore_index=2) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("kind", ["ids", "float"])
@pytest.mark.parametrize("how", ["ignore_index", "zero-soft-rows"])
def test_all_targets_ignored(reduction, kind, how):
    m = make_model()
    x, y = data(kind, T=4, B=2)
    y = np.full_like(y, -100) if how == "ignore_index" else np.zeros((4, 2, K))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(all="raise"):
            loss = m.loss(x, y, reduction=reduction)
            loss_v, dV, dc = m.grad_V(x, y, reduction=reduction)
            loss_g, g = m.loss_and_grad(x, y, h0=np.full((2, H), 0.2), reduction=reduction)
    for value in (loss, loss_v, loss_g):
        assert type(value) is float and value == 0.0
    assert not dV.any() and not dc.any()
    for name, a in grads_of(g).items():
        assert np.isfinite(a).all(), name
        assert not a.any(), name
    assert np.isfinite(g.h_last).all()


# --- lengths --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ids", "float"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_lengths_equal_sequences_run_alone(kind, nonlinearity, dtype):
    m = make_model(dtype, nonlinearity=nonlinearity)
    T, B = 6, 4
    x, y = data(kind, T=T, B=B)
    lengths = np.array([3, 6, 1, 4])  # unsorted, one full, one of length 1
    h0 = np.random.default_rng(3).normal(size=(B, H)) * 0.5
    out = m.forward(x, h0=h0, lengths=lengths)
    loss, g = m.loss_and_grad(x, y, h0=h0, lengths=lengths)
    total, sums = 0.0, {n: 0.0 for n in ("U", "W", "V", "b", "c")}
    for b, n in enumerate(lengths):
        # past its length a sequence's h is zero and its output is softmax(c)
        assert not out.h[n:, b].any()
        c = m.c.astype(np.float64)
        close(out.probs[n:, b], np.broadcast_to(np.exp(c - c.max()) / np.exp(c - c.max()).sum(), (T - n, K)), dtype)
        alone = m.forward(x[:n, b], h0=h0[b])
        close(out.h[:n, b], alone.h, dtype)
        close(out.probs[:n, b], alone.probs, dtype)
        close(out.h_last[b], out.h[n - 1, b], dtype)
        close(out.h_last[b], alone.h_last, dtype)
        loss_b, g_b = m.loss_and_grad(x[:n, b], y[:n, b], h0=h0[b])
        total += loss_b
        for name in sums:
            sums[name] = sums[name] + getattr(g_b, name)
        close(g.h0[b], g_b.h0, dtype)
        close(g.h_last[b], g_b.h_last, dtype)
        if kind == "float":
            close(g.x[:n, b], g_b.x, dtype)
            assert not g.x[n:, b].any()
    assert loss == pytest.approx(total, rel=10 * RTOL[np.dtype(dtype)])
    for name, s in sums.items():
        close(getattr(g, name), s, dtype, scale=10)


def test_full_lengths_change_nothing():
    m = make_model()
    x, y = data("float", T=5, B=3)
    loss, g = m.loss_and_grad(x, y)
    loss_l, g_l = m.loss_and_grad(x, y, lengths=[5, 5, 5])
    assert loss_l == loss
    assert_same_grads(g_l, g, np.float64)


# --- soft targets ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ids", "float"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_one_hot_soft_targets_equal_int_targets(kind, dtype, with_lengths):
    m = make_model(dtype)
    x, y = data(kind, T=5, B=3)
    lengths = [2, 5, 4] if with_lengths else None
    for reduction in ("sum", "mean"):
        loss_i, g_i = m.loss_and_grad(x, y, lengths=lengths, reduction=reduction)
        loss_s, g_s = m.loss_and_grad(x, one_hot(y), lengths=lengths, reduction=reduction)
        assert loss_s == pytest.approx(loss_i, rel=RTOL[np.dtype(dtype)])
        assert_same_grads(g_s, g_i, dtype)
        assert m.loss(x, one_hot(y), lengths=lengths, reduction=reduction) == pytest.approx(loss_i, rel=RTOL[np.dtype(dtype)])


def test_soft_targets_are_cross_entropy_with_distributions():
    m = make_model()
    x, _ = data("ids", T=4, B=2)
    rng = np.random.default_rng(9)
    ys = rng.random((4, 2, K))
    ys /= ys.sum(axis=-1, keepdims=True)
    probs = m.forward(x).probs
    expected = -(ys * np.log(probs)).sum()
    assert m.loss(x, ys) == pytest.approx(expected, rel=1e-12)
    # the loss is linear in the target rows
    assert m.loss(x, 3 * ys) == pytest.approx(3 * expected, rel=1e-12)


# --- parameters ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_parameter_assignment_casts_and_copies(dtype):
    m = make_model(dtype)
    shapes = {"U": (H, D), "W": (H, H), "V": (K, H), "b": (H,), "c": (K,)}
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        for source in (rng.normal(size=shape),                          # float64
                       rng.normal(size=shape).astype(np.float32),       # float32
                       np.arange(int(np.prod(shape))).reshape(shape),   # ints
                       rng.normal(size=shape[::-1]).T,                  # non-contiguous
                       rng.normal(size=shape).tolist()):                # nested lists
            keep = np.array(source, copy=True)
            setattr(m, name, source)
            p = getattr(m, name)
            assert p.dtype == dtype and p.shape == shape
            assert p.flags.c_contiguous and p.flags.writeable
            assert_array_equal(p, keep.astype(dtype))
            if isinstance(source, np.ndarray):
                assert not np.shares_memory(p, source)
                source[...] = 12345  # mutating the source afterwards changes nothing
                assert_array_equal(p, keep.astype(dtype))
                assert m.parameters()[name] is p


def test_assigning_same_dtype_array_still_copies():
    m = make_model(np.float64)
    W = np.eye(H)
    m.W = W
    assert m.W is not W and not np.shares_memory(m.W, W)
    W[0, 0] = 5.0
    assert m.W[0, 0] == 1.0


def test_assigned_parameters_are_used():
    m = make_model()
    x, y = data("float")
    m.V = np.zeros((K, H))
    m.c = np.zeros(K)
    # with zero output weights every class is equally likely
    assert_allclose(m.forward(x).probs, 1.0 / K, rtol=1e-14)
    assert m.loss(x, y) == pytest.approx(x.shape[0] * x.shape[1] * np.log(K), rel=1e-14)


def test_parameters_are_live():
    m = make_model()
    p = m.parameters()
    assert list(p) == ["U", "W", "V", "b", "c"]
    for name, a in p.items():
        assert a is getattr(m, name)
    x, y = data("float")
    before = m.loss(x, y)
    p["V"][...] = 0.0          # an optimizer's in-place update
    p["c"] -= p["c"]
    assert not m.V.any() and not m.c.any()
    assert m.loss(x, y) != before
    assert m.loss(x, y) == pytest.approx(x.shape[0] * x.shape[1] * np.log(K), rel=1e-14)
    # an assignment replaces the array; parameters() then returns the new one
    m.W = np.zeros((H, H))
    assert m.parameters()["W"] is m.W
    assert p["W"] is not m.W


def test_gradient_parameters_match_model_parameters():
    for bias in (True, False):
        m = make_model(bias=bias)
        x, y = data("ids")
        _, g = m.loss_and_grad(x, y)
        gp, mp = g.parameters(), m.parameters()
        assert list(gp) == list(mp)
        for name in mp:
            assert gp[name].shape == mp[name].shape


# --- seeds ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_seed_reproducibility(dtype):
    a = RNN(7, 9, 4, seed=123, dtype=dtype)
    b = RNN(7, 9, 4, seed=123, dtype=dtype)
    c = RNN(7, 9, 4, seed=124, dtype=dtype)
    for name in a.parameters():
        assert_array_equal(getattr(a, name), getattr(b, name))
        assert not np.array_equal(getattr(a, name), getattr(c, name))
    # without a seed, two models differ
    d, e = RNN(7, 9, 4, dtype=dtype), RNN(7, 9, 4, dtype=dtype)
    assert not np.array_equal(d.W, e.W)


@pytest.mark.parametrize("hidden", [1, 4, 100])
def test_init_bound(hidden):
    m = RNN(50, hidden, 30, seed=0, dtype=np.float64)
    bound = 1 / np.sqrt(hidden)
    every = np.concatenate([a.ravel() for a in m.parameters().values()])
    assert np.abs(every).max() <= bound
    # uniform over the whole interval: both ends are reached, the mean is near 0
    assert every.max() > 0.9 * bound and every.min() < -0.9 * bound
    assert abs(every.mean()) < 0.1 * bound


# --- inputs are never modified -------------------------------------------------------


def _frozen_copies(args):
    return [None if a is None else (np.array(a, copy=True) if isinstance(a, np.ndarray) else repr(a))
            for a in args]


def _assert_unchanged(args, copies):
    for a, c in zip(args, copies):
        if a is None:
            continue
        if isinstance(a, np.ndarray):
            assert_array_equal(a, c)
            assert a.dtype == c.dtype
        else:
            assert repr(a) == c


def _input_cases():
    """(id, model dtype, x, y, h0, lengths): odd layouts and types, all accepted."""
    rng = np.random.default_rng(0)
    T, B = 5, 3
    xf = rng.normal(size=(T, B, D))
    xi = rng.integers(0, D, size=(T, B))
    y = rng.integers(0, K, size=(T, B))
    h0 = rng.normal(size=(B, H)) * 0.3
    lengths = np.array([5, 2, 4])
    big = rng.normal(size=(2 * T, B, 2 * D))
    return [
        ("contiguous-float", np.float64, xf, y, h0, lengths),
        ("float32-x-into-float64", np.float64, xf.astype(np.float32), y, h0.astype(np.float32), lengths),
        ("float64-x-into-float32", np.float32, xf, y, h0, lengths),
        ("transposed-x", np.float64, np.ascontiguousarray(xf.transpose(2, 1, 0)).transpose(2, 1, 0),
         np.asfortranarray(y), np.asfortranarray(h0), lengths),
        ("strided-x", np.float64, big[::2, :, ::2], y[::-1], h0[:, ::-1], lengths[::-1]),
        ("ids-int32", np.float64, xi.astype(np.int32), y.astype(np.int16), h0, lengths.astype(np.int32)),
        ("ids-uint8", np.float32, xi.astype(np.uint8), y.astype(np.uint8), h0, lengths.astype(np.uint64)),
        ("ids-transposed", np.float32, np.asfortranarray(xi), y.T.copy().T, h0, lengths),
        ("soft-targets-f32", np.float64, xi, one_hot(y).astype(np.float32), h0, lengths),
        ("soft-targets-strided", np.float32, xf, np.concatenate([one_hot(y), one_hot(y)], -1)[..., ::2],
         h0, None),
        ("int-h0", np.float64, xi, y, np.ones((B, H), dtype=np.int64), None),
        ("lists", np.float64, xf.tolist(), y.tolist(), h0.tolist(), lengths.tolist()),
        ("read-only", np.float64, xf.view(), y.view(), h0.view(), lengths.view()),
    ]


@pytest.mark.parametrize("case", _input_cases(), ids=lambda c: c[0])
def test_inputs_never_modified_and_layouts_accepted(case):
    name, dtype, x, y, h0, lengths = case
    if name == "read-only":
        for a in (x, y, h0, lengths):
            a.flags.writeable = False
    m = make_model(dtype)
    args = [x, y, h0, lengths]
    copies = _frozen_copies(args)
    params = {n: a.copy() for n, a in m.parameters().items()}
    # the same call on plain contiguous copies is the reference
    ref = [np.ascontiguousarray(np.asarray(a)) if a is not None else None for a in args]
    out = m.forward(x, h0=h0, lengths=lengths)
    _assert_unchanged(args, copies)
    loss = m.loss(x, y, h0=h0, lengths=lengths)
    _assert_unchanged(args, copies)
    loss_v, dV, dc = m.grad_V(x, y, h0=h0, lengths=lengths, reduction="mean")
    _assert_unchanged(args, copies)
    loss_g, g = m.loss_and_grad(x, y, h0=h0, lengths=lengths)
    _assert_unchanged(args, copies)
    for n, a in m.parameters().items():
        assert_array_equal(a, params[n])
    out_r = m.forward(ref[0], h0=ref[2], lengths=ref[3])
    loss_r, g_r = m.loss_and_grad(*ref[:2], h0=ref[2], lengths=ref[3])
    close(out.h, out_r.h, dtype)
    close(out.probs, out_r.probs, dtype)
    assert loss == pytest.approx(loss_r, rel=RTOL[np.dtype(dtype)])
    assert loss_g == pytest.approx(loss_r, rel=RTOL[np.dtype(dtype)])
    assert_same_grads(g, g_r, dtype)
    # the results are the model's own arrays, never views of the inputs
    for a in [out.h, out.probs, out.h_last, dV, dc, *grads_of(g).values()]:
        for inp in args:
            if isinstance(inp, np.ndarray):
                assert not np.shares_memory(a, inp)


def test_parameters_not_modified_by_passes():
    m = make_model()
    before = {n: a.copy() for n, a in m.parameters().items()}
    x, y = data("float")
    m.forward(x)
    m.loss_and_grad(x, y)
    m.grad_V(x, y)
    m.loss(x, y)
    for n, a in m.parameters().items():
        assert_array_equal(a, before[n])


# --- threads -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_concurrent_calls_match_serial(dtype):
    m = make_model(dtype, d=20, h=48, k=15)
    rng = np.random.default_rng(0)
    # each thread its own sizes and inputs, so shared scratch would show
    jobs = []
    for i in range(8):
        T, B = 30 + i, 1 + i % 4
        if i % 2:
            x = rng.integers(0, 20, size=(T, B))
        else:
            x = rng.normal(size=(T, B, 20))
        y = rng.integers(0, 15, size=(T, B))
        lengths = rng.integers(1, T + 1, size=B) if i % 3 == 0 else None
        jobs.append((x, y, rng.normal(size=(B, 48)) * 0.1, lengths))

    def run(job):
        x, y, h0, lengths = job
        return m.loss_and_grad(x, y, h0=h0, lengths=lengths)

    serial = [run(job) for job in jobs]
    barrier = threading.Barrier(8)

    def worker(job):
        barrier.wait()
        return [run(job) for _ in range(20)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(worker, jobs))
    for (loss, g), repeats in zip(serial, results):
        for loss_t, g_t in repeats:
            assert loss_t == loss
            for n, a in grads_of(g).items():
                assert_array_equal(grads_of(g_t)[n], a)
            assert_array_equal(g_t.h_last, g.h_last)
