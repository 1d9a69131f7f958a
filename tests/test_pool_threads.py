"""A pass on rnn_ext's own thread pool gives the same bits for every thread count.

float32 passes with a batch of two or more run the weight-stationary
recurrence; with ``rnn_ext.threads(n)`` every parallel part of the pass (the
recurrence, one barrier per step; the large products, cut into the same parts
for every n; the packing of W) runs on n threads of the pool, the BLAS at one
thread.  Each output element is then one fixed sequence of floating-point
operations, so 1, 2, 3 and 5 threads must agree bit for bit, for the model's
every entry point and for the layer's forward and backward.  The sizes are
chosen so that the large products are split (above 2^22 flops) and the
recurrence has several 32-column panels per thread.

No timing assertions: speed is measured in benchmarks/bench.py.
"""

import os

import numpy as np
import pytest

import rnn_ext
from rnn_ext import _threads

COUNTS = (1, 2, 3, 5)
pytestmark = pytest.mark.skipif(os.environ.get("RNN_EXT_SIMD") == "blas",
                                reason="RNN_EXT_SIMD=blas: no pool pass (a GEMM per step)")


def as_bytes(results):
    return [None if r is None else np.asarray(r).tobytes() for r in results]


def model_results(model, x, y, **kw):
    f = model.forward(x, **{k: v for k, v in kw.items() if k in ("h0", "lengths")})
    loss, g = model.loss_and_grad(x, y, **kw)
    return as_bytes([f.h, f.probs, f.h_n, model.loss(x, y, **kw), loss, g.U, g.W, g.V,
                     g.b, g.c, g.h0, g.x, g.h_last])


@pytest.mark.parametrize("case", ["ids", "ids-small-vocab", "floats-ragged-h0",
                                  "two-layers-bidirectional-relu", "batch-one"])
def test_model_pass_bit_identical_for_every_thread_count(case):
    rng = np.random.default_rng(3)
    T, B, D, H, K = 20, 16, 200, 160, 200
    kw = {}
    if case == "batch-one":
        # B = 1 runs the packed recurrence too, and a step of B·H·H = 2^16
        # multiply-adds is split over the threads
        B, H = 1, 256
        assert B * H * H >= _threads.POOL_MIN_STEP
        model = rnn_ext.RNN(D, H, K, seed=4)
        x = rng.integers(0, D, size=(T, B))
    elif case == "ids":
        model = rnn_ext.RNN(D, H, K, seed=1)
        x = rng.integers(0, D, size=(T, B))
    elif case == "ids-small-vocab":
        # D <= H: dU's scatter-add runs in two parts of rows too (src/_pcols.pxd)
        D = K = 65
        model = rnn_ext.RNN(D, H, K, seed=1)
        x = rng.integers(0, D, size=(T, B))
    elif case == "floats-ragged-h0":
        model = rnn_ext.RNN(D, H, K, seed=2)
        x = rng.standard_normal((T, B, D)).astype(np.float32)
        kw = {"lengths": rng.integers(1, T + 1, size=B),
              "h0": rng.standard_normal((B, H)).astype(np.float32)}
    else:
        model = rnn_ext.RNN(D, H, K, num_layers=2, bidirectional=True, nonlinearity="relu",
                            seed=3)
        x = rng.standard_normal((T, B, D)).astype(np.float32)
    y = rng.integers(0, K, size=(T, B))
    got = {}
    for n in COUNTS:
        with rnn_ext.threads(n):
            got[n] = model_results(model, x, y, **kw)
    for n in COUNTS[1:]:
        for i, (a, b) in enumerate(zip(got[n], got[1])):
            assert a == b, f"{case}: result {i} differs between 1 and {n} threads"


def test_layer_forward_backward_bit_identical_for_every_thread_count():
    rng = np.random.default_rng(4)
    T, B, D, H = 24, 32, 96, 192
    layer = rnn_ext.Recurrent(D, H, num_layers=2, bidirectional=True, seed=5)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    d_out = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    got = {}
    for n in COUNTS:
        with rnn_ext.threads(n):
            fwd = layer.forward(x)
            g = layer.backward(fwd, d_out)
            got[n] = as_bytes([fwd.output, fwd.h_n, g.flat, g.x, g.h0])
    for n in COUNTS[1:]:
        assert got[n] == got[1], f"the layer differs between 1 and {n} threads"


def test_weight_gradients_cut_along_the_rows_are_the_whole_sums():
    """dW and dU (C = δ.T @ X over T·B rows, T·B at least twice C's sides) are
    computed in two runs of rows and summed: the result is the whole product,
    to float32 rounding, for both layers and directions and every thread count."""
    rng = np.random.default_rng(8)
    T, B, D, H = 24, 32, 96, 192       # T·B = 768 >= 2·max(H, D)
    layer = rnn_ext.Recurrent(D, H, num_layers=2, bidirectional=True, seed=9)
    layer64 = rnn_ext.Recurrent(D, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=9)
    layer64.set_params({k: v.astype(np.float64) for k, v in layer.params.items()})
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    d_out = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    want = layer64.backward(layer64.forward(x.astype(np.float64)), d_out.astype(np.float64))
    for n in (1, 2):
        with rnn_ext.threads(n):
            got = layer.backward(layer.forward(x), d_out)
        for name, g64 in want.params.items():
            g = got.params[name]
            assert np.max(np.abs(g - g64)) <= 2e-5 * np.max(np.abs(g64)), (name, n)


