"""Optimizers: hand-computed updates, torch.optim parity, state save/restore, bad input."""

import io

import numpy as np
import pytest

from rnn_ext import RNN
from rnn_ext.optim import SGD, Adagrad, Adam, Optimizer, from_state_dict, make

# Same operations in the same order (torch) vs. textbook formulas in float64 (reference).
TOL = {np.float32: dict(rtol=2e-6, atol=2e-7), np.float64: dict(rtol=1e-12, atol=1e-14)}
REF_TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-14)}


def tiny_model(dtype=np.float64, bias=True, seed=0):
    return RNN(3, 4, 2, bias=bias, dtype=dtype, seed=seed)


def grad_sequence(model, n, seed=1):
    rng = np.random.default_rng(seed)
    return [
        {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in model.parameters().items()}
        for _ in range(n)
    ]


def snapshot(model):
    return {k: p.copy() for k, p in model.parameters().items()}


# -- reference updates, written from the textbook formulas ---------------------


def ref_sgd(p, grads, lr, momentum):
    p = p.copy()
    buf = None
    for g in grads:
        buf = g.copy() if buf is None else momentum * buf + g
        p = p - lr * (buf if momentum else g)
    return p


def ref_adagrad(p, grads, lr, eps):
    p, s = p.copy(), np.zeros_like(p)
    for g in grads:
        s = s + g * g
        p = p - lr * g / (np.sqrt(s) + eps)
    return p


def ref_adam(p, grads, lr, b1, b2, eps):
    p, m, v = p.copy(), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1**t)
        vhat = v / (1 - b2**t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


# -- hand-computed single steps ------------------------------------------------


def test_sgd_one_step_by_hand():
    m = tiny_model()
    m.U = np.full((4, 3), 1.0)
    g = {"U": np.full((4, 3), 0.5)}
    SGD(m, lr=0.1).step(g)
    np.testing.assert_array_equal(m.U, np.full((4, 3), 0.95))


def test_sgd_momentum_two_steps_by_hand():
    m = tiny_model()
    m.W = np.zeros((4, 4))
    opt = SGD(m, lr=0.5, momentum=0.9)
    opt.step({"W": np.ones((4, 4))})  # buf = 1, W = -0.5
    opt.step({"W": np.ones((4, 4))})  # buf = 0.9 + 1 = 1.9, W = -0.5 - 0.95
    np.testing.assert_allclose(m.W, np.full((4, 4), -1.45), rtol=1e-15)


def test_adagrad_two_steps_by_hand():
    m = tiny_model()
    m.c = np.array([2.0, -1.0])
    opt = Adagrad(m, lr=0.1, eps=1e-8)
    opt.step({"c": np.array([3.0, -4.0])})  # s = (9, 16): c -= 0.1 * (3/3, -4/4)
    np.testing.assert_allclose(m.c, [2.0 - 0.1 * 3 / (3 + 1e-8), -1.0 + 0.1 * 4 / (4 + 1e-8)], rtol=1e-15)
    opt.step({"c": np.array([4.0, 3.0])})  # s = (25, 25)
    np.testing.assert_allclose(
        m.c, [2.0 - 0.1 * (3 / (3 + 1e-8) + 4 / (5 + 1e-8)), -1.0 + 0.1 * (4 / (4 + 1e-8) - 3 / (5 + 1e-8))],
        rtol=1e-14,
    )


def test_adam_first_step_moves_by_lr_times_sign():
    # m1 = 0.1 g, v1 = 0.001 g^2: the bias-corrected ratio is g / (|g| + eps).
    m = tiny_model()
    m.b = np.zeros(4)
    g = np.array([2.0, -0.5, 1e-3, 0.0])
    Adam(m, lr=0.01).step({"b": g})
    expect = -0.01 * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(m.b, expect, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "make_opt, ref",
    [
        (lambda m: SGD(m, lr=0.05), lambda p, gs: ref_sgd(p, gs, 0.05, 0.0)),
        (lambda m: SGD(m, lr=0.05, momentum=0.8), lambda p, gs: ref_sgd(p, gs, 0.05, 0.8)),
        (lambda m: Adagrad(m, lr=0.1), lambda p, gs: ref_adagrad(p, gs, 0.1, 1e-8)),
        (lambda m: Adam(m), lambda p, gs: ref_adam(p, gs, 1e-3, 0.9, 0.999, 1e-8)),
        (lambda m: Adam(m, lr=0.02, betas=(0.5, 0.9), eps=1e-6), lambda p, gs: ref_adam(p, gs, 0.02, 0.5, 0.9, 1e-6)),
    ],
    ids=["sgd", "sgd-momentum", "adagrad", "adam", "adam-custom"],
)
def test_matches_reference_formulas(make_opt, ref, dtype):
    m = tiny_model(dtype)
    start = snapshot(m)
    grads = grad_sequence(m, 7)
    opt = make_opt(m)
    for g in grads:
        opt.step(g)
    for k, p in m.parameters().items():
        assert p.dtype == dtype
        expect = ref(start[k].astype(np.float64), [g[k].astype(np.float64) for g in grads])
        np.testing.assert_allclose(p, expect, **REF_TOL[dtype])


# -- against torch.optim -------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "name, kw, tkw",
    [
        ("SGD", dict(lr=0.1), dict(lr=0.1)),
        ("SGD", dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9)),
        ("Adagrad", dict(lr=0.1), dict(lr=0.1, eps=1e-8)),
        ("Adam", dict(lr=1e-2), dict(lr=1e-2)),
        ("Adam", dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-7), dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-7)),
    ],
)
def test_matches_torch_optim(name, kw, tkw, dtype):
    torch = pytest.importorskip("torch")
    m = tiny_model(dtype, seed=3)
    tp = {k: torch.nn.Parameter(torch.from_numpy(p.copy())) for k, p in m.parameters().items()}
    opt = {"SGD": SGD, "Adagrad": Adagrad, "Adam": Adam}[name](m, **kw)
    topt = getattr(torch.optim, name)(list(tp.values()), **tkw)
    for g in grad_sequence(m, 12, seed=4):
        opt.step(g)
        for k, t in tp.items():
            t.grad = torch.from_numpy(g[k].copy())
        topt.step()
    for k, p in m.parameters().items():
        np.testing.assert_allclose(p, tp[k].detach().numpy(), **TOL[dtype])


