"""Thread control: rnn_ext.set_num_threads, rnn_ext.threads and the per-pass choice.

No timing here: only that the count of the kernel's BLAS is set, restored and
validated.  Speed is measured in benchmarks/.
"""

import functools
import threading

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

import rnn_ext
from rnn_ext import _threads


@functools.cache
def kernel_blas():
    """The kernel's BLAS through a controller of its own, not _threads'."""
    paths = [info["filepath"] for info in _threads.blas_info()]
    return ThreadpoolController().select(filepath=paths).lib_controllers


def blas_counts():
    return [lib.num_threads for lib in kernel_blas()]


def set_blas_directly(n):
    for lib in kernel_blas():
        getattr(lib, "_real_set_num_threads", lib.set_num_threads)(n)


@pytest.fixture(autouse=True)
def restore_threads():
    _threads.set_num_threads(None)
    before = blas_counts()
    yield
    _threads.set_num_threads(None)
    assert blas_counts() == before


def test_finds_the_kernels_blas():
    info = _threads.blas_info()
    assert info, "no BLAS found for the kernel"
    assert all(entry["user_api"] == "blas" for entry in info)


def test_set_num_threads_sets_and_none_restores():
    default = blas_counts()
    _threads.set_num_threads(1)
    assert blas_counts() == [1] * len(default)
    assert _threads.get_num_threads() == 1
    _threads.set_num_threads(3)
    assert blas_counts() == [3] * len(default)
    _threads.set_num_threads(None)
    assert blas_counts() == default
    assert _threads.get_num_threads() is None


def test_numpy_integer_accepted():
    _threads.set_num_threads(np.int64(1))
    assert _threads.get_num_threads() == 1
    assert type(_threads.get_num_threads()) is int


def test_threads_context_sets_and_restores():
    default = blas_counts()
    with _threads.threads(1) as ctx:
        assert blas_counts() == [1] * len(default)
        assert _threads.get_num_threads() == 1
        with _threads.threads(2):
            assert blas_counts() == [2] * len(default)
        assert blas_counts() == [1] * len(default)
    assert ctx is not None
    assert blas_counts() == default
    assert _threads.get_num_threads() is None


def test_threads_restores_user_setting():
    _threads.set_num_threads(2)
    with _threads.threads(1):
        assert _threads.get_num_threads() == 1
    assert _threads.get_num_threads() == 2
    assert set(blas_counts()) == {2}
    with _threads.threads(None):
        assert _threads.get_num_threads() is None
    assert _threads.get_num_threads() == 2


def test_threads_restores_on_exception():
    default = blas_counts()
    with pytest.raises(RuntimeError, match="inside"):
        with _threads.threads(1):
            raise RuntimeError("inside")
    assert blas_counts() == default
    assert _threads.get_num_threads() is None


def test_one_threads_object_can_be_reused_and_nested():
    default = blas_counts()
    one = _threads.threads(1)
    with one:
        with one:
            assert blas_counts() == [1] * len(default)
        assert blas_counts() == [1] * len(default)
    assert blas_counts() == default
    with one:
        assert blas_counts() == [1] * len(default)
    assert blas_counts() == default


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_non_positive_is_value_error(bad):
    with pytest.raises(ValueError, match="positive int or None"):
        _threads.set_num_threads(bad)
    with pytest.raises(ValueError, match="positive int or None"):
        _threads.threads(bad)


@pytest.mark.parametrize("bad", [1.0, 2.5, "2", True, False, [1], np.float32(1)])
def test_non_integer_is_type_error(bad):
    with pytest.raises(TypeError, match="positive int or None"):
        _threads.set_num_threads(bad)
    with pytest.raises(TypeError, match="positive int or None"):
        _threads.threads(bad)


def test_bad_input_changes_nothing():
    _threads.set_num_threads(1)
    with pytest.raises(ValueError):
        _threads.set_num_threads(0)
    assert _threads.get_num_threads() == 1
    assert set(blas_counts()) == {1}


SMALL = dict(T=25, B=1, D=65, H=64, K=65)
LARGE = dict(T=100, B=32, D=256, H=1024, K=256)


def test_pass_threads_small_pass_runs_on_one_thread_and_restores():
    set_blas_directly(2)
    with _threads.pass_threads(**SMALL):
        assert set(blas_counts()) == {1}
    assert set(blas_counts()) == {2}


def record_blas_settings(monkeypatch):
    """The counts _threads sets the BLAS to from now on (a list that grows)."""
    if _threads._controller is None:
        _threads._libs()
    calls = []
    monkeypatch.setattr(_threads, "_setters", [
        lambda n, f=set_n: calls.append(n) or f(n) for set_n in _threads._setters])
    return calls


