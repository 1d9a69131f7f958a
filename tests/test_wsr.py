"""The weight-stationary recurrence (src/wsr.h) through its twin rnn_ext._wsr.

Against a NumPy float64 reference of the same equations (T time steps, B
batch, H hidden size; f = tanh or relu):

    forward,  reverse=False:  hs[t+1] = f(hs[t+1] + hs[t] @ W.T)           t = 0 .. T-1
    forward,  reverse=True:   hs[t]   = f(hs[t] + hs[t+1] @ W.T)           t = T-1 .. 0
    backward, reverse=False:  delta[t] = (delta[t] + delta[t+1] @ W) * f'(hs[t+1])
    backward, reverse=True:   delta[t] = (delta[t] + delta[t-1] @ W) * f'(hs[t])

with padded rows (t >= lengths[b]) set to 0, or to h0 = hs[T] for the
reverse forward.  Each step is checked against the reference evaluated on
the kernel's own previous step, within the float32 error bound of a dot
product of length H (plus a few ulp for tanh), and the whole recurrence
against the float64 recurrence; padded rows must be exact.  Results must be
bit-identical for 1, 2, 3 and 4 threads.

Every instruction-set path this CPU supports is tested; with RNN_EXT_SIMD set
(as .ci/simd.sh does, once per path) only that path, which must be the one in
use.
"""

import io
import os
import threading
import time
import warnings

import numpy as np
import pytest

import rnn_ext
from rnn_ext import _wsr

FORCED = os.environ.get("RNN_EXT_SIMD")
PATHS = (FORCED,) if FORCED else _wsr.available_paths()
U32 = 2.0**-24  # unit roundoff of float32

BS = (1, 2, 3, 7, 16, 33)
HS = (1, 3, 8, 17, 64, 130, 256)


@pytest.fixture(params=PATHS)
def path(request):
    before = _wsr.path()
    _wsr.set_path(request.param)
    yield request.param
    _wsr.set_path(before)


def f(a, relu):
    return np.where(a > 0, a, 0.0) if relu else np.tanh(a)


def fprime(h, relu):
    # forward: h = tanh(a) -> dh/da = 1 - h*h;  h = max(0, a) -> [h > 0]
    return (h > 0).astype(np.float64) if relu else 1.0 - h * h


def spacing(x):
    """ulp of float32 values near |x|."""
    return np.spacing(np.abs(x).astype(np.float32)).astype(np.float64)


def problem(T, B, H, seed, relu):
    rng = np.random.default_rng(seed)
    # spectral radius ~0.9: the recurrence neither explodes nor vanishes
    W = (rng.standard_normal((H, H)) * (0.9 / np.sqrt(H))).astype(np.float32)
    hs = rng.standard_normal((T + 1, B, H)).astype(np.float32)
    if relu:
        hs += 0.3  # more units active
    delta = rng.standard_normal((T, B, H)).astype(np.float32)
    return W, hs, delta


def all_lengths(T, B, seed):
    """None, and random lengths in [1, T] with the extremes present."""
    rng = np.random.default_rng(seed + 1)
    lengths = rng.integers(1, T + 1, size=B).astype(np.intp)
    lengths[0] = T
    lengths[-1] = 1 if B > 1 else lengths[-1]
    return [None, lengths]


def steps(T, reverse, backward):
    """(t, t_in): the step order and the neighbour each step reads."""
    order = range(T) if reverse == backward else range(T - 1, -1, -1)
    for t in order:
        if backward:
            yield t, (t - 1 if reverse else t + 1)
        else:
            yield t, (t + 1 if reverse else t)


def reference_forward(W, hs_in, reverse, lengths, relu):
    """The float64 recurrence; returns hs."""
    T, B, _ = hs_in.shape[0] - 1, hs_in.shape[1], hs_in.shape[2]
    h = hs_in.astype(np.float64)
    W = W.astype(np.float64)
    lens = np.full(B, T) if lengths is None else lengths
    for t, t_in in steps(T, reverse, False):
        out = t if reverse else t + 1
        h[out] = f(h[out] + h[t_in] @ W.T, relu)
        pad = t >= lens
        h[out][pad] = h[T][pad] if reverse else 0.0
    return h