# -- the model's arrays, Gradients objects, skipping ---------------------------


def test_updates_the_models_live_arrays_in_place():
    m = tiny_model()
    before = m.parameters()
    old = snapshot(m)
    Adam(m).step(grad_sequence(m, 1)[0])
    after = m.parameters()
    for k in before:
        assert after[k] is before[k] or np.shares_memory(after[k], before[k])
        assert not np.array_equal(after[k], old[k])


def test_accepts_gradients_object_from_loss_and_grad():
    m = RNN(5, 6, 5, seed=0, dtype=np.float64)
    x = np.array([[0, 1], [2, 3], [4, 0]])
    _, g = m.loss_and_grad(x, x)
    expect = {k: p - 0.1 * g.parameters()[k] for k, p in m.parameters().items()}
    SGD(m, lr=0.1).step(g)
    for k, p in m.parameters().items():
        np.testing.assert_allclose(p, expect[k], rtol=1e-15)


def test_missing_or_none_gradient_skips_that_parameter():
    m = tiny_model()
    old = snapshot(m)
    g = grad_sequence(m, 1)[0]
    g["b"] = None
    del g["c"]
    opt = Adam(m)
    opt.step(g)
    np.testing.assert_array_equal(m.b, old["b"])
    np.testing.assert_array_equal(m.c, old["c"])
    assert not np.array_equal(m.U, old["U"])
    assert set(opt.state) == {"U", "W", "V"}


def test_float64_gradients_for_float32_model_are_cast():
    m = tiny_model(np.float32)
    SGD(m, lr=0.1).step({"U": np.ones((4, 3))})
    assert m.U.dtype == np.float32


# -- state ---------------------------------------------------------------------


@pytest.mark.parametrize("make_opt", [lambda m: SGD(m, lr=0.1, momentum=0.9), Adagrad, Adam],
                         ids=["sgd", "adagrad", "adam"])
