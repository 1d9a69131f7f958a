"""Optimizers: hand-computed updates, torch.optim parity, flat buffers and pieces,
non-finite gradients, state save/restore, bad input."""

import io
import math

import numpy as np
import pytest

from rnn_ext import RNN
from rnn_ext import optim as optim_module
from rnn_ext.optim import SGD, Adagrad, Adam, Optimizer, from_state_dict, make

# Against torch.optim (the same operations in the same order; torch's vectorised
# kernels fuse some multiply-adds and its float32 sqrt is not always correctly
# rounded): |ours - torch| <= 8 eps (1 + |torch|).  Measured over 12 steps of every
# optimizer below: at most 2.3 eps (1 + |torch|), so the margin is about 3.5x.
TOL = {np.float32: dict(rtol=8 * 2.0**-23, atol=8 * 2.0**-23),
       np.float64: dict(rtol=8 * 2.0**-52, atol=8 * 2.0**-52)}
# Against the textbook formulas evaluated in float64 (other operations, other order).
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


# -- pieces: one flat buffer, named views ---------------------------------------
#
# Until every model, layer and head has .flat, a stand-in with the same contract:
# one 1-D buffer and a dict of named views into it.

SHAPES_A = {"U": (4, 3), "W": (4, 4), "b": (4,)}
SHAPES_B = {"V": (2, 4), "c": (2,)}


class Piece:
    """Parameters in one flat buffer with named views, laid out in order (``gap``
    unused elements after each, to test layouts that do not tile the buffer)."""

    def __init__(self, shapes, dtype=np.float64, seed=0, gap=0):
        sizes = [math.prod(s) for s in shapes.values()]
        self.flat = np.zeros(sum(sizes) + gap * len(sizes), dtype=dtype)
        self.params = {}
        at = 0
        for (name, shape), n in zip(shapes.items(), sizes):
            self.params[name] = self.flat[at:at + n].reshape(shape)
            at += n + gap
        rng = np.random.default_rng(seed)
        for p in self.params.values():
            p[...] = rng.standard_normal(p.shape)


class Grad:
    """A gradient object: ``.flat`` laid out like its piece's, ``.params`` views into it."""

    def __init__(self, piece, values=None, seed=None):
        self.flat = np.zeros_like(piece.flat)
        self.params = {}
        base = piece.flat.__array_interface__["data"][0]
        for name, p in piece.params.items():
            lo = (p.__array_interface__["data"][0] - base) // p.itemsize
            self.params[name] = self.flat[lo:lo + p.size].reshape(p.shape)
        if seed is not None:
            rng = np.random.default_rng(seed)
            for g in self.params.values():
                g[...] = rng.standard_normal(g.shape)
        for name, v in (values or {}).items():
            self.params[name][...] = v


def piece_grads(pieces, n, seed=1):
    """n steps of gradients: a list of Grad per step, one per piece."""
    return [[Grad(p, seed=seed + 1000 * t + i) for i, p in enumerate(pieces)] for t in range(n)]


OPTIMIZERS = [
    ("SGD", dict(lr=0.1), dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9)),
    ("Adagrad", dict(lr=0.1), dict(lr=0.1, eps=1e-8)),
    ("Adam", dict(lr=1e-2), dict(lr=1e-2)),
    # beta1 <= 0.5: torch.lerp's other branch, g - (g - m) (1 - w)
    ("Adam", dict(lr=3e-3, betas=(0.3, 0.99), eps=1e-7), dict(lr=3e-3, betas=(0.3, 0.99), eps=1e-7)),
]
OPT_IDS = ["sgd", "sgd-momentum", "adagrad", "adam", "adam-small-beta1"]
CLASSES = {"SGD": SGD, "Adagrad": Adagrad, "Adam": Adam}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kw, tkw", OPTIMIZERS, ids=OPT_IDS)
def test_pieces_match_torch_optim(name, kw, tkw, dtype):
    torch = pytest.importorskip("torch")
    a, b = Piece(SHAPES_A, dtype, seed=1), Piece(SHAPES_B, dtype, seed=2)
    tp = {k: torch.nn.Parameter(torch.from_numpy(p.copy()))
          for piece in (a, b) for k, p in piece.params.items()}
    opt = CLASSES[name]([a, b], **kw)
    topt = getattr(torch.optim, name)(list(tp.values()), **tkw)
    for ga, gb in piece_grads([a, b], 12, seed=4):
        opt.step([ga, gb])
        for g in (ga, gb):
            for k, v in g.params.items():
                tp[k].grad = torch.from_numpy(v.copy())
        topt.step()
    for piece in (a, b):
        assert piece.flat.dtype == dtype
        for k, p in piece.params.items():
            np.testing.assert_allclose(p, tp[k].detach().numpy(), **TOL[dtype], err_msg=k)


