"""The compiled loops of rnn_ext._flat against NumPy, one by one.

Sizes cross the loops' block and vector boundaries (the finiteness scan works
in blocks of 1024, the sums in groups of eight, SIMD clones in 4 to 16 lanes).
The update rules themselves are checked against torch.optim in test_optim.py.
"""

import numpy as np
import pytest

from rnn_ext import _flat

SIZES = [0, 1, 7, 8, 17, 1023, 1024, 1025, 3000]
DTYPES = [np.float32, np.float64]
EPS = {np.float32: 2.0**-23, np.float64: 2.0**-52}


def data(n, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_first_nonfinite(n, dtype):
    a = data(n, dtype)
    assert _flat.first_nonfinite(a) == -1
    for at in sorted({0, n // 2, n - 1, max(n - 5, 0)}):
        if n == 0:
            break
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[at] = bad
            b[n - 1] = np.nan if at < n - 1 else b[n - 1]  # a later one does not hide the first
            assert _flat.first_nonfinite(b) == at


@pytest.mark.parametrize("dtype", DTYPES)
def test_first_nonfinite_sees_extremes_as_finite(dtype):
    info = np.finfo(dtype)
    a = np.array([info.max, -info.max, info.tiny, info.smallest_subnormal, -0.0], dtype=dtype)
    assert _flat.first_nonfinite(a) == -1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_sumsq_in_double(n, dtype):
    a = data(n, dtype)
    s = _flat.sumsq(a)
    assert isinstance(s, float)
    expect = float(np.dot(a.astype(np.float64), a.astype(np.float64)))
    assert s == pytest.approx(expect, rel=1e-13, abs=0)
    # squares a float32 sum would lose: 1 + many tiny ones
    b = np.full(max(n, 1), 2.0**-13, dtype=dtype)
    b[0] = 1.0
    assert _flat.sumsq(b) == pytest.approx(1.0 + (b.size - 1) * 2.0**-26, rel=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_scale_and_clip_value(n, dtype):
    a = data(n, dtype) * 3
    if n:
        a[n // 2] = np.nan
    expect = a * dtype(0.3)
    _flat.scale(a, 0.3)
    np.testing.assert_array_equal(a, expect)
    expect = np.clip(a, -dtype(1.25), dtype(1.25))
    _flat.clip_value(a, 1.25)
    np.testing.assert_array_equal(a, expect)
    assert a.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 17, 1025])
def test_steps_against_numpy_with_the_same_operations(n, dtype):
    # The same operations as src/_flat_loops.h, written with NumPy (which rounds
    # each operation to dtype): equal to the last bit.
    f = dtype
    p, g = data(n, f, 1), data(n, f, 2)
    slots = [np.abs(data(n, f, 3)), np.abs(data(n, f, 4))]

    q, b = p.copy(), slots[0].copy()
    _flat.sgd_step(q, g, b, 0.1, 0.9, 3)
    eb = slots[0] * f(0.9) + g
    np.testing.assert_array_equal(b, eb)
    np.testing.assert_array_equal(q, p + f(-0.1) * eb)
    q, b = p.copy(), slots[0].copy()
    _flat.sgd_step(q, g, b, 0.1, 0.9, 1)
    np.testing.assert_array_equal(b, g)
    np.testing.assert_array_equal(q, p + f(-0.1) * g)
    q, b = p.copy(), slots[0].copy()
    _flat.sgd_step(q, g, b, 0.1, 0.0, 3)
    np.testing.assert_array_equal(b, slots[0])
    np.testing.assert_array_equal(q, p + f(-0.1) * g)

    q, s = p.copy(), slots[0].copy()
    _flat.adagrad_step(q, g, s, 0.1, 1e-8, 4)
    es = slots[0] + g * g
    np.testing.assert_array_equal(s, es)
    np.testing.assert_array_equal(q, p + (f(-0.1) * g) / (np.sqrt(es) + f(1e-8)))

    for beta1 in (0.9, 0.3):
        q, m, v = p.copy(), slots[0].copy(), slots[1].copy()
        t = 5
        _flat.adam_step(q, g, m, v, 1e-2, beta1, 0.999, 1e-8, t)
        w = f(1 - beta1)
        em = slots[0] + w * (g - slots[0]) if w < 0.5 else g - (g - slots[0]) * (f(1) - w)
        ev = slots[1] * f(0.999) + (f(1 - 0.999) * g) * g
        step_size = 1e-2 / (1 - beta1**t)
        bc2 = (1 - 0.999**t) ** 0.5
        ep = p + (f(-step_size) * em) / (np.sqrt(ev) / f(bc2) + f(1e-8))
        np.testing.assert_array_equal(m, em)
        np.testing.assert_array_equal(v, ev)
        np.testing.assert_array_equal(q, ep)


def test_read_only_gradient_is_accepted_and_sizes_are_guarded():
    p, g, m, v = (np.zeros(4) for _ in range(4))
    g.flags.writeable = False
    _flat.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1)
    with pytest.raises(ValueError, match="m has 3 elements, expected 4"):
        _flat.adam_step(p, g, np.zeros(3), v, 1e-3, 0.9, 0.999, 1e-8, 1)
    with pytest.raises(ValueError, match="g has 5 elements"):
        _flat.sgd_step(p, np.zeros(5), m, 0.1, 0.0, 1)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _flat.adagrad_step(p, g, m, 0.1, 1e-8, 1)


def test_arguments_are_checked_before_any_write():
    p, g, m, v = (np.zeros(4, np.float32) for _ in range(4))
    with pytest.raises(TypeError, match="p must be a numpy array, got list"):
        _flat.adam_step([0.0] * 4, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1)
    with pytest.raises(TypeError, match="p has dtype int64, expected float32 or float64"):
        _flat.sgd_step(np.zeros(4, np.int64), g, m, 0.1, 0.0, 1)
    with pytest.raises(TypeError, match="m has dtype float64, expected float32"):
        _flat.adam_step(p, g, np.zeros(4), v, 1e-3, 0.9, 0.999, 1e-8, 1)
    with pytest.raises(ValueError, match=r"g must be 1-D and C-contiguous, got shape \(2, 2\)"):
        _flat.adagrad_step(p, g.reshape(2, 2), m, 0.1, 1e-8, 1)
    with pytest.raises(ValueError, match="a must be 1-D and C-contiguous"):
        _flat.first_nonfinite(np.zeros(8, np.float32)[::2])
    with pytest.raises(TypeError, match="g must be a numpy array, got NoneType"):
        _flat.clip_value(None, 1.0)
    assert not p.any() and not m.any() and not v.any()


# -- views and records -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("writeable", [True, False])
def test_views_are_the_slices_numpy_makes(dtype, writeable):
    owner = data(40, dtype)
    flat = owner[3:33]  # a view itself: the views' base is the owner, as numpy's are
    flat.flags.writeable = writeable
    spans = (("U", 0, (4, 3)), ("b", 12, (4,)), ("W", 16, (2, 7)), ("e", 30, (0,)))
    got = _flat.views(flat, spans)
    assert list(got) == ["U", "b", "W", "e"]
    for name, at, shape in spans:
        want = flat[at:at + int(np.prod(shape))].reshape(shape)
        v = got[name]
        assert v.shape == want.shape and v.dtype == want.dtype and v.strides == want.strides
        np.testing.assert_array_equal(v, want)
        assert np.shares_memory(v, flat) or v.size == 0
        assert v.flags.writeable == want.flags.writeable == writeable
        assert v.flags.c_contiguous and v.flags.aligned and not v.flags.owndata
        assert v.base is want.base
    if writeable:
        got["b"][...] = 7
        assert (flat[12:16] == 7).all()
    else:
        with pytest.raises(ValueError, match="read-only"):
            got["b"][...] = 7


def test_views_keep_the_buffer_alive():
    v = _flat.views(np.arange(6, dtype=np.float32), (("x", 2, (2, 2)),))["x"]
    np.testing.assert_array_equal(v, [[2, 3], [4, 5]])


@pytest.mark.parametrize("spans, match", [
    ((("x", 5, (2, 3)),), r"\[5, 11\) lies outside flat's 10"),
    ((("x", -1, (2,)),), "outside"),
    ((("x", 0, (2, -1)),), "negative extent"),
    ((("x", 0, ()),), "1 to 8 axes"),
])
def test_views_refuse_spans_outside_the_buffer(spans, match):
    with pytest.raises(ValueError, match=match):
        _flat.views(np.zeros(10, np.float32), spans)


def test_views_refuse_what_is_not_a_flat_float_buffer():
    with pytest.raises(TypeError, match="numpy array"):
        _flat.views([0.0] * 4, (("x", 0, (2,)),))
    with pytest.raises(TypeError, match="float32 or float64"):
        _flat.views(np.zeros(4, np.int64), (("x", 0, (2,)),))
    with pytest.raises(ValueError, match="1-D and C-contiguous"):
        _flat.views(np.zeros(8, np.float32)[::2], (("x", 0, (2,)),))


def test_record_is_the_dataclass_init():
    from dataclasses import FrozenInstanceError

    from rnn_ext._results import Gradients

    a, b = np.zeros(2), np.ones(3)
    values = (a, b, a, None, b, a, None, b, a, b, {"U": a})
    got = _flat.record(Gradients, values)
    want = Gradients(*values)
    assert type(got) is Gradients
    for name in Gradients.__slots__:
        assert getattr(got, name) is getattr(want, name)
    with pytest.raises(FrozenInstanceError):
        got.U = b
    with pytest.raises(ValueError, match="has 11 fields, got 10"):
        _flat.record(Gradients, values[:-1])
