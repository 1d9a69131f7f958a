"""The compiled Recurrent layer, heads and multi-layer RNN against the oracle.

Grid: num_layers 1-3, bidirectional on/off, tanh/relu, ids/floats, lengths,
h0, dropout masks, both dtypes; heads per step and per sequence.  Errors are
max |got - want| / max |want| per array; a failure names the case.
"""

import itertools

import numpy as np
import pytest

import rnn_ext
from rnn_ext import oracle

# float64: rounding of sums of a few dozen terms (observed <= 3e-15);
# float32: observed <= 6e-7 over this grid, 20x margin.
TOL = {np.float32: 1.2e-5, np.float64: 1e-12}
T, B, D, H, K = 5, 3, 4, 3, 4


def rel(got, want):
    want = np.asarray(want, dtype=np.float64)
    scale = max(np.abs(want).max(), 1e-30)
    return float(np.abs(np.asarray(got, dtype=np.float64) - want).max() / scale)


def layer_case(seed, L, bidir, relu, ids, lens, h0, dropout, dtype, bias=True):
    rng = np.random.default_rng(seed)
    layer = rnn_ext.Recurrent(D, H, L, nonlinearity="relu" if relu else "tanh", bias=bias,
                              bidirectional=bidir, dropout=0.5 if dropout else 0.0,
                              dtype=dtype, seed=seed)
    dirs = 2 if bidir else 1
    x = rng.integers(0, D, size=(T, B)) if ids else rng.normal(size=(T, B, D))
    lengths = rng.permutation(np.r_[T, rng.integers(1, T + 1, size=B - 1)]) if lens else None
    h0a = rng.normal(size=(L * dirs, B, H)) if h0 else None
    d_out = rng.normal(size=(T, B, dirs * H))   # non-zero on padded steps too
    d_hn = rng.normal(size=(L * dirs, B, H))
    return layer, x, lengths, h0a, d_out, d_hn


GRID = [c for c in itertools.product([1, 2, 3], [False, True], [False, True], [False, True],
                                     [False, True], [False, True], [False, True])
        if not (c[0] == 1 and c[6])]   # dropout needs two layers


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("L, bidir, relu, ids, lens, h0, dropout", GRID[::3] + GRID[1::7])
def test_recurrent_matches_oracle(dtype, L, bidir, relu, ids, lens, h0, dropout):
    case = f"L={L} bidir={bidir} relu={relu} ids={ids} lengths={lens} h0={h0} dropout={dropout}"
    layer, x, lengths, h0a, d_out, d_hn = layer_case(7, L, bidir, relu, ids, lens, h0, dropout,
                                                     dtype)
    fwd = layer.forward(x, h0a, lengths, train=dropout, seed=3)
    assert fwd.output.dtype == dtype and fwd.h_n.dtype == dtype
    masks = None
    if fwd._masks is not None:
        masks = [m.reshape(T, B, -1).astype(np.float64) for m in fwd._masks]
    p64 = {n: a.astype(np.float64) for n, a in layer.params.items()}
    kw = dict(num_layers=L, bidirectional=bidir, nonlinearity=layer.nonlinearity, h0=h0a,
              lengths=lengths, masks=masks)
    out, h_n = oracle.recurrent_forward(p64, x, **kw)
    assert rel(fwd.output, out) < TOL[dtype], case
    assert rel(fwd.h_n, h_n) < TOL[dtype], case
    g = layer.backward(fwd, d_out, d_hn)
    grads, dx, dh0 = oracle.recurrent_backward(p64, x, d_out, d_hn, **kw)
    for name, want in grads.items():
        assert g.params[name].dtype == dtype
        assert rel(g.params[name], want) < TOL[dtype], f"{name}: {case}"
    assert rel(g.h0, dh0) < TOL[dtype], case
    if ids:
        assert g.x is None
    else:
        assert rel(g.x, dx) < TOL[dtype], case
    # the flat gradient is the named ones laid end to end
    np.testing.assert_array_equal(
        g.flat, np.concatenate([g.params[n].ravel() for n in layer.params]))