@pytest.mark.parametrize("name, kw, tkw", OPTIMIZERS, ids=OPT_IDS)
def test_skipped_parameters_keep_their_own_step_count_like_torch(name, kw, tkw):
    # A dict without "b" skips b (torch: b.grad is None), so b's step count lags
    # behind U's and W's; the flat steps after that run per group of equal counts.
    torch = pytest.importorskip("torch")
    a = Piece(SHAPES_A, seed=5)
    tp = {k: torch.nn.Parameter(torch.from_numpy(p.copy())) for k, p in a.params.items()}
    opt = CLASSES[name](a, **kw)
    topt = getattr(torch.optim, name)(list(tp.values()), **tkw)
    rng = np.random.default_rng(6)
    first = {k: rng.standard_normal(p.shape) for k, p in a.params.items() if k != "b"}
    opt.step(first)
    for k, t in tp.items():
        t.grad = torch.from_numpy(first[k].copy()) if k in first else None
    topt.step()
    assert [opt.state[k]["step"] for k in ("U", "W")] == [1, 1] and "b" not in opt.state
    for (g,) in piece_grads([a], 5, seed=7):
        opt.step(g)
        for k, t in tp.items():
            t.grad = torch.from_numpy(g.params[k].copy())
        topt.step()
    assert {k: s["step"] for k, s in opt.state.items()} == {"U": 6, "W": 6, "b": 5}
    for k, p in a.params.items():
        np.testing.assert_allclose(p, tp[k].detach().numpy(), **TOL[np.float64], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kw, tkw", OPTIMIZERS, ids=OPT_IDS)
def test_flat_named_and_parameters_only_paths_agree_exactly(name, kw, tkw, dtype):
    # One compiled loop over .flat, one loop per named array, and an object with
    # only .parameters() (separate arrays): the same arithmetic, bit for bit.
    class Separate:
        def __init__(self, piece):
            self.arrays = {k: p.copy() for k, p in piece.params.items()}

        def parameters(self):
            return self.arrays

    flat, named = Piece(SHAPES_A, dtype, seed=8), Piece(SHAPES_A, dtype, seed=8)
    separate = Separate(flat)
    opts = [CLASSES[name](p, **kw) for p in (flat, named, separate)]
    for (g,) in piece_grads([flat], 6, seed=9):
        opts[0].step(g)
        opts[1].step(dict(g.params))
        opts[2].step({k: v.copy() for k, v in g.params.items()})
    for k in SHAPES_A:
        np.testing.assert_array_equal(flat.params[k], named.params[k])
        np.testing.assert_array_equal(flat.params[k], separate.arrays[k])
    assert all(o.state_dict().keys() == opts[0].state_dict().keys() for o in opts)


def test_one_compiled_call_per_piece(monkeypatch):
    calls = []
    kernel = optim_module._flat.adam_step

    def spy(p, g, *rest):
        calls.append(p.size)
        return kernel(p, g, *rest)

    monkeypatch.setattr(optim_module._flat, "adam_step", spy)
    a, b = Piece(SHAPES_A), Piece(SHAPES_B)
    opt = Adam([a, b])
    for grads in piece_grads([a, b], 3):
        opt.step(grads)
    assert calls == [a.flat.size, b.flat.size] * 3
    calls.clear()
    opt.step({"U": np.ones((4, 3)), "c": np.ones(2)})  # by name: one call per array
    assert calls == [12, 2]


def test_gradients_are_not_modified():
    a = Piece(SHAPES_A)
    (g,) = piece_grads([a], 1)[0]
    before = g.flat.copy()
    Adam(a).step(g)
    np.testing.assert_array_equal(g.flat, before)
    d = {k: v.copy() for k, v in g.params.items()}
    SGD(a, lr=0.1, momentum=0.5).step(d)
    for k, v in d.items():
        np.testing.assert_array_equal(v, g.params[k])


def test_layout_with_gaps_updates_only_the_parameters():
    a = Piece(SHAPES_A, gap=3)
    a.flat[12:15] = 7.0  # the gap after U
    a.flat[-3:] = 7.0
    (g,) = piece_grads([a], 1)[0]
    g.flat[...] = 1.0  # the gradient's gaps too
    ref = Piece(SHAPES_A)
    Adam(a).step(g)
    Adam(ref).step({k: np.ones(s) for k, s in SHAPES_A.items()})
    np.testing.assert_array_equal(a.flat[12:15], 7.0)
    np.testing.assert_array_equal(a.flat[-3:], 7.0)
    for k in SHAPES_A:
        np.testing.assert_array_equal(a.params[k], ref.params[k])


def test_same_flat_replaced_by_an_equal_layout_keeps_the_state():
    a = Piece(SHAPES_A)
    opt = Adam(a)
    opt.step(piece_grads([a], 1)[0][0])
    moved = Piece(SHAPES_A)
    a.flat, a.params = moved.flat, moved.params  # new buffer, same names and shapes
    opt.step(piece_grads([a], 1)[0][0])
    assert opt.state["U"]["step"] == 2
    other = Piece({"U": (3, 4)})
    a.flat, a.params = other.flat, other.params
    with pytest.raises(ValueError, match="changed names or shapes"):
        opt.step(Grad(a))


# -- non-finite gradients: an error naming the element, and nothing changes --------


def snapshot_all(opt, pieces):
    return [p.flat.copy() for p in pieces], opt.state_dict()


def assert_unchanged(opt, pieces, snap):
    flats, state = snap
    for p, f in zip(pieces, flats):
        np.testing.assert_array_equal(p.flat, f)
    now = opt.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(now[k], v, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("make_opt", [lambda p: SGD(p, lr=0.1, momentum=0.9), Adagrad, Adam],
                         ids=["sgd", "adagrad", "adam"])
def test_nonfinite_flat_gradient_raises_and_changes_nothing(make_opt, bad, dtype):
    a, b = Piece(SHAPES_A, dtype), Piece(SHAPES_B, dtype)
    opt = make_opt([a, b])
    opt.step(piece_grads([a, b], 1)[0])  # so there is state to keep
    snap = snapshot_all(opt, [a, b])
    ga, gb = piece_grads([a, b], 1, seed=3)[0]
    gb.params["V"][1, 2] = bad  # the second piece: the first must not be updated either
    with pytest.raises(ValueError, match=r"gradient 'V' holds -?(nan|inf) at index \(1, 2\); no parameter, optimizer state or step count was changed"):
        opt.step([ga, gb])
    assert_unchanged(opt, [a, b], snap)
    ga.params["b"][3] = bad
    with pytest.raises(ValueError, match=r"gradient 'b' holds .* at index \(3,\)"):
        opt.step([ga, gb])
    assert_unchanged(opt, [a, b], snap)
    # a good step afterwards is the second step
    opt.step(piece_grads([a, b], 1, seed=5)[0])
    assert {s["step"] for s in opt.state.values()} == {2}


@pytest.mark.parametrize("make_opt", [lambda p: SGD(p, lr=0.1), Adagrad, Adam],
                         ids=["sgd", "adagrad", "adam"])
def test_nonfinite_named_gradient_raises_and_changes_nothing(make_opt):
    m = tiny_model()
    opt = make_opt(m)
    old = snapshot(m)
    g = grad_sequence(m, 1)[0]
    g["W"][2, 1] = np.nan
    with pytest.raises(ValueError, match=r"gradient 'W' holds nan at index \(2, 1\)"):
        opt.step(g)
    for k, p in m.parameters().items():
        np.testing.assert_array_equal(p, old[k])
    assert opt.state == {}


def test_gradient_that_overflows_the_parameters_dtype_is_nonfinite():
    a = Piece(SHAPES_A, np.float32)
    opt = SGD(a, lr=0.1)
    before = a.flat.copy()
    g = Grad(a)
    g.flat = g.flat.astype(np.float64)
    g.flat[5] = 1e300  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"'U' holds inf at index \(1, 2\)"):
        opt.step(g)
    np.testing.assert_array_equal(a.flat, before)


# -- state of several pieces --------------------------------------------------------


@pytest.mark.parametrize("make_opt", [lambda p: SGD(p, lr=0.1, momentum=0.9), Adagrad, Adam],
                         ids=["sgd", "adagrad", "adam"])
def test_pieces_state_dict_round_trip_continues_identically(make_opt):
    pieces = [Piece(SHAPES_A, seed=1), Piece(SHAPES_B, seed=2)]
    grads = piece_grads(pieces, 6, seed=3)
    opt = make_opt(pieces)
    for g in grads[:3]:
        opt.step(g)
    buf = io.BytesIO()
    np.savez(buf, **opt.state_dict())
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    assert {k.partition(".")[0] for k in loaded if "." in k} == {"U", "W", "b", "V", "c"}
    copies = [Piece(SHAPES_A), Piece(SHAPES_B)]
    for c, p in zip(copies, pieces):
        c.flat[...] = p.flat
    opt2 = from_state_dict(copies, loaded)
    assert type(opt2) is type(opt) and repr(opt2) == repr(opt)
    for g in grads[3:]:
        opt.step(g)
        opt2.step(g)
    for c, p in zip(copies, pieces):
        np.testing.assert_array_equal(c.flat, p.flat)


def test_state_is_views_shaped_like_the_parameters():
    a = Piece(SHAPES_A)
    opt = Adam(a)
    opt.step(piece_grads([a], 1)[0][0])
    st = opt.state
    assert set(st) == set(SHAPES_A)
    assert st["W"]["exp_avg"].shape == (4, 4) and st["W"]["step"] == 1
    np.testing.assert_array_equal(opt.state_dict()["b.exp_avg_sq"], st["b"]["exp_avg_sq"])


def test_old_format_state_dict_loads_and_continues():
    # The per-name format of every earlier version, as np.load returns it (0-d
    # arrays), for a model whose b was never stepped; built here from the
    # textbook formulas, then continued by the compiled step.
    m = tiny_model()
    start = snapshot(m)
    grads = grad_sequence(m, 4, seed=11)
    b1, b2 = 0.9, 0.999
    old = {"type": np.array("Adam"), "lr": np.array(1e-3), "betas": np.array([b1, b2]),
           "eps": np.array(1e-8)}
    for k in ("U", "W", "V", "c"):
        mk, vk = np.zeros_like(start[k]), np.zeros_like(start[k])
        for g in grads[:3]:
            mk = b1 * mk + (1 - b1) * g[k]
            vk = b2 * vk + (1 - b2) * g[k] ** 2
        old.update({f"{k}.step": np.array(3), f"{k}.exp_avg": mk, f"{k}.exp_avg_sq": vk})
        setattr(m, k, ref_adam(start[k], [g[k] for g in grads[:3]], 1e-3, b1, b2, 1e-8))
    opt = from_state_dict(m, old)
    assert opt.betas == (b1, b2) and set(opt.state) == {"U", "W", "V", "c"}
    opt.step(grads[3])
    for k in ("U", "W", "V", "c"):
        np.testing.assert_allclose(m.parameters()[k], ref_adam(start[k], [g[k] for g in grads], 1e-3, b1, b2, 1e-8),
                                   **REF_TOL[np.float64])
    assert opt.state["b"]["step"] == 1  # its first step


def test_failed_load_changes_nothing():
    a = Piece(SHAPES_A)
    opt = Adam(a, lr=0.5)
    opt.step(piece_grads([a], 1)[0][0])
    before = opt.state_dict()
    bad = dict(before, lr=0.1, **{"W.exp_avg": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="W.exp_avg"):
        opt.load_state_dict(bad)
    assert opt.lr == 0.5
    after = opt.state_dict()
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)


# -- bad pieces and gradients -----------------------------------------------------


def test_bad_pieces():
    a = Piece(SHAPES_A)
    with pytest.raises(ValueError, match="'U' appears in pieces 0 and 1"):
        Adam([a, Piece(SHAPES_A)])
    with pytest.raises(ValueError, match="at least one piece"):
        Adam([])
    other = Piece(SHAPES_A)
    other.params = dict(other.params, W=np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"params\['W'\] is not a view"):
        Adam(other)
    half = Piece(SHAPES_A, np.float32)
    half.flat = half.flat.astype(np.float16)
    half.params = {"U": half.flat[:12].reshape(4, 3)}
    with pytest.raises(TypeError, match="float32 or float64, got float16"):
        Adam(half)
    with pytest.raises(TypeError, match=".flat and .params"):
        Adam([a, "head"])
    frozen = Piece(SHAPES_A)
    frozen.flat.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        Adam(frozen)


def test_bad_gradients_for_pieces():
    a, b = Piece(SHAPES_A), Piece(SHAPES_B)
    opt = Adam([a, b])
    ga, gb = piece_grads([a, b], 1)[0]
    with pytest.raises(ValueError, match="expected 2 gradients"):
        opt.step([ga])
    with pytest.raises(TypeError, match="list of 2 gradients"):
        opt.step(ga)
    short = Grad(a)
    short.flat = short.flat[:-1]
    with pytest.raises(ValueError, match=r"\(31,\), expected \(32,\)"):
        opt.step([short, gb])
    ints = Grad(a)
    ints.flat = np.zeros(32, dtype=np.int64)
    with pytest.raises(TypeError, match="int64"):
        opt.step([ints, gb])
    with pytest.raises(ValueError, match="unknown parameters"):
        opt.step({"U": np.zeros((4, 3)), "Q": np.zeros(1)})
    assert opt.state == {}
    # one dict may name parameters of any piece; None skips a piece
    opt.step({"U": np.ones((4, 3)), "c": np.ones(2)})
    opt.step([None, gb])
    assert {k: s["step"] for k, s in opt.state.items()} == {"U": 1, "V": 1, "c": 2}


# -- the package's pieces: RNN, Recurrent, heads -----------------------------------


def torch_copies(torch, named):
    return {k: torch.nn.Parameter(torch.from_numpy(p.copy())) for k, p in named.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)])