def test_state_dict_round_trip_through_npz_continues_identically(make_opt):
    grads = grad_sequence(tiny_model(), 6, seed=7)
    a = tiny_model()
    opt_a = make_opt(a)
    for g in grads[:3]:
        opt_a.step(g)
    buf = io.BytesIO()
    np.savez(buf, **opt_a.state_dict())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}

    b = tiny_model()
    for k, p in a.parameters().items():
        setattr(b, k, p.copy())
    opt_b = from_state_dict(b, loaded)
    assert type(opt_b) is type(opt_a)
    assert repr(opt_b) == repr(opt_a)
    for g in grads[3:]:
        opt_a.step(g)
        opt_b.step(g)
    for k in a.parameters():
        np.testing.assert_array_equal(a.parameters()[k], b.parameters()[k])


def test_state_dict_values_are_plain():
    m = tiny_model()
    opt = Adam(m)
    opt.step(grad_sequence(m, 1)[0])
    d = opt.state_dict()
    assert d["type"] == "Adam"
    assert d["U.step"] == 1
    for v in d.values():
        assert isinstance(v, str | int | float | np.ndarray)
        assert np.asarray(v).dtype != object


def test_load_state_dict_restores_hyperparameters():
    m = tiny_model()
    opt = Adam(m, lr=0.5, betas=(0.1, 0.2), eps=1e-3)
    other = Adam(m)
    other.load_state_dict(opt.state_dict())
    assert (other.lr, other.betas, other.eps) == (0.5, (0.1, 0.2), 1e-3)


def test_load_state_dict_rejects_bad_state():
    m = tiny_model()
    opt = Adam(m)
    opt.step(grad_sequence(m, 1)[0])
    good = opt.state_dict()
    with pytest.raises(ValueError, match="Adagrad"):
        Adagrad(m).load_state_dict(good)
    bad = dict(good, **{"U.exp_avg": np.zeros((2, 2))})
    with pytest.raises(ValueError, match=r"U\.exp_avg.*shape"):
        Adam(m).load_state_dict(bad)
    bad = dict(good, **{"Q.step": 1})
    with pytest.raises(ValueError, match="Q.step"):
        Adam(m).load_state_dict(bad)
    bad = {k: v for k, v in good.items() if k != "W.exp_avg_sq"}
    with pytest.raises(ValueError, match="exp_avg_sq"):
        Adam(m).load_state_dict(bad)
    bad = {k: v for k, v in good.items() if k != "lr"}
    with pytest.raises(ValueError, match="lr"):
        Adam(m).load_state_dict(bad)
    with pytest.raises(ValueError, match="unknown optimizer type"):
        from_state_dict(m, dict(good, type="Lion"))


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda m: SGD(m, lr=0),
        lambda m: SGD(m, lr=-1.0),
        lambda m: SGD(m, lr=float("nan")),
        lambda m: SGD(m, lr=0.1, momentum=-0.1),
        lambda m: SGD(m, lr=0.1, momentum=1.0),
        lambda m: Adagrad(m, lr=0.0),
        lambda m: Adagrad(m, eps=0.0),
        lambda m: Adam(m, lr=-1e-3),
        lambda m: Adam(m, betas=(1.0, 0.999)),
        lambda m: Adam(m, betas=(0.9, -0.1)),
        lambda m: Adam(m, betas=(0.9,)),
        lambda m: Adam(m, eps=-1e-8),
        lambda m: make("rmsprop", m),
        lambda m: make("sgd", m),
    ],
)
def test_bad_hyperparameters_raise_value_error(build):
    with pytest.raises(ValueError):
        build(tiny_model())


def test_bad_types_raise_type_error():
    m = tiny_model()
    with pytest.raises(TypeError):
        SGD(m, lr="0.1")
    with pytest.raises(TypeError):
        Adam(object())
    with pytest.raises(TypeError, match="Gradients"):
        Adam(m).step([np.zeros((4, 3))])


def test_bad_gradients_raise_value_error():
    m = tiny_model()
    opt = Adam(m)
    with pytest.raises(ValueError, match=r"'U'.*\(2, 3\).*\(4, 3\)"):
        opt.step({"U": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="unknown parameters"):
        opt.step({"Z": np.zeros(3)})
    assert opt.state == {}


def test_make_builds_by_name():
    m = tiny_model()
    assert isinstance(make("Adam", m), Adam)
    assert isinstance(make("adagrad", m, 0.2), Adagrad)
    assert make("sgd", m, 0.3).lr == 0.3
    assert isinstance(make("adam", m), Optimizer)
