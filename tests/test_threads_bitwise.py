"""Threads: concurrent passes are bit-identical to serial ones, and the kernel releases the GIL.

BLAS runs on one thread in these tests (threadpoolctl and rnn_ext.threads(1)):
a multi-threaded BLAS may split a reduction differently from call to call,
which docs/reliability.md discusses.  With one BLAS thread every pass is a
fixed sequence of floating-point operations on buffers it allocates itself,
so 16 Python threads calling one shared model (or 16 models built from one
seed) must reproduce the serial results bit for bit.

No timing assertions: the GIL test counts how often the main thread ran
while another thread was inside the kernel, which is zero or one when the GIL
is held and hundreds when it is released.
"""

import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import rnn_ext
from rnn_ext import _kernels

N_THREADS = 16
D, H, K = 7, 12, 9


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1, user_api="blas"), rnn_ext.threads(1):
        yield


def batches(dtype):
    """A mix of calls: ids and floats, lengths, soft targets, h0, unbatched, mean."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(N_THREADS):
        T, B = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        kw = {}
        x = rng.integers(0, D, size=(T, B)) if i % 2 else rng.standard_normal((T, B, D))
        y = rng.integers(0, K, size=(T, B)) if i % 3 else rng.dirichlet(np.ones(K), size=(T, B))
        if i % 4 == 1:
            kw["lengths"] = rng.integers(1, T + 1, size=B)
        if i % 5 == 2:
            kw["h0"] = rng.standard_normal((B, H)).astype(dtype)
        if i % 7 == 3:
            x, y = x[:, 0], y[:, 0]
            kw.pop("lengths", None)
            kw.pop("h0", None)
        if i % 6 == 4:
            kw["reduction"] = "mean"
        out.append((x, y, kw))
    return out


def run_all(model, work):
    """Every pass on every batch; the results as a flat list of floats and arrays."""
    results = []
    for x, y, kw in work:
        fkw = {k: v for k, v in kw.items() if k in ("h0", "lengths")}
        f = model.forward(x, **fkw)
        results += [f.h, f.probs, f.h_last]
        results.append(model.loss(x, y, **kw))
        loss, dV, dc = model.grad_V(x, y, **kw)
        results += [loss, dV, dc]
        loss, g = model.loss_and_grad(x, y, **kw)
        results += [loss, g.U, g.W, g.V, g.b, g.c, g.h0, g.x, g.h_last]
    return results


def assert_bitwise_equal(got, want, who):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        if isinstance(b, float):
            assert a == b or (a != a and b != b), f"{who}: result {i}: {a!r} != {b!r}"
        elif b is None:
            assert a is None, f"{who}: result {i}"
        else:
            assert a.dtype == b.dtype and a.shape == b.shape, f"{who}: result {i}"
            assert a.tobytes() == b.tobytes(), f"{who}: result {i} differs in its bits"


def run_threads(target, n=N_THREADS):
    """Start n threads on target(i) behind a barrier; return their results in order."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def body(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append((i, exc))

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shared_model_bit_identical_to_serial(dtype):
    model = rnn_ext.RNN(D, H, K, dtype=dtype, seed=11)
    work = batches(dtype)
    serial = [run_all(model, [w]) for w in work]
    params = {n: a.copy() for n, a in model.parameters().items()}

    # every thread runs every batch, each starting at a different one, three times over
    def target(i):
        order = [(i + j) % N_THREADS for j in range(N_THREADS)] * 3
        return [(k, run_all(model, [work[k]])) for k in order]

    for i, res in enumerate(run_threads(target)):
        for k, r in res:
            assert_bitwise_equal(r, serial[k], f"thread {i}, batch {k}")
    for n, a in model.parameters().items():
        assert np.array_equal(a, params[n]), f"parameter {n} changed"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_separate_models_bit_identical_to_serial(dtype):
    work = batches(dtype)
    serial = run_all(rnn_ext.RNN(D, H, K, dtype=dtype, seed=12), work)

    def target(i):
        own = rnn_ext.RNN(D, H, K, dtype=dtype, seed=12)
        return [run_all(own, work) for _ in range(2)]

    for i, runs in enumerate(run_threads(target)):
        for r in runs:
            assert_bitwise_equal(r, serial, f"thread {i}")


def test_repeated_training_is_bit_identical():
    """Same seed, same data, same thread count: SGD steps give the same bits."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, D, size=(20, 4))
    y = rng.integers(0, K, size=(20, 4))

    def train(_=None):
        m = rnn_ext.RNN(D, H, K, seed=13)
        losses = []
        for _step in range(25):
            loss, g = m.loss_and_grad(x, y, reduction="mean")
            losses.append(loss)
            for n, p in m.parameters().items():
                p -= 0.5 * getattr(g, n)
        return losses, {n: a.copy() for n, a in m.parameters().items()}

    first = train()
    for losses, params in [train()] + run_threads(train, 4):
        assert losses == first[0]
        for n in params:
            assert params[n].tobytes() == first[1][n].tobytes(), n


# --- the GIL --------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ["forward", "loss_and_grad"])
def test_kernel_releases_the_gil(monkeypatch, entry):
    """While one thread is inside the kernel, the main thread keeps running Python.

    The kernel's entry point is wrapped so the main thread knows when the other
    thread is inside it; each tick of the main thread's loop needs the GIL
    (sleep releases it, waking up takes it back).  A kernel holding the GIL
    would allow at most one tick (a switch just before the call); a kernel
    that releases it allows one per millisecond of the call."""
    real = _kernels.model_pass
    inside = threading.Event()

    def wrapped(*args):
        inside.set()
        try:
            return real(*args)
        finally:
            inside.clear()

    monkeypatch.setattr(_kernels, "model_pass", wrapped)
    model = rnn_ext.RNN(8, 16, 8, seed=0)
    x = np.zeros((300_000, 1), np.int64)     # a few hundred ms in the kernel
    done = threading.Event()

    def worker():
        if entry == "forward":
            model.forward(x)
        else:
            model.loss_and_grad(x, x)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    ticks_inside = 0
    while not done.is_set():
        if inside.is_set():
            ticks_inside += 1
        time.sleep(0.001)
    t.join()
    assert ticks_inside >= 3, (
        f"the main thread ran {ticks_inside} times while the kernel ran: the GIL is held")
