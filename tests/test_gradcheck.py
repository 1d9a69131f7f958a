"""rnn_ext.gradcheck: small errors for the model's gradients, large ones for a broken gradient."""

import dataclasses

import numpy as np
import pytest

from rnn_ext import RNN
from rnn_ext.gradcheck import gradcheck

TOL = 1e-6  # a correct gradient in float64 gives ~1e-9; a wrong one ~1e-2 and up
D, H, K = 4, 5, 3
T, B = 5, 3


def make(dtype=np.float64, **kw):
    kw.setdefault("seed", 0)
    return RNN(D, H, K, dtype=dtype, **kw)


def rng_data(kind="ids", *, t=T, b=B, seed=1, batch_first=False):
    rng = np.random.default_rng(seed)
    shape = (b, t) if batch_first else (t, b)
    x = rng.integers(0, D, size=shape) if kind == "ids" else rng.normal(size=shape + (D,))
    y = rng.integers(0, K, size=shape)
    return x, y


def soft(y, seed=2):
    p = np.random.default_rng(seed).random(y.shape + (K,))
    return p / p.sum(axis=-1, keepdims=True)


CONFIGS = [
    pytest.param({}, {}, id="tanh-bias-ids"),
    pytest.param({"nonlinearity": "relu"}, {"kind": "float"}, id="relu-bias-float"),
    pytest.param({"bias": False}, {"kind": "float"}, id="tanh-nobias-float"),
    pytest.param({"nonlinearity": "relu", "bias": False}, {}, id="relu-nobias-ids"),
    pytest.param({}, {"kind": "float", "lengths": [2, 5, 3]}, id="lengths-float"),
    pytest.param({"nonlinearity": "relu"}, {"lengths": [5, 1, 4]}, id="relu-lengths-ids"),
    pytest.param({}, {"reduction": "mean", "ignore": True}, id="mean-ignore-index"),
    pytest.param({}, {"kind": "float", "soft": True}, id="soft-targets"),
    pytest.param({}, {"kind": "float", "soft": True, "reduction": "mean", "lengths": [3, 5, 2]}, id="soft-mean-lengths"),
    pytest.param({}, {"h0": True}, id="given-h0"),
    pytest.param({"batch_first": True}, {"kind": "float", "lengths": [4, 2, 5]}, id="batch-first"),
    pytest.param({}, {"kind": "float", "unbatched": True, "h0": True}, id="unbatched-float"),
    pytest.param({}, {"unbatched": True}, id="unbatched-ids"),
]


def build_call(model_kw, call_kw):
    model = make(**model_kw)
    kind = call_kw.get("kind", "ids")
    x, y = rng_data(kind, batch_first=model_kw.get("batch_first", False))
    kwargs = {}
    if call_kw.get("unbatched"):
        x, y = x[:, 0], y[:, 0]
    if call_kw.get("ignore"):
        y = y.copy()
        y[0, 1] = y[3, 2] = -100
    if call_kw.get("soft"):
        y = soft(y)
    if call_kw.get("h0"):
        shape = (H,) if call_kw.get("unbatched") else (B, H)
        kwargs["h0"] = np.random.default_rng(4).normal(size=shape) * 0.5
    for k in ("lengths", "reduction"):
        if k in call_kw:
            kwargs[k] = call_kw[k]
    return model, x, y, kwargs


@pytest.mark.parametrize("model_kw, call_kw", CONFIGS)
def test_small_errors(model_kw, call_kw):
    model, x, y, kwargs = build_call(model_kw, call_kw)
    errors = gradcheck(model, x, y, **kwargs)
    expected = ["U", "W", "V"] + (["b", "c"] if model.bias else []) + ["h0"]
    if np.asarray(x).dtype.kind == "f":
        expected.append("x")
    assert list(errors) == expected
    for name, err in errors.items():
        assert type(err) is float
        assert 0.0 <= err < TOL, (name, err)


def test_float32_model_checked_in_float64():
    model = make(np.float32)
    x, y = rng_data("float")
    errors = gradcheck(model, x, y)
    assert max(errors.values()) < TOL, errors
    assert model.dtype == np.float32


def test_all_targets_ignored_gives_zero_errors():
    model = make()
    x, _ = rng_data("float")
    y = np.full((T, B), -100)
    errors = gradcheck(model, x, y, reduction="mean")
    assert all(err == 0.0 for err in errors.values()), errors