def test_padded_upstream_changes_nothing():
    layer, x, lengths, h0a, d_out, d_hn = layer_case(3, 2, True, False, False, True, True, False,
                                                     np.float64)
    fwd = layer.forward(x, h0a, lengths)
    g1 = layer.backward(fwd, d_out, d_hn)
    noisy = d_out.copy()
    for b, n in enumerate(lengths):
        noisy[n:, b] = 1e6
    g2 = layer.backward(fwd, noisy, d_hn)
    np.testing.assert_array_equal(g1.flat, g2.flat)
    np.testing.assert_array_equal(g1.x, g2.x)
    np.testing.assert_array_equal(g1.h0, g2.h0)
    # and the outputs there are zero
    for b, n in enumerate(lengths):
        assert not fwd.output[n:, b].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("per_step", [True, False], ids=["per-step", "per-sequence"])
@pytest.mark.parametrize("kind", ["softmax-ids", "softmax-rows", "linear"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_heads_match_oracle(dtype, per_step, kind, reduction):
    rng = np.random.default_rng(5)
    F = 6
    shape = (T, B) if per_step else (B,)
    feats = rng.normal(size=shape + (F,))
    lengths = np.array([T, 2, 4]) if per_step else None
    if kind == "linear":
        head = rnn_ext.heads.Linear(F, K, dtype=dtype, seed=1)
        y = rng.normal(size=shape + (K,))
        want = oracle.linear_head(head.params["V"].astype(float), head.params["c"].astype(float),
                                  feats, y, lengths=lengths, reduction=reduction)
        pred = oracle.linear_head_forward(head.params["V"].astype(float),
                                          head.params["c"].astype(float), feats)
    else:
        head = rnn_ext.heads.Softmax(F, K, dtype=dtype, seed=1)
        if kind == "softmax-ids":
            y = rng.integers(0, K, size=shape)
            y.flat[0] = -100
        else:
            y = rng.random(size=shape + (K,))
        want = oracle.softmax_head(head.params["V"].astype(float), head.params["c"].astype(float),
                                   feats, y, lengths=lengths, reduction=reduction)
        pred = oracle.softmax_head_forward(head.params["V"].astype(float),
                                           head.params["c"].astype(float), feats)
    loss, d_feat, g = head.loss_and_grad(feats, y, lengths=lengths, reduction=reduction)
    case = f"{kind} per_step={per_step} {reduction}"
    assert loss == pytest.approx(want[0], rel=TOL[dtype]), case
    assert d_feat.dtype == dtype and d_feat.shape == feats.shape
    assert rel(d_feat, want[1]) < TOL[dtype], case
    assert rel(g.params["V"], want[2]) < TOL[dtype], case
    assert rel(g.params["c"], want[3]) < TOL[dtype], case
    assert rel(head.forward(feats), pred) < TOL[dtype], case


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("L, bidir, ids, lens", [(2, False, True, True), (2, True, False, True),
                                                 (3, True, True, False), (1, True, False, True)])
def test_multilayer_model_is_layer_plus_head(dtype, L, bidir, ids, lens):
    """RNN's fused pass equals Recurrent + heads.Softmax run one after the other,
    and both equal the oracle."""
    rng = np.random.default_rng(11)
    m = rnn_ext.RNN(D, H, K, num_layers=L, bidirectional=bidir, dtype=dtype, seed=2)
    dirs = 2 if bidir else 1
    x = rng.integers(0, D, size=(T, B)) if ids else rng.normal(size=(T, B, D))
    y = rng.integers(0, K, size=(T, B))
    lengths = np.array([T, 2, 4]) if lens else None
    h0 = rng.normal(size=(L * dirs, B, H))
    loss, g = m.loss_and_grad(x, y, h0, lengths)
    fwd = m.layer.forward(x, h0, lengths)
    hl, d_feat, gh = m.head.loss_and_grad(fwd.output, y, lengths=lengths)
    gl = m.layer.backward(fwd, d_feat)
    assert loss == pytest.approx(hl, rel=TOL[dtype])
    assert rel(g.flat, np.concatenate([gl.flat, gh.flat])) < TOL[dtype]
    assert rel(g.h0, gl.h0) < TOL[dtype]
    p64 = {n: a.astype(np.float64) for n, a in m.parameters().items()}
    out, _ = oracle.recurrent_forward(p64, x, num_layers=L, bidirectional=bidir, h0=h0,
                                      lengths=lengths)
    want = oracle.softmax_head(p64["V"], p64["c"], out, y, lengths=lengths)
    assert loss == pytest.approx(want[0], rel=TOL[dtype])
    assert rel(g.parameters()["V"], want[2]) < TOL[dtype]
    probs = m.forward(x, h0, lengths).probs
    assert rel(probs, oracle.softmax_head_forward(p64["V"], p64["c"], out)) < TOL[dtype]


def test_forward_result_from_another_layer_is_refused():
    a = rnn_ext.Recurrent(D, H, seed=0)
    b = rnn_ext.Recurrent(D, H, seed=0)
    fwd = a.forward(np.zeros((T, B), int))
    with pytest.raises(ValueError, match="another layer"):
        b.backward(fwd, np.zeros((T, B, H)))
    with pytest.raises(TypeError, match="RecurrentForward"):
        a.backward({"output": 0})


@pytest.mark.parametrize("kw, exc, match", [
    ({"num_layers": 0}, ValueError, "num_layers must be a positive int, got 0"),
    ({"dropout": 1.0}, ValueError, r"dropout must be in \[0, 1\), got 1.0"),
    ({"dropout": -0.1}, ValueError, r"dropout must be in \[0, 1\)"),
    ({"dropout": "0.5"}, TypeError, "dropout must be a number"),
    ({"bidirectional": 1}, TypeError, "bidirectional must be a bool"),
    ({"nonlinearity": "sigmoid"}, ValueError, "nonlinearity must be one of"),
])
def test_bad_construction(kw, exc, match):
    args = dict(input_size=D, hidden_size=H)
    with pytest.raises(exc, match=match):
        rnn_ext.Recurrent(**{**args, **kw})
    with pytest.raises(exc, match=match):
        rnn_ext.RNN(D, H, K, **kw)


def test_bad_upstream_gradients():
    layer = rnn_ext.Recurrent(D, H, 2, bidirectional=True, seed=0)
    x = np.zeros((T, B, D))
    fwd = layer.forward(x)
    with pytest.raises(ValueError, match=r"d_output must have shape \(5, 3, 6\).*got \(5, 3, 3\)"):
        layer.backward(fwd, np.zeros((T, B, H)))
    with pytest.raises(ValueError, match=r"d_h_n must have shape \(4, 3, 3\).*got \(2, 3, 3\)"):
        layer.backward(fwd, None, np.zeros((2, B, H)))
    with pytest.raises(TypeError, match="d_output must be real"):
        layer.backward(fwd, np.zeros((T, B, 2 * H), complex))
    with pytest.raises(ValueError, match="d_output must be finite"):
        layer.backward(fwd, np.full((T, B, 2 * H), np.nan))
    with pytest.raises(ValueError, match=r"h0 must have shape \(4, 3, 3\)"):
        layer.forward(x, np.zeros((B, H)))


def test_bad_head_input():
    head = rnn_ext.heads.Softmax(6, K)
    with pytest.raises(ValueError, match=r"features must be \(T, B, 6\)"):
        head.loss_and_grad(np.zeros((T, B, 5)), np.zeros((T, B), int))
    with pytest.raises(ValueError, match=r"y of class ids must have shape \(5, 3\)"):
        head.loss_and_grad(np.zeros((T, B, 6)), np.zeros((B,), int))
    with pytest.raises(ValueError, match=r"y class ids must be in \[0, 4\)"):
        head.loss_and_grad(np.zeros((B, 6)), np.full(B, K))
    with pytest.raises(ValueError, match="lengths applies to per-step features"):
        head.loss_and_grad(np.zeros((B, 6)), np.zeros(B, int), lengths=[1, 1, 1])
    lin = rnn_ext.heads.Linear(6, 2)
    with pytest.raises(ValueError, match=r"y must have shape \(3, 2\)"):
        lin.loss_and_grad(np.zeros((B, 6)), np.zeros((B, 3)))


def test_inputs_are_not_modified():
    layer, x, lengths, h0a, d_out, d_hn = layer_case(1, 2, True, False, False, True, True, False,
                                                     np.float32)
    keep = [a.copy() for a in (x, h0a, d_out, d_hn)]
    fwd = layer.forward(x, h0a, lengths)
    layer.backward(fwd, d_out, d_hn)
    for a, k in zip((x, h0a, d_out, d_hn), keep):
        np.testing.assert_array_equal(a, k)


def test_params_are_views_into_flat():
    layer = rnn_ext.Recurrent(D, H, 2, bidirectional=True, seed=0)
    for name, a in layer.params.items():
        assert np.shares_memory(a, layer.flat), name
    layer.params["W_l1_reverse"][...] = 0
    assert not layer.params["W_l1_reverse"].any()
    m = rnn_ext.RNN(D, H, K, num_layers=2, seed=0)
    assert np.shares_memory(m.layer.flat, m.flat) and np.shares_memory(m.head.flat, m.flat)
    assert m.flat.size == m.layer.flat.size + m.head.flat.size


def test_single_layer_seed_gives_the_seeds_numbers():
    """The flat buffer is drawn U, W, b, V, c: the order the seed's model drew."""
    m = rnn_ext.RNN(3, 4, 5, seed=9, dtype=np.float64)
    rng = np.random.default_rng(9)
    bound = 1 / np.sqrt(4)
    for name, shape in [("U", (4, 3)), ("W", (4, 4)), ("b", (4,)), ("V", (5, 4)), ("c", (5,))]:
        np.testing.assert_array_equal(getattr(m, name), rng.uniform(-bound, bound, size=shape))


def test_readme_building_blocks_example():
    """The README's Recurrent + heads.Softmax example, as written there."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("## Building blocks"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    g_layer, g_head, layer = scope["g_layer"], scope["g_head"], scope["layer"]
    assert g_layer.flat.shape == layer.flat.shape
    assert g_head.params["V"].shape == (10, 128)
    assert g_layer.x.shape == (8, 16, 8)


@pytest.mark.parametrize("L, bidir, lens", [(1, False, False), (2, True, True), (3, False, True)])
def test_weight_stationary_and_blas_recurrences_agree(monkeypatch, L, bidir, lens):
    """float32 runs the packed weight-stationary recurrence (src/wsr.h); with
    RNN_EXT_SIMD=blas a GEMM per step.  Both against the float64 oracle."""
    layer, x, lengths, h0a, d_out, d_hn = layer_case(4, L, bidir, True, False, lens, True, False,
                                                     np.float32)
    got = {}
    for path in ("wsr", "blas"):
        if path == "blas":
            monkeypatch.setenv("RNN_EXT_SIMD", "blas")
        fwd = layer.forward(x, h0a, lengths)
        got[path] = (fwd.output, layer.backward(fwd, d_out, d_hn).flat)
    p64 = {n: a.astype(np.float64) for n, a in layer.params.items()}
    kw = dict(num_layers=L, bidirectional=bidir, nonlinearity="relu", h0=h0a, lengths=lengths)
    out, _ = oracle.recurrent_forward(p64, x, **kw)
    grads, _, _ = oracle.recurrent_backward(p64, x, d_out, d_hn, **kw)
    want = np.concatenate([np.ravel(grads[n]) for n in layer.params])
    for path, (o, g) in got.items():
        assert rel(o, out) < TOL[np.float32], path
        assert rel(g, want) < TOL[np.float32], path