def reference_backward(W, delta_in, hs, reverse, lengths, relu):
    """The float64 BPTT recurrence; returns delta."""
    T, B, _ = delta_in.shape
    d = delta_in.astype(np.float64)
    W = W.astype(np.float64)
    h = hs.astype(np.float64)
    lens = np.full(B, T) if lengths is None else lengths
    for t, t_in in steps(T, reverse, True):
        nxt = d[t_in] if 0 <= t_in < T else np.zeros_like(d[t])
        d[t] = (d[t] + nxt @ W) * fprime(h[t if reverse else t + 1], relu)
        d[t][t >= lens] = 0.0
    return d


def check_forward_steps(W, hs_in, got, reverse, lengths, relu, case):
    """Each step of got against f(A + prev @ W.T) in float64 on got's own prev."""
    T, B, H = hs_in.shape[0] - 1, hs_in.shape[1], hs_in.shape[2]
    W64, absW = W.astype(np.float64), np.abs(W.astype(np.float64))
    lens = np.full(B, T) if lengths is None else lengths
    gamma = (H + 2) * U32
    for t, t_in in steps(T, reverse, False):
        out = t if reverse else t + 1
        A = hs_in[out].astype(np.float64)
        prev = got[t_in].astype(np.float64)
        want = f(A + prev @ W64.T, relu)
        bound = np.abs(A) + np.abs(prev) @ absW.T
        # |f(a + e) - f(a)| <= |e| for tanh and relu; tanh itself is a few ulp
        allowed = gamma * bound + 8 * spacing(want) + 1e-37
        real = t < lens
        err = np.abs(got[out].astype(np.float64) - want)[real]
        assert np.all(err <= allowed[real]), (
            f"{case}: step t={t}: error {err.max():.3g} above bound {allowed[real].min():.3g}")
        pad_value = hs_in[T][~real] if reverse else 0.0
        assert np.array_equal(got[out][~real], np.broadcast_to(pad_value, got[out][~real].shape)), (
            f"{case}: step t={t}: padded rows")


def check_backward_steps(W, delta_in, hs, got, reverse, lengths, relu, case):
    """Each step of got against (up + next @ W) * f'(h) in float64 on got's own next."""
    T, B, H = delta_in.shape
    W64, absW = W.astype(np.float64), np.abs(W.astype(np.float64))
    lens = np.full(B, T) if lengths is None else lengths
    gamma = (H + 2) * U32
    for t, t_in in steps(T, reverse, True):
        up = delta_in[t].astype(np.float64)
        nxt = got[t_in].astype(np.float64) if 0 <= t_in < T else np.zeros((B, H))
        fp = fprime(hs[t if reverse else t + 1].astype(np.float64), relu)
        want = (up + nxt @ W64) * fp
        bound = (np.abs(up) + np.abs(nxt) @ absW) * np.abs(fp)
        allowed = gamma * bound + 4 * spacing(want) + 1e-37
        real = t < lens
        err = np.abs(got[t].astype(np.float64) - want)[real]
        assert np.all(err <= allowed[real]), (
            f"{case}: step t={t}: error {err.max():.3g} above bound {allowed[real].min():.3g}")
        assert np.all(got[t][~real] == 0), f"{case}: step t={t}: padded rows not zero"


def bits(a):
    return a.view(np.int32)


def T_for(B, H):
    return 1 + (3 * B + H) % 7


def test_forced_path_is_in_use():
    if FORCED:
        assert _wsr.path() == FORCED, f"RNN_EXT_SIMD={FORCED} but the path is {_wsr.path()}"
    assert _wsr.path() in _wsr.available_paths()
    assert "portable" in _wsr.available_paths()


