"""Memory: nothing grows over many passes, good and refused.

After a warm-up that lets the allocators, NumPy's caches and the interpreter
reach their steady state, 10^4 calls on tiny shapes (a fraction of a second)
are counted three ways:

- bytes in use in the C heap (glibc's ``mallinfo2``): a leak of one 16-byte
  ``malloc`` per pass (a 32-byte chunk) shows as 320 000 bytes; with no leak
  the count moves by under 100 bytes (measured: 80), so the limit is 16 KiB;
- Python's allocated blocks (``sys.getallocatedblocks``): one leaked object a
  pass shows as 10^4; measured with no leak: 0 or 1; limit 100;
- the resident set size, from /proc/self/statm: page-sized and noisy, it
  misses small leaks (a 16-byte leak reuses freed chunks and shows 0 bytes)
  but catches anything mapped directly; limit 1 MiB.

One more test uses large buffers, where a leaked scratch array would cost
megabytes a call.  Skipped under the sanitizer build (.ci/sanitize.sh):
AddressSanitizer keeps freed memory in quarantine on purpose, so memory grows
there by design.
"""

import ctypes
import ctypes.util
import gc
import os
import sys

import numpy as np
import pytest

import rnn_ext

MIB = 1 << 20
CALLS = 10_000
HEAP_LIMIT = 16 * 1024  # bytes over CALLS passes; a 16-byte leak shows as 320 000
BLOCK_LIMIT = 100  # Python blocks over CALLS passes; one leaked object a pass shows as 10 000

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm"),
    pytest.mark.skipif(os.environ.get("RNN_EXT_SANITIZED") == "1",
                       reason="AddressSanitizer's quarantine grows RSS by design"),
]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    return fn


_MALLINFO2 = _mallinfo2()
needs_mallinfo2 = pytest.mark.skipif(_MALLINFO2 is None, reason="needs glibc >= 2.33 (mallinfo2)")


def heap_bytes() -> int:
    """Bytes the C heap has handed out and not taken back (small chunks and mmapped ones)."""
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


def growth(step, calls: int, warmup: int) -> dict[str, int]:
    """Growth of RSS, C heap bytes and Python blocks over ``calls`` calls of step(i)."""
    for i in range(warmup):
        step(i)
    gc.collect()
    heap = heap_bytes() if _MALLINFO2 else 0
    before = rss(), sys.getallocatedblocks()
    for i in range(calls):
        step(i)
    gc.collect()
    return {"rss": rss() - before[0], "blocks": sys.getallocatedblocks() - before[1],
            "heap": (heap_bytes() - heap) if _MALLINFO2 else 0}


def assert_flat(grew: dict[str, int], what: str) -> None:
    assert grew["rss"] < MIB, f"RSS grew {grew['rss'] / 1024:.0f} KiB over {what}"
    assert grew["blocks"] < BLOCK_LIMIT, f"{grew['blocks']} more Python blocks after {what}"
    assert grew["heap"] < HEAP_LIMIT, f"the C heap grew {grew['heap']} bytes over {what}"


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
    assert_flat(grew, f"{CALLS} passes")


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
    assert_flat(grew, f"{CALLS} refused calls")


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
    grew = growth(lambda i: calls[i % len(calls)](), 120, warmup=30)["rss"]
    assert grew < 4 * MIB, f"RSS grew {grew / MIB:.1f} MiB over 120 large passes"


@needs_mallinfo2
def test_heap_count_sees_a_16_byte_leak():
    """The heap count itself: one 16-byte malloc a pass, never freed, fails the limit."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    calls = tiny_work(np.float32)

    def leaky(i):
        calls[i % len(calls)]()
        libc.malloc(16)

    grew = growth(leaky, CALLS, warmup=200)
    assert grew["heap"] >= 16 * CALLS > HEAP_LIMIT

