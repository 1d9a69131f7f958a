"""A pass reads one coherent set of parameters, and construction draws in place.

Another thread assigning ``m.W`` while passes run must never give a pass whose
forward used one W and whose backward the other: every result equals, bit for
bit, the result under one of the two W's.  And building a model peaks at
about its parameters' size (drawn in float64 chunks into the flat buffer),
not at a float64 copy of everything.
"""

import threading
import tracemalloc

import numpy as np

import rnn_ext


def test_concurrent_assignment_never_tears_a_pass():
    m = rnn_ext.RNN(6, 32, 6, seed=0, dtype=np.float64)
    rng = np.random.default_rng(1)
    Ws = [m.W.copy(), rng.uniform(-0.3, 0.3, size=(32, 32))]
    x = rng.integers(0, 6, size=(20, 4))
    y = rng.integers(0, 6, size=(20, 4))
    refs = []
    for W in Ws:
        m.W = W
        loss, g = m.loss_and_grad(x, y)
        refs.append((loss, g.flat.copy()))
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            m.W = Ws[i % 2]
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        torn = 0
        for _ in range(300):
            loss, g = m.loss_and_grad(x, y)
            if not any(loss == rl and np.array_equal(g.flat, rg) for rl, rg in refs):
                torn += 1
    finally:
        stop.set()
        t.join()
    assert torn == 0


def test_construction_peak_is_about_the_parameters():
    tracemalloc.start()
    try:
        m = rnn_ext.RNN(65, 1024, 65, seed=0)   # float32: 4.5 MiB of parameters
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.3 * m.flat.nbytes, (peak, m.flat.nbytes)