def test_nothing_is_modified():
    model = make(np.float32)
    params = {n: a.copy() for n, a in model.parameters().items()}
    live = model.parameters()
    x, y = rng_data("float")
    h0 = np.full((B, H), 0.1, dtype=np.float32)
    lengths = np.array([5, 2, 3])
    args = [x, y, h0, lengths]
    copies = [a.copy() for a in args]
    for a in args:
        a.flags.writeable = False  # read-only arrays are accepted, and never written
    gradcheck(model, x, y, h0=h0, lengths=lengths)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)
    for n, a in model.parameters().items():
        assert a is live[n]
        np.testing.assert_array_equal(a, params[n])
        assert a.dtype == np.float32


# --- a wrong gradient is caught ----------------------------------------------------


class BrokenRNN(RNN):
    """A model whose loss_and_grad returns one gradient slightly wrong."""

    broken = "W"
    amount = 0.05

    def loss_and_grad(self, *args, **kwargs):
        loss, g = super().loss_and_grad(*args, **kwargs)
        wrong = getattr(g, self.broken).copy()
        wrong.flat[0] += self.amount * np.abs(wrong).max()
        return loss, dataclasses.replace(g, **{self.broken: wrong})


@pytest.mark.parametrize("broken", ["W", "U", "V", "b", "c", "h0", "x"])
def test_wrong_gradient_is_detected(broken, monkeypatch):
    monkeypatch.setattr(BrokenRNN, "broken", broken)
    model = BrokenRNN(D, H, K, dtype=np.float64, seed=0)
    x, y = rng_data("float")
    errors = gradcheck(model, x, y)
    assert errors[broken] == pytest.approx(0.05, rel=0.1), errors
    for name, err in errors.items():
        if name != broken:
            assert err < TOL, (name, err)


def test_wrong_gradient_is_detected_in_a_float32_model():
    model = BrokenRNN(D, H, K, dtype=np.float32, seed=0)
    x, y = rng_data("ids")
    errors = gradcheck(model, x, y, params=["W", "V"])
    assert errors["W"] > 0.01
    assert errors["V"] < TOL


def test_sign_error_is_detected():
    class Flipped(RNN):
        def loss_and_grad(self, *args, **kwargs):
            loss, g = super().loss_and_grad(*args, **kwargs)
            return loss, dataclasses.replace(g, U=-g.U)

    errors = gradcheck(Flipped(D, H, K, dtype=np.float64, seed=0), *rng_data("float"))
    assert errors["U"] == pytest.approx(2.0)  # |a - (-a)| / max|a|
    assert errors["W"] < TOL


def test_non_finite_gradient_reports_nan():
    class NaNGrad(RNN):
        def loss_and_grad(self, *args, **kwargs):
            loss, g = super().loss_and_grad(*args, **kwargs)
            bad = g.V.copy()
            bad[0, 0] = np.nan
            return loss, dataclasses.replace(g, V=bad)

    errors = gradcheck(NaNGrad(D, H, K, dtype=np.float64, seed=0), *rng_data("ids"))
    assert np.isnan(errors["V"])
    assert errors["W"] < TOL


# --- params, max_entries, seed, eps ------------------------------------------------


def test_params_selects_and_orders():
    model = make()
    x, y = rng_data("float")
    assert list(gradcheck(model, x, y, params=["x", "W"])) == ["W", "x"]
    assert list(gradcheck(model, x, y, params="h0")) == ["h0"]
    assert list(gradcheck(model, x, y, params=("c", "c"))) == ["c"]


def test_max_entries_samples_reproducibly():
    model = RNN(6, 12, 5, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2, 6)), rng.integers(0, 5, size=(6, 2))
    a = gradcheck(model, x, y, max_entries=7, seed=3)
    b = gradcheck(model, x, y, max_entries=7, seed=3)
    assert a == b
    assert max(a.values()) < TOL
    # a budget at least as large as every array checks everything
    assert gradcheck(model, x, y, max_entries=10**6) == gradcheck(model, x, y)