@pytest.mark.parametrize("H", HS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_forward(path, H, reverse, relu):
    for B in BS:
        T = T_for(B, H)
        seed = 1000 * B + H
        W, hs_in, _ = problem(T, B, H, seed, relu)
        for lengths in all_lengths(T, B, seed):
            case = f"{path} forward T={T} B={B} H={H} reverse={reverse} relu={relu} lengths={lengths}"
            got = hs_in.copy()
            _wsr.forward(W, got, reverse, lengths, relu, 1)
            assert got.dtype == np.float32
            # the row holding h0 is read, never written
            h0_row = T if reverse else 0
            assert np.array_equal(bits(got[h0_row]), bits(hs_in[h0_row])), case
            check_forward_steps(W, hs_in, got, reverse, lengths, relu, case)
            ref = reference_forward(W, hs_in, reverse, lengths, relu)
            scale = max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * scale, err_msg=case)
            for n in (2, 3, 4):
                again = hs_in.copy()
                _wsr.forward(W, again, reverse, lengths, relu, n)
                assert np.array_equal(bits(again), bits(got)), f"{case}: nthreads={n} differs"


@pytest.mark.parametrize("H", HS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_backward(path, H, reverse, relu):
    for B in BS:
        T = T_for(B, H)
        seed = 2000 * B + H
        W, hs_in, delta_in = problem(T, B, H, seed, relu)
        for lengths in all_lengths(T, B, seed):
            case = f"{path} backward T={T} B={B} H={H} reverse={reverse} relu={relu} lengths={lengths}"
            hs = hs_in.copy()
            _wsr.forward(W, hs, reverse, lengths, relu, 1)
            # the padded steps' upstream gradient is arbitrary, never read
            up = delta_in.copy()
            if lengths is not None:
                for b, n in enumerate(lengths):
                    up[n:, b] = np.nan
            hs_before = hs.copy()
            got = up.copy()
            _wsr.backward(W, got, hs, reverse, lengths, relu, 1)
            assert got.dtype == np.float32
            assert np.array_equal(bits(hs), bits(hs_before)), f"{case}: hs written"
            check_backward_steps(W, up, hs, got, reverse, lengths, relu, case)
            ref = reference_backward(W, np.nan_to_num(up), hs, reverse, lengths, relu)
            scale = max(1.0, float(np.abs(ref).max()))
            np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * scale, err_msg=case)
            for n in (2, 3, 4):
                again = up.copy()
                _wsr.backward(W, again, hs, reverse, lengths, relu, n)
                assert np.array_equal(bits(again), bits(got)), f"{case}: nthreads={n} differs"


@pytest.mark.parametrize("lo, hi", [(-10.0, 10.0), (-1.0, 1.0), (-1e-3, 1e-3)])
def test_tanh_within_a_few_ulp(path, lo, hi):
    # W = 0: one step is h = tanh(A), over every lane and the masked tail
    x = np.linspace(lo, hi, 40 * 57, dtype=np.float32)
    hs = np.zeros((2, 40, 57), dtype=np.float32)
    hs[1] = x.reshape(40, 57)
    _wsr.forward(np.zeros((57, 57), dtype=np.float32), hs)
    exact = np.tanh(x.astype(np.float64)).reshape(40, 57)
    ulps = np.abs(hs[1].astype(np.float64) - exact) / spacing(exact)
    assert ulps.max() <= 7, f"{path}: {ulps.max()} ulp"
    assert np.all(np.abs(hs[1]) <= 1)


def test_tanh_and_relu_special_values(path):
    x = np.array([0.0, 1e-30, -1e-30, 50.0, -50.0, 3e38, -3e38, 7.9, -7.9, 4e-4, -4e-4,
                  np.nan, np.inf, -np.inf, 1.0, -1.0], dtype=np.float32)
    W = np.zeros((16, 16), dtype=np.float32)
    hs = np.zeros((2, 1, 16), dtype=np.float32)
    hs[1, 0] = x
    _wsr.forward(W, hs)
    want = np.tanh(x)
    assert np.isnan(hs[1, 0, 11])
    keep = ~np.isnan(x)
    assert np.max(np.abs(hs[1, 0][keep] - want[keep]) / spacing(want[keep])) <= 7
    hs = np.zeros((2, 1, 16), dtype=np.float32)
    hs[1, 0] = x
    _wsr.forward(W, hs, relu=True)
    # relu as rnn_ext's kernels have it: a > 0 ? a : 0 (so NaN -> 0)
    np.testing.assert_array_equal(hs[1, 0], np.where(x > 0, x, 0))