@pytest.mark.parametrize("T, B", [(20, 16), (3, 64), (200, 1)])
def test_bias_and_id_gradients_summed_in_parts_are_the_whole_sums(T, B):
    """db and the ids' dU are sums over all T·B rows; from 128 rows on they are
    summed in two runs of rows, then added (src/_pcols.pxd).  Against the
    float64 pass's whole sums, to float32 rounding, for every thread count;
    (200, 1) has its 200 rows in parts at B = 1.  So are dW and dV, which at
    (20, 16) run on the weight-gradient kernel of the AVX-512 and AVX2 paths
    (src/wsr.h, rnn_ext_wsr_gemm_tn: T·B at least twice their sides)."""
    rng = np.random.default_rng(11)
    D, H, K = 65, 160, 65
    model = rnn_ext.RNN(D, H, K, seed=12)
    model64 = rnn_ext.RNN(D, H, K, dtype=np.float64, seed=12)
    model64.set_params({k: v.astype(np.float64) for k, v in model.params.items()})
    x = rng.integers(0, D, size=(T, B))
    y = rng.integers(0, K, size=(T, B))
    want = model64.loss_and_grad(x, y)[1]
    for n in COUNTS:
        with rnn_ext.threads(n):
            got = model.loss_and_grad(x, y)[1]
        for name in ("U", "b", "W", "V", "c"):
            g, g64 = getattr(got, name), getattr(want, name)
            assert np.max(np.abs(g - g64)) <= 2e-5 * np.max(np.abs(g64)), (name, n)


def test_pool_pass_matches_the_blas_pass_to_rounding():
    """The split products and the per-step BLAS path compute the same pass."""
    rng = np.random.default_rng(6)
    T, B, D, H, K = 16, 16, 200, 128, 200
    model = rnn_ext.RNN(D, H, K, seed=6)
    x, y = rng.integers(0, D, size=(T, B)), rng.integers(0, K, size=(T, B))
    model64 = rnn_ext.RNN(D, H, K, dtype=np.float64, seed=6)
    model64.set_params({k: v.astype(np.float64) for k, v in model.parameters().items()})
    with rnn_ext.threads(2):
        loss, g = model.loss_and_grad(x, y)
    loss64, g64 = model64.loss_and_grad(x, y)
    assert abs(loss - loss64) <= 1e-5 * abs(loss64)
    for name in ("U", "W", "V", "b", "c"):
        a, b = getattr(g, name), getattr(g64, name)
        assert np.max(np.abs(a - b)) <= 2e-4 * np.max(np.abs(b)), name


def test_pool_pass_runs_the_blas_on_one_thread_and_restores():
    if _threads._controller is None:
        _threads._libs()
    before = [get() for get in _threads._getters]
    ctx, n = _threads.pool_threads(100, 32, 256, 1024, 256)
    assert n == max(before)
    with ctx:
        assert all(get() == 1 for get in _threads._getters)
    assert [get() for get in _threads._getters] == before
    with rnn_ext.threads(3):
        assert _threads.pool_threads(100, 32, 256, 1024, 256)[1] == 3
    # a small pass: one thread, whatever the BLAS's count
    assert _threads.pool_threads(2, 2, 3, 4, 5)[1] == 1


def test_pool_runs_one_thread_when_a_step_is_too_small_to_split():
    """The thread count is a ceiling: below POOL_MIN_STEP multiply-adds a step
    (one barrier each) runs on one thread even when more were asked for."""
    small = _threads.POOL_MIN_STEP
    with rnn_ext.threads(2):
        assert _threads.pool_threads(100, 1, 65, 64, 65)[1] == 1        # 1·64·64 = 2^12
        assert _threads.pool_threads(100, 2, 65, 127, 65)[1] == 1       # just below 2^15
        assert small == 2 * 128 * 128
        assert _threads.pool_threads(100, 2, 65, 128, 65)[1] == 2       # exactly 2^15
        assert _threads.pool_threads(100, 1, 65, 256, 65)[1] == 2


def test_float32_passes_pack_at_every_batch_size_float64_never():
    from rnn_ext.recurrent import PACKED_MIN_ROWS, use_packed
    f32 = rnn_ext.Recurrent(4, 1024, seed=0)._stack
    f64 = rnn_ext.Recurrent(4, 64, dtype=np.float64, seed=0)._stack
    assert use_packed(f32, PACKED_MIN_ROWS, 1) and use_packed(f32, 25, 1)
    assert use_packed(f32, 1, PACKED_MIN_ROWS) and use_packed(f32, 100, 2)
    # a pass of a few rows makes a BLAS call per step: packing W would cost more
    assert not use_packed(f32, 1, 1) and not use_packed(f32, PACKED_MIN_ROWS - 1, 1)
    assert not use_packed(f64, 100, 1) and not use_packed(f64, 100, 32)