def test_max_entries_still_catches_a_broken_array():
    model = BrokenRNN(D, H, K, dtype=np.float64, seed=0)
    x, y = rng_data("ids")
    # entry 0 of W is the broken one; sampling all of W's entries must find it
    errors = gradcheck(model, x, y, params=["W"], max_entries=H * H)
    assert errors["W"] > 0.01


@pytest.mark.parametrize("eps", [1e-4, 1e-5, 1e-7])
def test_other_steps(eps):
    model = make()
    x, y = rng_data("float")
    errors = gradcheck(model, x, y, eps=eps)
    assert max(errors.values()) < 1e-5, errors


# --- bad arguments ------------------------------------------------------------------


BAD = [
    pytest.param({"model": "not a model"}, TypeError, r"model must be an rnn_ext.RNN, a Recurrent layer or a head \(heads.Softmax, heads.Linear\), got str", id="model-str"),
    pytest.param({"eps": 0.0}, ValueError, r"eps must be a positive finite float, got 0\.0", id="eps-zero"),
    pytest.param({"eps": -1e-6}, ValueError, r"eps must be a positive finite float, got -1e-06", id="eps-negative"),
    pytest.param({"eps": float("nan")}, ValueError, "eps must be a positive finite float, got nan", id="eps-nan"),
    pytest.param({"eps": float("inf")}, ValueError, "eps must be a positive finite float, got inf", id="eps-inf"),
    pytest.param({"eps": "1e-6"}, TypeError, "eps must be a positive finite float, got str", id="eps-string"),
    pytest.param({"eps": True}, TypeError, "eps must be a positive finite float, got bool", id="eps-bool"),
    pytest.param({"max_entries": 0}, ValueError, "max_entries must be a positive int or None, got 0", id="max-entries-zero"),
    pytest.param({"max_entries": 2.5}, TypeError, "max_entries must be a positive int or None, got float", id="max-entries-float"),
    pytest.param({"params": ["Q"]}, ValueError, r"params must hold names from \('U', 'W', 'V', 'b', 'c', 'h0'\), got 'Q'", id="params-unknown"),
    pytest.param({"params": ["x"]}, ValueError, r"params names 'x'.*int ids.*available: \('U'", id="params-x-for-ids"),
    pytest.param({"params": ["b"], "bias": False}, ValueError, r"params names 'b'.*bias=False", id="params-b-without-bias"),
    pytest.param({"params": []}, ValueError, "params must name at least one of", id="params-empty"),
    pytest.param({"params": [1]}, TypeError, r"params must hold names \(str\).*got int 1", id="params-not-str"),
    pytest.param({"params": 3}, TypeError, "params must be an iterable of names.*got int", id="params-int"),
    pytest.param({"seed": "a"}, TypeError, "seed must be an int or None, got str", id="seed-string"),
    pytest.param({"reduction": "avg"}, ValueError, r"reduction must be one of \('sum', 'mean'\), got 'avg'", id="reduction"),
    pytest.param({"x": np.full((T, B), D)}, ValueError, r"x ids must be in \[0, 4\)", id="bad-x-from-model"),
    pytest.param({"h0": np.zeros(H)}, ValueError, r"h0 must have shape \(3, 5\) for this x, got \(5,\)", id="bad-h0-from-model"),
    pytest.param({"y": None}, TypeError, r"y \(the targets\) is required", id="y-None"),
]


@pytest.mark.parametrize("change, exc, match", BAD)
def test_bad_arguments(change, exc, match):
    change = dict(change)
    model = make(bias=change.pop("bias", True))
    x, y = rng_data("ids")
    args = {"model": model, "x": x, "y": y}
    for k in ("model", "x", "y"):
        if k in change:
            args[k] = change.pop(k)
    with pytest.raises(exc, match=match):
        gradcheck(args["model"], args["x"], args["y"], **change)


# --- stacked and bidirectional models, layers and heads -----------------------------------

from rnn_ext import Recurrent, heads  # noqa: E402

LAYER_CONFIGS = [
    pytest.param(dict(num_layers=2), dict(kind="float"), id="2-layers-float"),
    pytest.param(dict(num_layers=3, bidirectional=True, nonlinearity="relu"),
                 dict(kind="float", lengths=[2, 5, 4], h0=True), id="3-layers-bi-relu-lengths-h0"),
    pytest.param(dict(num_layers=2, bidirectional=True, bias=False), dict(kind="ids", lengths=[5, 1, 3]),
                 id="2-layers-bi-nobias-ids"),
    pytest.param(dict(num_layers=2, batch_first=True), dict(kind="float", lengths=[3, 5, 2]),
                 id="2-layers-batch-first"),
    pytest.param(dict(bidirectional=True), dict(kind="float", unbatched=True, h0=True), id="bi-unbatched"),
]


