"""Memory: resident set size stays flat over many passes, good and refused.

RSS is read from /proc/self/statm (Linux), after a warm-up that lets the
allocators, NumPy's caches and the interpreter reach their steady state.
Shapes are tiny so that 10^4 calls take about a second; a leak of even one
small buffer or Python object per call would then show as >1 MiB.  One more
test uses large buffers, where a leaked scratch array would cost megabytes a
call.  Skipped under the sanitizer build (.ci/sanitize.sh): AddressSanitizer
keeps freed memory in quarantine on purpose, so RSS grows there by design.
"""

import gc
import os
import sys

import numpy as np
import pytest

import rnn_ext

MIB = 1 << 20
CALLS = 10_000

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm"),
    pytest.mark.skipif(os.environ.get("RNN_EXT_SANITIZED") == "1",
                       reason="AddressSanitizer's quarantine grows RSS by design"),
]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def growth(step, calls: int, warmup: int) -> int:
    """RSS growth in bytes over ``calls`` calls of step(i), after ``warmup`` calls."""
    for i in range(warmup):
        step(i)
    gc.collect()
    before = rss()
    for i in range(calls):
        step(i)
    gc.collect()
    return rss() - before


def tiny_work(dtype):
    rng = np.random.default_rng(0)
    T, B, D, H, K = 5, 3, 4, 6, 5
    m = rnn_ext.RNN(D, H, K, dtype=dtype, seed=0)
    ids = rng.integers(0, D, size=(T, B))
    xf = rng.standard_normal((T, B, D))
    y = rng.integers(0, K, size=(T, B))
    ys = rng.dirichlet(np.ones(K), size=(T, B))
    lengths = np.array([5, 2, 3])
    h0 = rng.standard_normal((B, H))
    calls = [
        lambda: m.forward(ids),
        lambda: m.forward(xf, h0=h0, lengths=lengths),
        lambda: m.loss(ids, y, reduction="mean"),
        lambda: m.grad_V(xf, ys),
        lambda: m.loss_and_grad(ids, y, lengths=lengths),
        lambda: m.loss_and_grad(xf, ys, h0=h0, reduction="mean"),
        lambda: m.loss_and_grad(ids[:, 0], y[:, 0]),
    ]
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rss_flat_over_passes(dtype):
    calls = tiny_work(dtype)
    grew = growth(lambda i: calls[i % len(calls)](), CALLS, warmup=2000)
    assert grew < MIB, f"RSS grew {grew / 1024:.0f} KiB over {CALLS} passes"


def test_rss_flat_over_refused_calls():
    m = rnn_ext.RNN(4, 6, 5, seed=0)
    ids = np.zeros((5, 3), np.int64)
    y = np.zeros((5, 3), np.int64)
    bad = [
        lambda: m.forward(np.full((5, 3, 4), np.nan)),
        lambda: m.forward(ids + 4),
        lambda: m.forward(ids, lengths=[0, 1, 2]),
        lambda: m.forward(ids, h0=np.zeros((2, 6))),
        lambda: m.loss(ids, y + 5),
        lambda: m.loss(ids, y, reduction="none"),
        lambda: m.loss(ids, y, ignore_index=2**70),
        lambda: m.grad_V(ids.astype(complex), y),
        lambda: m.loss_and_grad(ids, np.full((5, 3, 5), -1.0)),
        lambda: m.loss_and_grad(np.full((5, 3, 4), 1e39), y),
        lambda: m.loss_and_grad("x", y),
        lambda: setattr(m, "U", np.zeros((4, 6))),
        lambda: setattr(m, "V", np.full((5, 6), np.inf)),
        lambda: rnn_ext.RNN(0, 1, 1),
    ]

    def step(i):
        try:
            bad[i % len(bad)]()
        except (ValueError, TypeError):
            return
        raise AssertionError(f"bad call {i % len(bad)} was accepted")

    grew = growth(step, CALLS, warmup=2000)
    assert grew < MIB, f"RSS grew {grew / 1024:.0f} KiB over {CALLS} refused calls"


def test_rss_flat_over_large_passes():
    """Buffers of ~1-10 MB a call: a leaked scratch array would show at once."""
    rng = np.random.default_rng(1)
    T, B, D, H, K = 200, 16, 64, 96, 64
    m = rnn_ext.RNN(D, H, K, seed=0)
    ids = rng.integers(0, D, size=(T, B))
    xf = rng.standard_normal((T, B, D)).astype(np.float32)
    y = rng.integers(0, K, size=(T, B))
    calls = [lambda: m.loss_and_grad(ids, y), lambda: m.loss_and_grad(xf, y),
             lambda: m.forward(xf)]
    grew = growth(lambda i: calls[i % len(calls)](), 120, warmup=30)
    assert grew < 4 * MIB, f"RSS grew {grew / MIB:.1f} MiB over 120 large passes"
