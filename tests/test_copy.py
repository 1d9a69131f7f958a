"""Pickling and copying models, layers and heads.

Each piece keeps its parameters as views into one flat buffer (and a model's
layer and head are views into the model's buffer).  A pickled or deep-copied
piece must compute what the original computes, own a buffer of its own, and
still be one buffer: writing into the copy's flat array (an optimizer step)
changes what the copy's layer and head compute.
"""

import copy
import pickle

import numpy as np
import pytest

import rnn_ext
from rnn_ext.heads import Linear, Softmax
from rnn_ext.optim import Adam
from rnn_ext.text import Vocab


def roundtrip(obj, how):
    if how == "pickle":
        return pickle.loads(pickle.dumps(obj))
    return copy.deepcopy(obj)


MODELS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, dropout=0.25, nonlinearity="relu", bias=False, dtype=np.float64),
    dict(batch_first=True),
]


def ids(rng, model, T=5, B=3):
    x = rng.integers(0, model.input_size, size=(T, B))
    y = rng.integers(0, model.output_size, size=(T, B))
    return (x.T.copy(), y.T.copy()) if model.batch_first else (x, y)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize("kw", MODELS)
def test_model_copy_computes_the_same_and_is_one_buffer_of_its_own(how, kw):
    rng = np.random.default_rng(0)
    model = rnn_ext.RNN(7, 6, 5, seed=1, **kw)
    x, y = ids(rng, model)
    model.loss_and_grad(x, y)  # binds the short path's parameters, if it serves this model
    before = model.flat.copy()
    twin = roundtrip(model, how)

    for attr in ("input_size", "hidden_size", "output_size", "num_layers", "bidirectional",
                 "dropout", "nonlinearity", "bias", "dtype", "batch_first"):
        assert getattr(twin, attr) == getattr(model, attr), attr
    assert twin.flat.dtype == model.flat.dtype
    np.testing.assert_array_equal(twin.flat, model.flat)
    assert not np.shares_memory(twin.flat, model.flat)
    # one buffer: the layer, the head and every named parameter are views into it
    assert np.shares_memory(twin.layer.flat, twin.flat)
    assert np.shares_memory(twin.head.flat, twin.flat)
    for name, p in twin.params.items():
        assert np.shares_memory(p, twin.flat), name
    # the same results, bit for bit
    l0, g0 = model.loss_and_grad(x, y)
    l1, g1 = twin.loss_and_grad(x, y)
    assert l1 == l0
    np.testing.assert_array_equal(g1.flat, g0.flat)

    # writing into the copy's buffer changes the copy only
    twin.flat[:] = 0
    assert twin.loss(x, y) == pytest.approx(x.size * np.log(model.output_size))
    assert model.loss(x, y) == l0
    np.testing.assert_array_equal(model.flat, before)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_training_a_copy_is_training_the_original(how):
    # the copy's optimizer steps on its flat buffer reach its layer and head
    rng = np.random.default_rng(1)
    model = rnn_ext.RNN(9, 8, 9, seed=2)
    x, y = ids(rng, model, T=6, B=4)
    twin = roundtrip(model, how)
    losses = []
    for m in (model, twin):
        opt = Adam(m, lr=0.05)
        trace = []
        for _ in range(5):
            loss, g = m.loss_and_grad(x, y)
            opt.step(g, clip_value=5.0)
            trace.append(loss)
        losses.append(trace)
    assert losses[0] == losses[1]
    assert losses[0][-1] < losses[0][0]
    np.testing.assert_array_equal(twin.flat, model.flat)
    h, p = twin.step(int(x[0, 0]))
    h0, p0 = model.step(int(x[0, 0]))
    np.testing.assert_array_equal(p, p0)


def test_a_copy_keeps_the_vocabulary_and_settings():
    model = rnn_ext.RNN(4, 3, 4, seed=0, batch_first=True)
    model.vocab = Vocab("abcd")
    twin = pickle.loads(pickle.dumps(model))
    assert twin.vocab is not None and twin.batch_first
    assert list(twin.vocab.chars) == list(model.vocab.chars)


def test_a_pickled_model_holds_its_parameters_once():
    model = rnn_ext.RNN(65, 256, 65, seed=0)
    blob = pickle.dumps(model)
    # the layer's and the head's views are not pickled beside the buffer
    assert model.flat.nbytes < len(blob) < 1.2 * model.flat.nbytes


def test_a_shallow_copy_shares_the_buffer():
    model = rnn_ext.RNN(5, 4, 5, seed=0)
    twin = copy.copy(model)
    assert np.shares_memory(twin.flat, model.flat)
    layer = rnn_ext.Recurrent(3, 4, seed=0)
    assert np.shares_memory(copy.copy(layer).flat, layer.flat)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=3, bidirectional=True, dtype=np.float64)])
def test_layer_copy(how, kw):
    rng = np.random.default_rng(3)
    layer = rnn_ext.Recurrent(4, 5, seed=0, **kw)
    x = rng.standard_normal((6, 2, 4)).astype(layer.dtype)
    out = layer.forward(x)
    twin = roundtrip(layer, how)
    assert not np.shares_memory(twin.flat, layer.flat)
    for name, p in twin.params.items():
        assert np.shares_memory(p, twin.flat), name
    again = twin.forward(x)
    np.testing.assert_array_equal(again.output, out.output)
    twin.params[next(iter(twin.params))][...] = 0
    np.testing.assert_array_equal(layer.forward(x).output, out.output)
    assert not np.array_equal(twin.forward(x).output, out.output)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize("cls", [Softmax, Linear])
def test_head_copy(how, cls):
    rng = np.random.default_rng(4)
    head = cls(6, 3, seed=0)
    f = rng.standard_normal((4, 6)).astype(np.float32)
    twin = roundtrip(head, how)
    assert not np.shares_memory(twin.flat, head.flat)
    assert np.shares_memory(twin.params["V"], twin.flat)
    np.testing.assert_array_equal(twin.forward(f), head.forward(f))
    twin.params["V"][...] = 0
    assert not np.array_equal(twin.forward(f), head.forward(f))