def layer_call(layer_kw, call_kw, model=False):
    dirs = 2 if layer_kw.get("bidirectional") else 1
    Ld = layer_kw.get("num_layers", 1) * dirs
    x, y = rng_data(call_kw["kind"], batch_first=layer_kw.get("batch_first", False))
    kwargs = {}
    if call_kw.get("unbatched"):
        x, y = x[:, 0], y[:, 0]
    if call_kw.get("h0"):
        shape = (Ld, H) if call_kw.get("unbatched") else (Ld, B, H)
        kwargs["h0"] = np.random.default_rng(4).normal(size=shape) * 0.5
    if "lengths" in call_kw:
        kwargs["lengths"] = call_kw["lengths"]
    return x, y, kwargs


def layer_names(L, dirs, bias):
    return [f"{p}_l{k}{s}" for k in range(L) for s in ("", "_reverse")[:dirs]
            for p in (("U", "W", "b") if bias else ("U", "W"))]


@pytest.mark.parametrize("layer_kw, call_kw", LAYER_CONFIGS)
def test_recurrent_layer_small_errors(layer_kw, call_kw):
    layer = Recurrent(D, H, seed=0, dtype=np.float32, **layer_kw)
    x, _, kwargs = layer_call(layer_kw, call_kw)
    errors = gradcheck(layer, x, **kwargs)
    expected = layer_names(layer.num_layers, layer.num_directions, layer.bias) + ["h0"]
    if np.asarray(x).dtype.kind == "f":
        expected.append("x")
    assert list(errors) == expected
    for name, err in errors.items():
        assert type(err) is float
        assert 0.0 <= err < TOL, (name, err)
    assert layer.dtype == np.float32


@pytest.mark.parametrize("layer_kw, call_kw", LAYER_CONFIGS)
def test_stacked_model_small_errors(layer_kw, call_kw):
    model = RNN(D, H, K, seed=0, dtype=np.float64, **layer_kw)
    x, y, kwargs = layer_call(layer_kw, call_kw)
    errors = gradcheck(model, x, y, reduction="mean", **kwargs)
    L, dirs = model.num_layers, model.num_directions
    names = (["U", "W", "V", "b", "c"] if L * dirs == 1 else layer_names(L, dirs, model.bias) + ["V", "c"])
    expected = [n for n in names if model.bias or n not in ("b", "c")] + ["h0"]
    if np.asarray(x).dtype.kind == "f":
        expected.append("x")
    assert list(errors) == expected
    assert max(errors.values()) < TOL, errors


