"""Gradient clipping by value and by global norm, against hand values and torch."""

import numpy as np
import pytest

from rnn_ext import RNN
from rnn_ext.clip import clip_grad_norm, clip_grad_value


def grads(dtype=np.float64, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"U": (4, 3), "W": (4, 4), "V": (2, 4), "b": (4,), "c": (2,)}
    return {k: (scale * rng.standard_normal(s)).astype(dtype) for k, s in shapes.items()}


def loss_and_grad(dtype=np.float64):
    m = RNN(5, 6, 5, seed=0, dtype=dtype)
    x = np.array([[0, 1], [2, 3], [4, 0], [1, 1]])
    return m.loss_and_grad(x, x)


# -- by value ------------------------------------------------------------------


def test_clip_value_clamps_in_place():
    g = {"U": np.array([[-7.0, -5.0, 0.5], [5.0, 6.0, -0.1]])}
    arr = g["U"]
    assert clip_grad_value(g, 5.0) is None
    assert g["U"] is arr
    np.testing.assert_array_equal(arr, [[-5.0, -5.0, 0.5], [5.0, 5.0, -0.1]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_value_on_gradients_object_leaves_h0_alone(dtype):
    _, g = loss_and_grad(dtype)
    h0_before = g.h0.copy()
    expect = {k: np.clip(v, -1e-3, 1e-3) for k, v in g.parameters().items()}
    clip_grad_value(g, 1e-3)
    for k, v in g.parameters().items():
        assert v.dtype == dtype
        np.testing.assert_array_equal(v, expect[k])
        assert getattr(g, k) is v
    np.testing.assert_array_equal(g.h0, h0_before)


def test_clip_value_matches_torch():
    torch = pytest.importorskip("torch")
    g = grads(np.float32, scale=3.0)
    ts = [torch.nn.Parameter(torch.zeros(v.shape)) for v in g.values()]
    for t, v in zip(ts, g.values()):
        t.grad = torch.from_numpy(v.copy())
    torch.nn.utils.clip_grad_value_(ts, 2.5)
    clip_grad_value(g, 2.5)
    for t, v in zip(ts, g.values()):
        np.testing.assert_array_equal(v, t.grad.numpy())


# -- by norm -------------------------------------------------------------------


def test_clip_norm_by_hand():
    g = {"U": np.array([3.0, 0.0]), "W": np.array([[0.0, 4.0]])}  # total norm 5
    total = clip_grad_norm(g, 1.0)
    assert total == pytest.approx(5.0, rel=1e-15)
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(g["U"], [3.0 * coef, 0.0], rtol=1e-15)
    np.testing.assert_allclose(g["W"], [[0.0, 4.0 * coef]], rtol=1e-15)


def test_clip_norm_leaves_small_gradients_alone():
    g = grads(scale=0.01)
    before = {k: v.copy() for k, v in g.items()}
    total = clip_grad_norm(g, 10.0)
    expect = np.sqrt(sum(np.sum(v * v) for v in before.values()))
    assert total == pytest.approx(expect, rel=1e-12)
    for k in g:
        np.testing.assert_array_equal(g[k], before[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_norm_result_has_max_norm(dtype):
    _, g = loss_and_grad(dtype)
    total = clip_grad_norm(g, 1e-2)
    assert total > 1e-2
    after = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in g.parameters().values()))
    assert after == pytest.approx(1e-2, rel=1e-4)
    assert all(v.dtype == dtype for v in g.parameters().values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_norm_matches_torch(dtype, max_norm):
    torch = pytest.importorskip("torch")
    g = grads(dtype, scale=2.0, seed=3)
    ts = [torch.nn.Parameter(torch.zeros(v.shape, dtype=getattr(torch, np.dtype(dtype).name))) for v in g.values()]
    for t, v in zip(ts, g.values()):
        t.grad = torch.from_numpy(v.copy())
    t_total = float(torch.nn.utils.clip_grad_norm_(ts, max_norm))
    total = clip_grad_norm(g, max_norm)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    assert total == pytest.approx(t_total, rel=rtol)
    for t, v in zip(ts, g.values()):
        np.testing.assert_allclose(v, t.grad.numpy(), rtol=rtol, atol=0)


def test_clip_norm_nonfinite():
    g = {"U": np.array([1.0, np.inf])}
    assert clip_grad_norm(g, 1.0) == np.inf
    np.testing.assert_array_equal(g["U"], [1.0, np.inf])  # untouched
    with pytest.raises(ValueError, match="not finite"):
        clip_grad_norm(g, 1.0, error_if_nonfinite=True)


def test_clip_norm_of_nothing_is_zero():
    assert clip_grad_norm({}, 1.0) == 0.0
    assert clip_grad_norm({"b": None}, 1.0) == 0.0


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize("fn", [clip_grad_value, clip_grad_norm])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_threshold(fn, bad):
    with pytest.raises(ValueError):
        fn(grads(), bad)


@pytest.mark.parametrize("fn", [clip_grad_value, clip_grad_norm])
def test_bad_containers(fn):
    with pytest.raises(TypeError):
        fn([np.zeros(3)], 1.0)
    with pytest.raises(TypeError):
        fn(grads(), "5")
    with pytest.raises(TypeError, match="numpy array"):
        fn({"U": [1.0, 2.0]}, 1.0)
    ro = np.zeros(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fn({"U": ro}, 1.0)


# -- gradient objects with .flat, and lists of them ------------------------------


class FlatGrads:
    """A gradient object: one flat buffer and named views into it."""

    def __init__(self, shapes, dtype=np.float64, scale=1.0, seed=0):
        sizes = [int(np.prod(s)) for s in shapes.values()]
        rng = np.random.default_rng(seed)
        self.flat = (scale * rng.standard_normal(sum(sizes))).astype(dtype)
        self.params, at = {}, 0
        for (name, shape), n in zip(shapes.items(), sizes):
            self.params[name] = self.flat[at:at + n].reshape(shape)
            at += n


LAYER = {"U_l0": (4, 3), "W_l0": (4, 4), "b_l0": (4,)}
HEAD = {"V": (2, 4), "c": (2,)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_value_flat_in_place(dtype):
    g = FlatGrads(LAYER, dtype, scale=3.0)
    g.flat[7] = np.nan
    buf = g.flat
    expect = np.clip(g.flat, -dtype(2.5), dtype(2.5))
    clip_grad_value(g, 2.5)
    assert g.flat is buf and g.flat.dtype == dtype
    np.testing.assert_array_equal(g.flat, expect)  # NaN stays NaN
    assert np.abs(g.params["W_l0"]).max() <= 2.5  # the named views see it


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_norm_over_a_list_matches_torch(dtype, max_norm):
    torch = pytest.importorskip("torch")
    gs = [FlatGrads(LAYER, dtype, 2.0, seed=1), FlatGrads(HEAD, dtype, 2.0, seed=2)]
    ts = []
    for g in gs:
        for v in g.params.values():
            t = torch.nn.Parameter(torch.zeros(v.shape, dtype=getattr(torch, np.dtype(dtype).name)))
            t.grad = torch.from_numpy(v.copy())
            ts.append(t)
    t_total = float(torch.nn.utils.clip_grad_norm_(ts, max_norm))
    total = clip_grad_norm(gs, max_norm)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    assert total == pytest.approx(t_total, rel=rtol)
    got = [v for g in gs for v in g.params.values()]
    for t, v in zip(ts, got):
        assert v.dtype == dtype
        np.testing.assert_allclose(v, t.grad.numpy(), rtol=rtol, atol=0)


def test_clip_norm_flat_equals_named():
    a, b = FlatGrads(LAYER, seed=3), FlatGrads(LAYER, seed=3)
    named = dict(b.params)
    assert clip_grad_norm(a, 0.1) == pytest.approx(clip_grad_norm(named, 0.1), rel=1e-15)
    np.testing.assert_allclose(a.flat, b.flat, rtol=1e-15)


def test_clip_norm_total_is_summed_in_float64():
    # float32 gradients whose squares a float32 sum would drop: 1 and 4096 * (2^-13)^2
    g = FlatGrads({"b": (4097,)}, np.float32)
    g.flat[...] = 2.0**-13
    g.flat[0] = 1.0
    assert clip_grad_norm(g, 10.0) == pytest.approx(np.sqrt(1.0 + 4096 * 2.0**-26), rel=1e-15)


def test_list_mixing_flat_objects_and_dicts():
    flat = FlatGrads(HEAD, scale=5.0, seed=4)
    d = grads(scale=5.0, seed=5)
    expect_flat = np.clip(flat.flat, -1, 1)
    expect_d = {k: np.clip(v, -1, 1) for k, v in d.items()}
    clip_grad_value([flat, d], 1.0)
    np.testing.assert_array_equal(flat.flat, expect_flat)
    for k in d:
        np.testing.assert_array_equal(d[k], expect_d[k])


def test_non_contiguous_and_other_dtypes_use_numpy():
    base = grads(scale=4.0)
    g = {"W": base["W"].T, "c": base["c"].astype(np.float16)}  # a transposed view; float16
    expect = {k: np.clip(v, -1, 1) for k, v in g.items()}
    clip_grad_value(g, 1.0)
    for k in g:
        np.testing.assert_array_equal(g[k], expect[k])
    np.testing.assert_array_equal(base["W"], expect["W"].T)  # clipped through the view
    g = {"W": base["W"].T * 10}
    total = clip_grad_norm(g, 1.0)
    assert total == pytest.approx(np.linalg.norm(base["W"] * 10), rel=1e-14)
    assert np.linalg.norm(g["W"]) == pytest.approx(1.0, rel=1e-6)


def test_read_only_flat_is_rejected():
    g = FlatGrads(HEAD)
    g.flat.flags.writeable = False
    for fn in (clip_grad_value, clip_grad_norm):
        with pytest.raises(ValueError, match=r"\.flat is read-only"):
            fn(g, 1.0)
        first = FlatGrads(HEAD, scale=10.0)
        before = first.flat.copy()
        with pytest.raises(ValueError, match="read-only"):
            fn([first, g], 1.0)
        np.testing.assert_array_equal(first.flat, before)  # checked before anything is clipped


def test_clip_norm_of_a_layer_and_a_head_together():
    import rnn_ext
    layer = rnn_ext.Recurrent(3, 4, num_layers=2, dtype=np.float64, seed=0)
    head = rnn_ext.heads.Linear(4, 2, dtype=np.float64, seed=1)
    rng = np.random.default_rng(2)
    fwd = layer.forward(rng.standard_normal((5, 2, 3)))
    _, d_out, g_head = head.loss_and_grad(fwd.output, rng.standard_normal((5, 2, 2)))
    g_layer = layer.backward(fwd, d_out)
    both = np.concatenate([g_layer.flat, g_head.flat])
    total = clip_grad_norm([g_layer, g_head], 1e-3)
    assert total == pytest.approx(np.linalg.norm(both), rel=1e-14)
    np.testing.assert_allclose(np.concatenate([g_layer.flat, g_head.flat]),
                               both * (1e-3 / (total + 1e-6)), rtol=1e-15)