@pytest.mark.parametrize("H", [1, 31, 32, 33, 70, 96, 200, 257])
def test_pack_layout(H, path):
    # every path packs the same layout (whole panels but their last H % 8
    # rows by its own transpose where it has one, the rest by the scalar loop)
    rng = np.random.default_rng(H)
    W = rng.standard_normal((H, H)).astype(np.float32)
    P = -(-H // 32)
    assert _wsr.packed_size(H) == P * 32 * H
    fwd, bwd = _wsr.pack(W)
    for packed, Wf in ((fwd, W.T), (bwd, W)):
        # panel p, row k, lane j = Wf[k, 32 p + j], zero past H
        panels = packed.reshape(P, H, 32).transpose(1, 0, 2).reshape(H, P * 32)
        np.testing.assert_array_equal(panels[:, :H], Wf)
        assert np.all(panels[:, H:] == 0)
    # into given buffers, overwriting whatever they held
    out = (np.full_like(fwd, np.nan), np.full_like(bwd, np.nan))
    got = _wsr.pack(W, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    np.testing.assert_array_equal(out[0], fwd)
    np.testing.assert_array_equal(out[1], bwd)


def test_threads_match_on_wide_problem(path):
    # 16 panels: every thread count splits differently
    T, B, H = 3, 37, 512
    W, hs_in, delta_in = problem(T, B, H, 5, False)
    outs, douts = [], []
    for n in (1, 2, 3, 4, 7):
        hs = hs_in.copy()
        _wsr.forward(W, hs, False, None, False, n)
        d = delta_in.copy()
        _wsr.backward(W, d, hs, False, None, False, n)
        outs.append(hs)
        douts.append(d)
    for hs, d in zip(outs[1:], douts[1:]):
        assert np.array_equal(bits(hs), bits(outs[0]))
        assert np.array_equal(bits(d), bits(douts[0]))


@pytest.mark.parametrize("B", [12, 24])
def test_wider_than_l2_splits_by_columns_and_fetches_ahead(path, B):
    # H > 512: threads split W's panels (a barrier per step), always so for
    # B = 12 (too few rows to split by), for B = 24 unless a thread's share of
    # W is more than twice the L2 and it gets 12 rows (src/wsr.c: then by
    # rows, as two threads do on a 512 KiB L2); at H >= 900 the
    # kernels fetch the next panel into L2 as they go (src/wsr_avx512.c); a
    # ragged last panel (1000 = 31 * 32 + 8), reverse and ragged lengths
    T, H = 3, 1000
    W, hs_in, delta_in = problem(T, B, H, 6, False)
    lengths = np.array(([3, 1, 2] * B)[:B - 2] + [3, 3], dtype=np.intp)
    for reverse in (False, True):
        case = f"{path} T={T} B={B} H={H} reverse={reverse}"
        hs = hs_in.copy()
        _wsr.forward(W, hs, reverse, lengths, False, 1)
        check_forward_steps(W, hs_in, hs, reverse, lengths, False, case)
        d = delta_in.copy()
        _wsr.backward(W, d, hs, reverse, lengths, False, 1)
        check_backward_steps(W, delta_in, hs, d, reverse, lengths, False, case)
        for n in (2, 3):
            again = hs_in.copy()
            _wsr.forward(W, again, reverse, lengths, False, n)
            assert np.array_equal(bits(again), bits(hs)), f"{case}: nthreads={n} differs"
            d2 = delta_in.copy()
            _wsr.backward(W, d2, again, reverse, lengths, False, n)
            assert np.array_equal(bits(d2), bits(d)), f"{case}: nthreads={n} differs"


def test_concurrent_calls_are_bit_identical_and_release_the_gil():
    # Python threads calling multi-threaded passes at once: one owns the
    # pool, the others run single-threaded; all results equal the serial one
    T, B, H = 20, 16, 256
    W, hs_in, delta_in = problem(T, B, H, 9, False)
    want = hs_in.copy()
    _wsr.forward(W, want, False, None, False, 1)
    want_d = delta_in.copy()
    _wsr.backward(W, want_d, want, False, None, False, 1)
    errors = []

    def work():
        for _ in range(30):
            hs = hs_in.copy()
            _wsr.forward(W, hs, False, None, False, 2)
            d = delta_in.copy()
            _wsr.backward(W, d, hs, False, None, False, 2)
            if not (np.array_equal(bits(hs), bits(want)) and np.array_equal(bits(d), bits(want_d))):
                errors.append("differs")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "deadlock"
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_pool_works_in_a_forked_child():
    T, B, H = 4, 8, 128
    W, hs_in, _ = problem(T, B, H, 3, False)
    want = hs_in.copy()
    _wsr.forward(W, want, False, None, False, 2)  # the pool exists now
    with warnings.catch_warnings():
        # Python warns that forking a multi-threaded process may deadlock:
        # exactly what this test checks does not happen
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        ok = False
        try:
            hs = hs_in.copy()
            _wsr.forward(W, hs, False, None, False, 2)
            ok = np.array_equal(bits(hs), bits(want))
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0


def test_set_path_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="path must be one of"):
        _wsr.set_path("sse9")
    for name in _wsr.PATHS:
        if name not in _wsr.available_paths():
            with pytest.raises(ValueError):
                _wsr.set_path(name)
    with pytest.raises(TypeError):
        _wsr.set_path(b"portable")


def test_bad_input_raises():
    W = np.zeros((4, 4), dtype=np.float32)
    hs = np.zeros((3, 2, 4), dtype=np.float32)
    with pytest.raises(TypeError, match="float32"):
        _wsr.forward(W.astype(np.float64), hs)
    with pytest.raises(ValueError, match="shape"):
        _wsr.forward(np.zeros((5, 5), dtype=np.float32), hs)
    with pytest.raises(ValueError, match="C-contiguous"):
        _wsr.forward(W, np.zeros((3, 4, 2), dtype=np.float32).transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 2\]"):
        _wsr.forward(W, hs, lengths=np.array([0, 2], dtype=np.intp))
    with pytest.raises(TypeError, match="intp"):
        _wsr.forward(W, hs, lengths=np.array([1, 2], dtype=np.int32))
    with pytest.raises(ValueError, match="overlap"):
        _wsr.backward(W, hs[1:], hs)
    with pytest.raises(ValueError, match="floats"):
        _wsr.forward_packed(np.zeros(3, dtype=np.float32), hs)


@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("relu", [False, True])
def test_blas_loops_match(B, relu):
    # the per-step BLAS loops the benchmark compares against compute the same
    T, H = 4, 40
    W, hs_in, delta_in = problem(T, B, H, 11, relu)
    want = hs_in.copy()
    _wsr.forward(W, want, relu=relu)
    got = hs_in.copy()
    _wsr.blas_forward(W, got, relu)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    want_d = delta_in.copy()
    _wsr.backward(W, want_d, want, relu=relu)
    got_d = delta_in.copy()
    _wsr.blas_backward(W, got_d, want, relu)
    np.testing.assert_allclose(got_d, want_d, rtol=0, atol=1e-5 * max(1, np.abs(want_d).max()))


def test_show_config_names_the_recurrence_path():
    buf = io.StringIO()
    rnn_ext.show_config(file=buf)
    assert f"float32 recurrence path: {_wsr.path()} " in buf.getvalue()
    info = rnn_ext.show_config(mode="dicts")
    assert info["recurrence"]["path"] == _wsr.path()
    assert info["recurrence"]["available"] == list(_wsr.available_paths())