@pytest.mark.parametrize("sizes", [dict(T=1, B=1, D=2, H=2, K=2), dict(T=4, B=4, D=48, H=16, K=8)])
def test_pass_threads_tiny_pass_skips_the_blas_setting(sizes, monkeypatch):
    # every product of such a pass is below the BLAS's own threading bound
    # (_threads.BLAS_SERIAL_*): it is not set to one thread and back
    assert _threads._blas_serial(**sizes)
    set_blas_directly(2)
    calls = record_blas_settings(monkeypatch)
    with _threads.pass_threads(**sizes):
        assert set(blas_counts()) == {2}
    ctx, n = _threads.pool_threads(**sizes)
    with ctx:
        assert set(blas_counts()) == {2}
    assert n == 1 and calls == []
    # one step larger on either bound: set and restored as before
    m = max(sizes["D"], sizes["H"], sizes["K"])
    longer = _threads.BLAS_SERIAL_MNK // (sizes["B"] * m * m) + 1
    for bigger in (dict(sizes, T=longer), dict(sizes, H=49)):
        assert not _threads._blas_serial(**bigger)
        if _threads._auto_threads(**bigger) is not None:
            with _threads.pass_threads(**bigger):
                assert set(blas_counts()) == {1}
    assert calls and set(blas_counts()) == {2}


def test_tiny_loss_and_grad_leaves_the_blas_setting_alone(monkeypatch):
    model = rnn_ext.RNN(2, 2, 2, seed=0)
    x = np.zeros((1, 1), dtype=np.intp)
    set_blas_directly(2)
    calls = record_blas_settings(monkeypatch)
    loss, g = model.loss_and_grad(x, x)
    assert calls == [] and np.isfinite(loss) and g.W.shape == (2, 2)


def test_pass_threads_large_pass_leaves_blas_alone():
    set_blas_directly(2)
    with _threads.pass_threads(**LARGE):
        assert set(blas_counts()) == {2}
    assert set(blas_counts()) == {2}


def test_pass_threads_respects_user_setting():
    with _threads.threads(2):
        with _threads.pass_threads(**SMALL):
            assert set(blas_counts()) == {2}
    with _threads.threads(1):
        with _threads.pass_threads(**LARGE):
            assert set(blas_counts()) == {1}


def test_pass_threads_restores_on_exception_and_nests():
    set_blas_directly(2)
    with pytest.raises(KeyError):
        with _threads.pass_threads(**SMALL):
            with _threads.pass_threads(**SMALL):
                assert set(blas_counts()) == {1}
            assert set(blas_counts()) == {1}
            raise KeyError("x")
    assert set(blas_counts()) == {2}


def test_set_num_threads_during_a_small_pass_wins_after_it():
    set_blas_directly(2)
    with _threads.pass_threads(**SMALL):
        _threads.set_num_threads(3)
        assert set(blas_counts()) == {1}  # the pass in flight keeps its one thread
    assert set(blas_counts()) == {3}


def test_auto_rule_small_and_large():
    assert _threads._auto_threads(**SMALL) == 1
    assert _threads._auto_threads(**LARGE) is None
    # B = 1: a matrix-vector product per step, worth a second thread from H = 1024
    assert _threads._auto_threads(T=100, B=1, D=256, H=256, K=256) == 1
    assert _threads._auto_threads(T=100, B=1, D=256, H=1024, K=256) is None
    # a large per-step product but too few steps for the whole pass to pay
    assert _threads._auto_threads(T=1, B=8, D=65, H=512, K=65) == 1
    # a batch of 8 or more splits well once the pass is large enough
    assert _threads._auto_threads(T=100, B=8, D=256, H=64, K=256) is None


def test_overlapping_passes_from_threads_leave_blas_restored():
    set_blas_directly(2)
    barrier = threading.Barrier(4)
    errors = []

    def work():
        try:
            barrier.wait()
            for _ in range(300):
                with _threads.pass_threads(**SMALL):
                    if set(blas_counts()) != {1}:
                        errors.append("count inside a small pass was not 1")
                with _threads.pass_threads(**LARGE):
                    pass
        except Exception as exc:  # reported below: a failure in a thread must fail the test
            errors.append(repr(exc))

    workers = [threading.Thread(target=work) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert set(blas_counts()) == {2}


def test_setting_from_a_worker_thread_takes_effect():
    # threadpoolctl ignores OpenBLAS limits set from a second Python thread;
    # rnn_ext's own setting must not be.
    default = blas_counts()
    seen = []

    def work():
        with _threads.threads(1):
            seen.append(blas_counts())
        _threads.set_num_threads(1)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen == [[1] * len(default)]
    assert blas_counts() == [1] * len(default)