def test_rnn_model_steps_its_flat_buffer_like_torch(layers, bidirectional, dtype, monkeypatch):
    torch = pytest.importorskip("torch")
    m = RNN(5, 6, 5, num_layers=layers, bidirectional=bidirectional, dtype=dtype, seed=0)
    tp = torch_copies(torch, m.params)
    opt, topt = Adam(m, lr=1e-2), torch.optim.Adam(list(tp.values()), lr=1e-2)
    sizes = []
    kernel = optim_module._flat.adam_step
    monkeypatch.setattr(optim_module._flat, "adam_step",
                        lambda p, *rest: (sizes.append(p.size), kernel(p, *rest))[1])
    x = np.random.default_rng(1).integers(0, 5, (7, 3))
    for _ in range(5):
        _, g = m.loss_and_grad(x, np.roll(x, 1, axis=0))
        opt.step(g)
        for k, t in tp.items():
            t.grad = torch.from_numpy(g.params[k].copy())
        topt.step()
    assert sizes == [m.flat.size] * 5  # one compiled loop over the whole model per step
    for k, p in m.params.items():
        np.testing.assert_allclose(p, tp[k].detach().numpy(), **TOL[dtype], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recurrent_and_head_in_one_optimizer_like_torch(dtype):
    import rnn_ext
    torch = pytest.importorskip("torch")
    layer = rnn_ext.Recurrent(4, 5, num_layers=2, bidirectional=True, dtype=dtype, seed=0)
    head = rnn_ext.heads.Softmax(10, 3, dtype=dtype, seed=1)
    tp = torch_copies(torch, {**layer.params, **head.params})
    opt = SGD([layer, head], lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(list(tp.values()), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 4)).astype(dtype)
    y = rng.integers(0, 3, (6, 2))
    for _ in range(4):
        fwd = layer.forward(x)
        _, d_out, g_head = head.loss_and_grad(fwd.output, y)
        g_layer = layer.backward(fwd, d_out)
        opt.step([g_layer, g_head])
        for g in (g_layer, g_head):
            for k, v in g.params.items():
                tp[k].grad = torch.from_numpy(v.copy())
        topt.step()
    for piece in (layer, head):
        for k, p in piece.params.items():
            np.testing.assert_allclose(p, tp[k].detach().numpy(), **TOL[dtype], err_msg=k)
    assert set(opt.state) == set(layer.params) | {"V", "c"}


def test_model_and_its_own_layer_cannot_share_an_optimizer():
    for layers in (1, 2):  # names U, W, b and U_l0, ...; U_l0, ... in both
        m = RNN(3, 4, 3, num_layers=layers)
        with pytest.raises(ValueError, match="pieces 0 and 1 share parameter memory"):
            Adam([m, m.layer])
    Adam([m.layer, m.head])  # its two pieces are fine


def test_nonfinite_in_a_models_flat_gradient_names_the_parameter():
    m = RNN(3, 4, 3, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    opt = Adam(m)
    x = np.array([[0, 1], [2, 0]])
    _, g = m.loss_and_grad(x, x)
    before = m.flat.copy()
    g.params["W_l1_reverse"][3, 0] = np.inf
    with pytest.raises(ValueError, match=r"'W_l1_reverse' holds inf at index \(3, 0\)"):
        opt.step(g)
    np.testing.assert_array_equal(m.flat, before)
    assert opt.state == {}


def test_multilayer_state_dict_round_trip(tmp_path):
    m = RNN(3, 4, 3, num_layers=2, dtype=np.float64, seed=0)
    opt = Adagrad(m, lr=0.3)
    x = np.array([[0, 1], [2, 0], [1, 1]])
    _, g = m.loss_and_grad(x, x)
    opt.step(g)
    np.savez(tmp_path / "opt.npz", **opt.state_dict())
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    copy = RNN(3, 4, 3, num_layers=2, dtype=np.float64)
    copy.flat[...] = m.flat
    opt2 = from_state_dict(copy, loaded)
    assert set(opt2.state) == set(m.params) == {"U_l0", "W_l0", "b_l0", "U_l1", "W_l1", "b_l1", "V", "c"}
    _, g2 = m.loss_and_grad(x, x)
    opt.step(g2)
    opt2.step(g2)
    np.testing.assert_array_equal(copy.flat, m.flat)


# -- step(grads, clip_value=...): the clip in the update's own loop -------------------

CLIPPED_OPTS = [
    (lambda p: SGD(p, lr=0.1), "sgd"),
    (lambda p: SGD(p, lr=0.1, momentum=0.9), "sgd-momentum"),
    (Adagrad, "adagrad"),
    (Adam, "adam"),
    (lambda p: Adam(p, betas=(0.3, 0.999)), "adam-large-w"),
]


def big_gradients(model, seed):
    # entries well beyond the clip value, and infinities (which clamping makes finite)
    _, g = model.loss_and_grad(*xy(seed))
    g.flat[:] = np.random.default_rng(seed).standard_normal(g.flat.size) * 4
    g.flat[::97] = np.inf
    g.flat[5::131] = -np.inf
    return g


def xy(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, (6, 2)), rng.integers(0, 5, (6, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make_opt", [o for o, _ in CLIPPED_OPTS], ids=[i for _, i in CLIPPED_OPTS])
def test_clipped_step_is_clip_then_step_to_the_bit(make_opt, dtype):
    from rnn_ext.clip import clip_grad_value

    fused, split = (RNN(5, 7, 5, dtype=dtype, seed=0) for _ in range(2))
    opt_fused, opt_split = make_opt(fused), make_opt(split)
    for t in range(4):
        g_fused, g_split = big_gradients(fused, t), big_gradients(split, t)
        opt_fused.step(g_fused, clip_value=1.5)
        clip_grad_value(g_split, 1.5)
        opt_split.step(g_split)
        np.testing.assert_array_equal(g_fused.flat, g_split.flat)  # g is clipped in place
        assert np.abs(g_fused.flat).max() == dtype(1.5)
        np.testing.assert_array_equal(fused.flat, split.flat)
        for k, v in opt_split.state_dict().items():
            np.testing.assert_array_equal(opt_fused.state_dict()[k], v, err_msg=k)


def test_clipped_step_of_named_gradients_clips_them_first():
    fused, split = tiny_model(), tiny_model()
    opt_fused, opt_split = Adam(fused), Adam(split)
    g = {k: v * 10 for k, v in grad_sequence(fused, 1)[0].items()}
    g2 = {k: v.copy() for k, v in g.items()}
    opt_fused.step(g, clip_value=2.0)
    np.clip(g2["W"], -2, 2, out=g2["W"])
    for v in g2.values():
        np.clip(v, -2, 2, out=v)
    opt_split.step(g2)
    for k in g:
        np.testing.assert_array_equal(g[k], g2[k])
        np.testing.assert_array_equal(fused.parameters()[k], split.parameters()[k])


@pytest.mark.parametrize("make_opt", [o for o, _ in CLIPPED_OPTS], ids=[i for _, i in CLIPPED_OPTS])
def test_clipped_step_refuses_nan_and_writes_nothing(make_opt):
    m = RNN(5, 7, 5, dtype=np.float32, seed=0)
    opt = make_opt(m)
    opt.step(big_gradients(m, 0), clip_value=1.0)
    before, state = m.flat.copy(), opt.state_dict()
    g = big_gradients(m, 1)
    g.flat[40] = np.nan
    g_before = g.flat.copy()
    with pytest.raises(ValueError, match=r"holds nan at index .*; no parameter, optimizer state"):
        opt.step(g, clip_value=1.0)
    np.testing.assert_array_equal(m.flat, before)
    np.testing.assert_array_equal(g.flat, g_before)  # not clipped either
    for k, v in state.items():
        np.testing.assert_array_equal(opt.state_dict()[k], v, err_msg=k)


def test_clipped_step_bad_clip_value_or_read_only_gradient():
    m = RNN(5, 7, 5, dtype=np.float32, seed=0)
    opt = Adam(m)
    g = big_gradients(m, 0)
    before = m.flat.copy()
    for bad, err in ((0, ValueError), (-1.0, ValueError), (np.nan, ValueError), ("5", TypeError),
                     (True, TypeError)):
        with pytest.raises(err, match="clip_value must be"):
            opt.step(g, clip_value=bad)
    g.flat.flags.writeable = False
    with pytest.raises(ValueError, match="gradient .flat is read-only"):
        opt.step(g, clip_value=1.0)
    np.testing.assert_array_equal(m.flat, before)
    assert opt.state == {}