def test_layer_upstream_is_fixed_by_the_seed_and_ignores_padded_steps():
    layer = Recurrent(D, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x, _ = rng_data("float")
    a = gradcheck(layer, x, lengths=[1, 5, 2], seed=7, max_entries=5)
    assert a == gradcheck(layer, x, lengths=[1, 5, 2], seed=7, max_entries=5)
    assert max(a.values()) < TOL, a


class BrokenLayer(Recurrent):
    """A layer whose backward returns dW_l1 slightly wrong."""

    def backward(self, fwd, d_output=None, d_h_n=None):
        g = super().backward(fwd, d_output, d_h_n)
        w = g.params["W_l1"]
        w.flat[3] += 0.05 * np.abs(w).max()
        return g


def test_wrong_layer_gradient_is_detected():
    layer = BrokenLayer(D, H, num_layers=2, dtype=np.float64, seed=0)
    errors = gradcheck(layer, rng_data("float")[0])
    assert errors["W_l1"] == pytest.approx(0.05, rel=0.1), errors
    assert max(e for n, e in errors.items() if n != "W_l1") < TOL, errors


HEAD_CASES = [
    pytest.param(heads.Softmax, {}, "step-ids", id="softmax-per-step-ids"),
    pytest.param(heads.Softmax, {"reduction": "mean", "lengths": [3, 5, 1]}, "step-ids",
                 id="softmax-mean-lengths"),
    pytest.param(heads.Softmax, {}, "step-rows", id="softmax-target-rows"),
    pytest.param(heads.Softmax, {"ignore_index": -1}, "seq-ids", id="softmax-per-sequence-ignore"),
    pytest.param(heads.Linear, {"lengths": [2, 5, 4]}, "step-floats", id="linear-per-step-lengths"),
    pytest.param(heads.Linear, {"reduction": "mean"}, "seq-floats", id="linear-per-sequence-mean"),
]


@pytest.mark.parametrize("cls, kw, kind", HEAD_CASES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_head_small_errors(cls, kw, kind, bias):
    F = 6
    rng = np.random.default_rng(3)
    head = cls(F, K, bias=bias, seed=0)
    lead = (T, B) if kind.startswith("step") else (B,)
    features = rng.normal(size=lead + (F,))
    if kind.endswith("ids"):
        y = rng.integers(0, K, size=lead)
        if "ignore_index" in kw:
            y[1] = -1
    elif kind.endswith("rows"):
        y = rng.dirichlet(np.ones(K), size=lead)
    else:
        y = rng.normal(size=lead + (K,))
    errors = gradcheck(head, features, y, **kw)
    assert list(errors) == (["V", "c"] if bias else ["V"]) + ["features"]
    assert max(errors.values()) < TOL, errors


def test_wrong_head_gradient_is_detected():
    class BrokenLinear(heads.Linear):
        def loss_and_grad(self, *args, **kw):
            loss, d_features, g = super().loss_and_grad(*args, **kw)
            return loss, -d_features, g

    rng = np.random.default_rng(0)
    errors = gradcheck(BrokenLinear(4, 2, dtype=np.float64, seed=0), rng.normal(size=(3, 4)),
                       rng.normal(size=(3, 2)))
    assert errors["features"] == pytest.approx(2.0)
    assert errors["V"] < TOL


def test_pieces_are_not_modified():
    layer = Recurrent(D, H, num_layers=2, seed=0)
    head = heads.Softmax(H, K, seed=1)
    before = (layer.flat.copy(), head.flat.copy())
    x, y = rng_data("float")
    gradcheck(layer, x)
    gradcheck(head, x[..., :1].repeat(H, axis=-1), y)
    np.testing.assert_array_equal(layer.flat, before[0])
    np.testing.assert_array_equal(head.flat, before[1])
    assert layer.flat.dtype == head.flat.dtype == np.float32


@pytest.mark.parametrize("piece, change, exc, match", [
    pytest.param("layer", {"y": np.zeros((T, B), int)}, ValueError, "a Recurrent layer has no targets",
                 id="layer-with-y"),
    pytest.param("layer", {"h0": np.zeros((B, H))}, ValueError,
                 r"h0 must have shape \(2, 3, 5\) for this x", id="layer-bad-h0"),
    pytest.param("layer", {"params": ["U"]}, ValueError, r"params must hold names from \('U_l0'",
                 id="layer-seed-letter"),
    pytest.param("layer", {"params": ["x"]}, ValueError, r"params names 'x'.*int ids", id="layer-x-of-ids"),
    pytest.param("head", {"h0": np.zeros(H)}, ValueError, "a head has no initial state", id="head-h0"),
    pytest.param("head", {"y": None}, TypeError, r"y \(the targets\) is required", id="head-no-y"),
    pytest.param("head", {"params": ["c"]}, ValueError, r"params names 'c'.*the head has bias=False",
                 id="head-c-without-bias"),
    pytest.param("model", {"params": ["b_l1"]}, ValueError, r"params names 'b_l1'.*bias=False",
                 id="model-b-without-bias"),
])
def test_bad_arguments_for_pieces(piece, change, exc, match):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, D, size=(T, B)), None
    if piece == "layer":
        obj = Recurrent(D, H, num_layers=2, seed=0)
    elif piece == "head":
        obj, x, y = heads.Linear(4, 2, bias=False, seed=0), rng.normal(size=(B, 4)), rng.normal(size=(B, 2))
    else:
        obj, y = RNN(D, H, K, num_layers=2, bias=False, seed=0), rng.integers(0, K, size=(T, B))
    change = dict(change)
    y = change.pop("y", y)
    with pytest.raises(exc, match=match):
        gradcheck(obj, x, y, **change)
