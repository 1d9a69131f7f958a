"""The oracle's stacked, bidirectional layers and its heads against central finite differences.

recurrent_forward / recurrent_backward and the heads (rnn_ext/oracle.py) are the
specification the compiled Recurrent and heads are tested against, so they are
checked here from first principles (float64): for L = Σ d_output ⊙ output +
Σ d_h_n ⊙ h_n with random upstream gradients (non-zero on padded steps too),
every entry of every gradient must match (L(p + eps) - L(p - eps)) / (2 eps).
The single-layer case must reproduce the seed's forward / loss_and_grad exactly,
and one stacked bidirectional case is held against PyTorch where it is installed.
"""

import itertools
import math
import random

import pytest

from rnn_ext import oracle

EPS = 1e-6  # central-difference step
RTOL = 1e-6  # relative to the largest entry of the gradient
ATOL = 1e-8  # rounding noise of a central difference is about 1e-16 |L| / EPS
RELU_MARGIN = 1e-3  # keep pre-activations this far from relu's kink
DROPOUT = 0.25  # masks hold 0 or 1 / (1 - DROPOUT)


# --- helpers -------------------------------------------------------------------------------


def _uniform(rng, *shape, lo=-1.0, hi=1.0):
    if len(shape) == 1:
        return [rng.uniform(lo, hi) for _ in range(shape[0])]
    return [_uniform(rng, *shape[1:], lo=lo, hi=hi) for _ in range(shape[0])]


def _slots(a):
    """(container, index) for every scalar of a nested list, in row-major order."""
    if isinstance(a[0], list):
        for sub in a:
            yield from _slots(sub)
    else:
        for i in range(len(a)):
            yield a, i


def _flat(a):
    return [container[i] for container, i in _slots(a)]


def _numerical_gradient(f, a):
    """Central differences of f() with respect to every entry of the nested list a."""
    out = []
    for container, i in _slots(a):
        saved = container[i]
        container[i] = saved + EPS
        up = f()
        container[i] = saved - EPS
        down = f()
        container[i] = saved
        out.append((up - down) / (2 * EPS))
    return out


def _check(name, analytic, numeric, failures):
    """Append a message to failures when analytic and numeric gradients differ."""
    analytic = _flat(analytic)
    assert len(analytic) == len(numeric), name
    diffs = [abs(a - n) for a, n in zip(analytic, numeric)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    allowed = RTOL * max(abs(a) for a in analytic) + ATOL
    if not diffs[worst] <= allowed:
        failures.append(
            f"d{name}: |analytic - numeric| = {diffs[worst]:.3g} > {allowed:.3g} at flat index "
            f"{worst} (analytic {analytic[worst]!r}, numeric {numeric[worst]!r})"
        )


def _names(num_layers, dirs, bias):
    """Parameter names in the contract's order."""
    return [
        f"{letter}_l{k}{suffix}"
        for k in range(num_layers)
        for suffix in ("", "_reverse")[:dirs]
        for letter in ("U", "W", "b")[: 3 if bias else 2]
    ]


def _layer_params(rng, num_layers, dirs, D, H, bias, lo=-1.0):
    params = {}
    for k in range(num_layers):
        for suffix in ("", "_reverse")[:dirs]:
            params[f"U_l{k}{suffix}"] = _uniform(rng, H, D if k == 0 else dirs * H, lo=lo)
            params[f"W_l{k}{suffix}"] = _uniform(rng, H, H, lo=lo)
            if bias:
                params[f"b_l{k}{suffix}"] = _uniform(rng, H, lo=lo)
    return params


def _min_abs_preactivation(case):
    """Smallest |a_t| over every layer, direction and valid step (relu's kink is a = 0)."""
    kw = case["kw"]
    layers, x, ids, h0, lengths, masks = oracle._prepare_layers(
        case["params"], case["x"], kw["h0"], kw["lengths"], kw["masks"], kw["num_layers"],
        kw["bidirectional"], kw["nonlinearity"],
    )
    acts = oracle._layers_forward(layers, x, ids, h0, lengths, masks, kw["nonlinearity"])
    return min(
        abs(aj)
        for layer in acts
        for a_d in layer["a"]
        for t, a_t in enumerate(a_d)
        for n, a_tn in enumerate(a_t)
        if t < lengths[n]
        for aj in a_tn
    )


def make_layer_case(seed, num_layers, bidirectional, nonlinearity, bias, inputs, ragged,
                    with_h0, with_masks):
    """Random stacked problem; returns (id, case) with case = params, x, kw, d_output, d_h_n."""
    rng = random.Random(seed)
    dirs = 2 if bidirectional else 1
    T, B = rng.randint(2, 4), rng.randint(2, 3)
    D, H = rng.randint(1, 3), rng.randint(2 if nonlinearity == "relu" else 1, 3)
    for _ in range(200):  # for relu, redraw until no pre-activation sits near the kink
        case = {
            # relu: weights leaning positive, so that few units are dead
            "params": _layer_params(rng, num_layers, dirs, D, H, bias,
                                    lo=-0.5 if nonlinearity == "relu" else -1.0),
            "x": ([[rng.randrange(D) for _ in range(B)] for _ in range(T)] if inputs == "ids"
                  else _uniform(rng, T, B, D)),
            "kw": {
                "num_layers": num_layers,
                "bidirectional": bidirectional,
                "nonlinearity": nonlinearity,
                "h0": _uniform(rng, num_layers * dirs, B, H) if with_h0 else None,
                "lengths": None,
                "masks": None,
            },
            # the upstream gradients are non-zero everywhere, padded steps included
            "d_output": _uniform(rng, T, B, dirs * H),
            "d_h_n": _uniform(rng, num_layers * dirs, B, H),
        }
        if ragged:  # unsorted, with one full-length sequence and one of length 1
            lengths = [rng.randint(1, T) for _ in range(B)]
            lengths[0], lengths[-1] = 1, T
            rng.shuffle(lengths)
            case["kw"]["lengths"] = lengths
        if with_masks:
            case["kw"]["masks"] = [
                [[[0.0 if rng.random() < DROPOUT else 1.0 / (1.0 - DROPOUT)
                   for _ in range(dirs * H)] for _ in range(B)] for _ in range(T)]
                for _ in range(num_layers - 1)
            ]
        if nonlinearity == "tanh" or _min_abs_preactivation(case) > RELU_MARGIN:
            break
    else:
        raise RuntimeError(f"no relu case away from the kink for seed {seed}")
    case_id = (
        f"L{num_layers}-{'bi' if bidirectional else 'uni'}-{nonlinearity}-"
        f"{'bias' if bias else 'nobias'}-x_{inputs}{'-ragged' if ragged else ''}"
        f"{'-h0' if with_h0 else ''}{'-masks' if with_masks else ''}-T{T}B{B}D{D}H{H}"
    )
    return case_id, case


LAYER_CASES = []
for i, (num_layers, bidirectional, nonlinearity, bias, inputs) in enumerate(
    itertools.product((1, 2, 3), (False, True), ("tanh", "relu"), (True, False), ("ids", "floats"))
):
    # ragged, h0 and masks cycle with different periods, so each meets every other setting
    ragged = i % 2 == 0
    with_h0 = (i // 2) % 2 == 0
    with_masks = num_layers > 1 and i % 3 != 0
    LAYER_CASES.append(
        make_layer_case(2000 + i, num_layers, bidirectional, nonlinearity, bias, inputs,
                        ragged, with_h0, with_masks)
    )


def _upstream_loss(case, h0):
    """L = Σ d_output ⊙ output + Σ d_h_n ⊙ h_n."""
    output, h_n = oracle.recurrent_forward(case["params"], case["x"], **{**case["kw"], "h0": h0})
    return math.fsum(
        [g * v for g, v in zip(_flat(case["d_output"]), _flat(output))]
        + [g * v for g, v in zip(_flat(case["d_h_n"]), _flat(h_n))]
    )


# --- the layers against finite differences ---------------------------------------------------


@pytest.mark.parametrize("case", [c for _, c in LAYER_CASES], ids=[cid for cid, _ in LAYER_CASES])
def test_layer_gradients_match_finite_differences(case):
    kw = case["kw"]
    grads, dx, dh0 = oracle.recurrent_backward(
        case["params"], case["x"], case["d_output"], case["d_h_n"], **kw
    )
    dirs = 2 if kw["bidirectional"] else 1
    bias = "b_l0" in case["params"]
    assert list(grads) == _names(kw["num_layers"], dirs, bias)
    # h0=None is checked as the gradient at zeros
    h0 = kw["h0"] if kw["h0"] is not None else [[[0.0] * len(case["params"]["W_l0"])
                                                 for _ in case["x"][0]] for _ in dh0]
    loss = lambda: _upstream_loss(case, h0)  # noqa: E731
    failures = []
    for name, value in case["params"].items():
        _check(name, grads[name], _numerical_gradient(loss, value), failures)
    _check("h0", dh0, _numerical_gradient(loss, h0), failures)
    if isinstance(case["x"][0][0], int):
        assert dx is None
    else:
        _check("x", dx, _numerical_gradient(loss, case["x"]), failures)
    assert not failures, "\n".join(failures)


# --- the layers' semantics -------------------------------------------------------------------


def _small_stack(seed, num_layers=2, bidirectional=True, nonlinearity="tanh", T=4, B=3, D=2, H=3):
    rng = random.Random(seed)
    dirs = 2 if bidirectional else 1
    params = _layer_params(rng, num_layers, dirs, D, H, bias=True)
    x = _uniform(rng, T, B, D)
    kw = {"num_layers": num_layers, "bidirectional": bidirectional, "nonlinearity": nonlinearity,
          "h0": _uniform(rng, num_layers * dirs, B, H)}
    return rng, params, x, kw


def test_padded_upstream_gradient_changes_nothing():
    rng, params, x, kw = _small_stack(1)
    lengths = [2, 4, 1]
    d_output = _uniform(rng, 4, 3, 6)
    d_h_n = _uniform(rng, 4, 3, 3)
    zeroed = [[row if t < lengths[n] else [0.0] * 6 for n, row in enumerate(step)]
              for t, step in enumerate(d_output)]
    got = oracle.recurrent_backward(params, x, d_output, d_h_n, lengths=lengths, **kw)
    want = oracle.recurrent_backward(params, x, zeroed, d_h_n, lengths=lengths, **kw)
    assert got == want
    output, _ = oracle.recurrent_forward(params, x, lengths=lengths, **kw)
    for n, length in enumerate(lengths):
        for t in range(length, 4):
            assert output[t][n] == [0.0] * 6


def test_ragged_batch_equals_sequences_run_one_by_one():
    """Packed semantics: each sequence of a ragged batch behaves as if run alone."""
    rng, params, x, kw = _small_stack(2)
    lengths = [3, 1, 4]
    d_output = _uniform(rng, 4, 3, 6)
    d_h_n = _uniform(rng, 4, 3, 3)
    masks = [[[[rng.choice([0.0, 2.0]) for _ in range(6)] for _ in range(3)] for _ in range(4)]]
    kw["masks"] = masks
    output, h_n = oracle.recurrent_forward(params, x, lengths=lengths, **kw)
    grads, dx, dh0 = oracle.recurrent_backward(params, x, d_output, d_h_n, lengths=lengths, **kw)
    summed = {name: [0.0] * len(_flat(g)) for name, g in grads.items()}
    for n, length in enumerate(lengths):
        one = {
            **kw,
            "h0": [[h0_i[n]] for h0_i in kw["h0"]],
            "masks": [[[m[t][n]] for t in range(length)] for m in masks],
        }
        xs = [[x[t][n]] for t in range(length)]
        out_n, h_n_n = oracle.recurrent_forward(params, xs, **one)
        assert [output[t][n] for t in range(length)] == [o[0] for o in out_n]
        assert [h[n] for h in h_n] == [h[0] for h in h_n_n]
        g_n, dx_n, dh0_n = oracle.recurrent_backward(
            params, xs, [[d_output[t][n]] for t in range(length)], [[d[n]] for d in d_h_n], **one
        )
        assert [dx[t][n] for t in range(length)] == [d[0] for d in dx_n]
        assert [d[n] for d in dh0] == [d[0] for d in dh0_n]
        for name in summed:
            summed[name] = [s + g for s, g in zip(summed[name], _flat(g_n[name]))]
    for name, want in summed.items():
        got = _flat(grads[name])
        assert all(abs(u - v) <= 1e-13 * (1 + abs(v)) for u, v in zip(got, want)), name


def test_reverse_direction_is_the_forward_recurrence_on_the_reversed_sequence():
    rng, params, x, kw = _small_stack(3, num_layers=1)
    lengths = [2, 4, 3]
    output, h_n = oracle.recurrent_forward(params, x, lengths=lengths, **kw)
    reverse_only = {"U_l0": params["U_l0_reverse"], "W_l0": params["W_l0_reverse"],
                    "b_l0": params["b_l0_reverse"]}
    for n, length in enumerate(lengths):
        xs = [[x[t][n]] for t in reversed(range(length))]
        out_n, h_n_n = oracle.recurrent_forward(
            reverse_only, xs, num_layers=1, bidirectional=False, h0=[[kw["h0"][1][n]]]
        )
        assert [output[t][n][3:] for t in range(length)] == [o[0] for o in reversed(out_n)]
        assert h_n[1][n] == h_n_n[0][0] == output[0][n][3:]  # the reverse state at t = 0
        assert h_n[0][n] == output[length - 1][n][:3]


def test_masks_of_ones_change_nothing_and_zero_masks_cut_the_layers_apart():
    rng, params, x, kw = _small_stack(4, num_layers=3)
    d_output = _uniform(rng, 4, 3, 6)
    ones = [[[[1.0] * 6 for _ in range(3)] for _ in range(4)] for _ in range(2)]
    plain = oracle.recurrent_backward(params, x, d_output, **kw)
    assert oracle.recurrent_backward(params, x, d_output, masks=ones, **kw) == plain
    zeros = [[[[0.0] * 6 for _ in range(3)] for _ in range(4)] for _ in range(2)]
    grads, dx, dh0 = oracle.recurrent_backward(params, x, d_output, masks=zeros, **kw)
    assert all(v == 0.0 for v in _flat(dx) + _flat(grads["U_l0"]) + _flat(dh0[:4]))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_ids_are_one_hot_columns(bidirectional):
    rng, params, _, kw = _small_stack(5, bidirectional=bidirectional, D=4)
    ids = [[rng.randrange(4) for _ in range(3)] for _ in range(4)]
    onehot = [[[1.0 if d == i else 0.0 for d in range(4)] for i in row] for row in ids]
    d_output = _uniform(rng, 4, 3, 6 if bidirectional else 3)
    assert (oracle.recurrent_forward(params, ids, **kw)
            == oracle.recurrent_forward(params, onehot, **kw))
    gi, dxi, dh0i = oracle.recurrent_backward(params, ids, d_output, **kw)
    gf, dxf, dh0f = oracle.recurrent_backward(params, onehot, d_output, **kw)
    assert dxi is None and dxf is not None
    assert dh0i == dh0f
    for name in gi:
        assert all(abs(u - v) <= 1e-15 for u, v in zip(_flat(gi[name]), _flat(gf[name]))), name


def test_none_means_zeros():
    rng, params, x, kw = _small_stack(6)
    kw["h0"] = None
    zeros_h0 = [[[0.0] * 3 for _ in range(3)] for _ in range(4)]
    assert (oracle.recurrent_forward(params, x, **kw)
            == oracle.recurrent_forward(params, x, **{**kw, "h0": zeros_h0}))
    d_output = _uniform(rng, 4, 3, 6)
    assert (oracle.recurrent_backward(params, x, d_output, None, **kw)
            == oracle.recurrent_backward(params, x, d_output, zeros_h0, **kw))
    grads, dx, dh0 = oracle.recurrent_backward(params, x, **kw)
    assert all(v == 0.0 for g in [*grads.values(), dx, dh0] for v in _flat(g))


def test_numpy_arrays_are_accepted():
    np = pytest.importorskip("numpy")
    rng, params, x, kw = _small_stack(7)
    d_output = _uniform(rng, 4, 3, 6)
    lengths = [4, 1, 2]
    arrays = {name: np.array(v) for name, v in params.items()}
    np_kw = {**kw, "h0": np.array(kw["h0"])}
    assert (oracle.recurrent_backward(arrays, np.array(x), np.array(d_output), lengths=np.array(lengths), **np_kw)
            == oracle.recurrent_backward(params, x, d_output, lengths=lengths, **kw))


# --- the single-layer case is the seed's model ------------------------------------------------


SEED_CASES = list(itertools.product(("tanh", "relu"), (True, False), ("ids", "floats"),
                                    ("sum", "mean")))


@pytest.mark.parametrize("nonlinearity, bias, inputs, reduction", SEED_CASES,
                         ids=["-".join(map(str, c)) for c in SEED_CASES])
def test_one_layer_one_direction_with_softmax_head_is_the_seed_model(nonlinearity, bias, inputs,
                                                                     reduction):
    rng = random.Random(100 + SEED_CASES.index((nonlinearity, bias, inputs, reduction)))
    T, B, D, H, K = 4, 3, 3, 4, 3
    U, W, V = _uniform(rng, H, D), _uniform(rng, H, H), _uniform(rng, K, H)
    b, c = (_uniform(rng, H), _uniform(rng, K)) if bias else (None, None)
    x = ([[rng.randrange(D) for _ in range(B)] for _ in range(T)] if inputs == "ids"
         else _uniform(rng, T, B, D))
    h0 = _uniform(rng, B, H)
    lengths = [3, 4, 1]
    y = [[rng.choice([rng.randrange(K), -100]) for _ in range(B)] for _ in range(T)]
    y[0][0] = 1
    params = {"U_l0": U, "W_l0": W, **({"b_l0": b} if bias else {})}
    kw = {"num_layers": 1, "bidirectional": False, "nonlinearity": nonlinearity, "h0": [h0],
          "lengths": lengths}

    output, h_n = oracle.recurrent_forward(params, x, **kw)
    seed = oracle.forward(U, W, V, b, c, x, h0=h0, lengths=lengths, nonlinearity=nonlinearity)
    assert output == seed["h"]
    assert h_n == [seed["h_last"]]
    assert oracle.softmax_head_forward(V, c, output) == seed["probs"]

    loss, d_features, dV, dc = oracle.softmax_head(V, c, output, y, lengths=lengths,
                                                   reduction=reduction)
    grads, dx, dh0 = oracle.recurrent_backward(params, x, d_features, **kw)
    want_loss, want = oracle.loss_and_grad(U, W, V, b, c, x, y, h0=h0, lengths=lengths,
                                           nonlinearity=nonlinearity, reduction=reduction)
    # the same equations in the same order: equal to the last bit
    assert loss == want_loss
    assert (dV, dc) == (want["V"], want["c"])
    assert (grads["U_l0"], grads["W_l0"], grads.get("b_l0")) == (want["U"], want["W"], want["b"])
    assert dx == want["x"]
    assert dh0 == [want["h0"]]


# --- the heads against finite differences ---------------------------------------------------


def make_head_case(seed, head, per_step, targets, reduction, bias):
    rng = random.Random(seed)
    T, B, F, K = 3, 3, rng.randint(1, 3), rng.randint(2, 3)
    ignore_index = rng.choice([-100, -1])
    case = {
        "V": _uniform(rng, K, F, lo=-2.0, hi=2.0),
        "c": _uniform(rng, K) if bias else None,
        "features": _uniform(rng, T, B, F) if per_step else _uniform(rng, B, F),
        "kw": {"reduction": reduction, "lengths": [2, 3, 1] if per_step else None},
    }
    shape = (T, B) if per_step else (B,)
    if head == "linear":
        case["y"] = _uniform(rng, *shape, K)
    elif targets == "ids":
        ids = _uniform(rng, *shape, lo=0.0, hi=1.0)
        for container, i in _slots(ids):  # about a third ignored, the first one counted
            container[i] = ignore_index if container[i] < 0.3 else rng.randrange(K)
        first = ids[0] if per_step else ids
        first[0] = rng.randrange(K)
        case["y"] = ids
        case["kw"]["ignore_index"] = ignore_index
    else:  # unnormalised rows: the general gradient ŷ Σy - y is what is checked
        case["y"] = _uniform(rng, *shape, K, lo=0.0, hi=2.0)
    return case


HEAD_CASES = [
    (head, per_step, targets, reduction, bias)
    for head, targets in [("softmax", "ids"), ("softmax", "rows"), ("linear", "rows")]
    for per_step, reduction, bias in itertools.product((True, False), ("sum", "mean"),
                                                       (True, False))
]


@pytest.mark.parametrize(
    "head, per_step, targets, reduction, bias", HEAD_CASES,
    ids=[f"{h}-{'step' if p else 'seq'}-y_{t}-{r}-{'bias' if b else 'nobias'}"
         for h, p, t, r, b in HEAD_CASES],
)
def test_head_gradients_match_finite_differences(head, per_step, targets, reduction, bias):
    case = make_head_case(HEAD_CASES.index((head, per_step, targets, reduction, bias)), head,
                          per_step, targets, reduction, bias)
    fn = oracle.softmax_head if head == "softmax" else oracle.linear_head
    loss, d_features, dV, dc = fn(case["V"], case["c"], case["features"], case["y"], **case["kw"])
    assert isinstance(loss, float)
    assert (dc is None) == (not bias)
    value = lambda: fn(case["V"], case["c"], case["features"], case["y"], **case["kw"])[0]  # noqa: E731
    failures = []
    _check("V", dV, _numerical_gradient(value, case["V"]), failures)
    _check("features", d_features, _numerical_gradient(value, case["features"]), failures)
    if bias:
        _check("c", dc, _numerical_gradient(value, case["c"]), failures)
    assert not failures, "\n".join(failures)
    if per_step:  # steps past a sequence's length count nothing
        lengths = case["kw"]["lengths"]
        for n, length in enumerate(lengths):
            for t in range(length, len(case["features"])):
                assert d_features[t][n] == [0.0] * len(case["V"][0])


@pytest.mark.parametrize("head", ["softmax", "linear"])
def test_head_mean_is_sum_divided_by_counted_terms(head):
    rng = random.Random(20)
    T, B, F, K = 3, 3, 2, 3
    V, c, features = _uniform(rng, K, F), _uniform(rng, K), _uniform(rng, T, B, F)
    lengths = [3, 2, 1]
    if head == "softmax":
        fn, y = oracle.softmax_head, [[0, -100, 2], [1, 1, 0], [-100, 0, 1]]
        count = 4  # counted ids at t < lengths[n]: (0,0) (0,2) (1,0) (1,1)
    else:
        fn, y = oracle.linear_head, _uniform(rng, T, B, K)
        count = sum(lengths) * K
    s = fn(V, c, features, y, lengths=lengths, reduction="sum")
    m = fn(V, c, features, y, lengths=lengths, reduction="mean")
    assert math.isclose(m[0], s[0] / count, rel_tol=1e-14)
    for got, want in zip(m[1:], s[1:]):
        assert all(abs(u - v / count) <= 1e-15 * (1 + abs(v)) for u, v in zip(_flat(got), _flat(want)))


@pytest.mark.parametrize("head", ["softmax", "linear"])
def test_per_sequence_features_are_one_step(head):
    rng = random.Random(21)
    B, F, K = 3, 2, 3
    V, c, features = _uniform(rng, K, F), _uniform(rng, K), _uniform(rng, B, F)
    if head == "softmax":
        fn, forward, y = oracle.softmax_head, oracle.softmax_head_forward, [2, -100, 0]
    else:
        fn, forward, y = oracle.linear_head, oracle.linear_head_forward, _uniform(rng, B, K)
    for reduction in ["sum", "mean"]:
        loss, d_features, dV, dc = fn(V, c, features, y, reduction=reduction)
        loss1, d_features1, dV1, dc1 = fn(V, c, [features], [y], reduction=reduction)
        assert (loss, [d_features], dV, dc) == (loss1, d_features1, dV1, dc1)
    assert [forward(V, c, features)] == forward(V, c, [features])


def test_linear_head_by_hand():
    # one feature, one output: ŷ = v f + c, L = (ŷ - y)²
    v, c0, f, y = 1.5, 0.25, -0.5, 2.0
    residual = v * f + c0 - y
    loss, d_features, dV, dc = oracle.linear_head([[v]], [c0], [[f]], [[y]])
    assert loss == residual * residual
    assert (d_features, dV, dc) == ([[2 * residual * v]], [[2 * residual * f]], [2 * residual])
    assert oracle.linear_head_forward([[v]], [c0], [[f]]) == [[v * f + c0]]


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        ({"num_layers": 0}, "num_layers"),
        ({"nonlinearity": "sigmoid"}, "nonlinearity"),
        ({"bidirectional": 1}, "bidirectional"),
        ({"drop": "W_l1_reverse"}, "W_l1_reverse"),
        ({"drop": "b_l1"}, "b_l1"),
        ({"h0": [[[0.0] * 3] * 3] * 3}, "h0"),
        ({"lengths": [0, 1, 2]}, "lengths"),
        ({"masks": []}, "masks"),
        ({"d_output": [[[0.0] * 3] * 3] * 4}, "d_output"),
        ({"d_h_n": [[[0.0] * 3] * 3] * 2}, "d_h_n"),
    ],
    ids=lambda v: str(v)[:30] if isinstance(v, str) else None,
)
def test_bad_layer_arguments_raise_value_error(change, match):
    _, params, x, kw = _small_stack(8)
    change = dict(change)
    if "drop" in change:
        dropped = change.pop("drop")
        params = {k: v for k, v in params.items() if k != dropped}
    kw = {**kw, **change}
    with pytest.raises((ValueError, TypeError), match=match):
        oracle.recurrent_backward(params, x, **kw)


def test_bad_head_arguments_raise_value_error():
    V, feats = [[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.1, 0.2]]
    with pytest.raises(ValueError, match="lengths"):
        oracle.softmax_head(V, None, feats, [0, 1], lengths=[1, 1])
    with pytest.raises(ValueError, match="y"):
        oracle.softmax_head(V, None, feats, [0, 1, 1])
    with pytest.raises(ValueError, match="target ids"):
        oracle.softmax_head(V, None, feats, [0, 2])
    with pytest.raises(ValueError, match="reduction"):
        oracle.linear_head(V, None, feats, [[0.0, 0.0], [0.0, 0.0]], reduction="avg")
    with pytest.raises(ValueError, match="y"):
        oracle.linear_head(V, None, feats, [[0.0], [0.0]])
    with pytest.raises(ValueError, match="features"):
        oracle.linear_head_forward(V, None, [[0.5, 0.5, 0.5]])


# --- an independent autodiff -----------------------------------------------------------------


def test_two_layer_bidirectional_relu_matches_torch():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    rng = random.Random(30)
    L, dirs, T, B, D, H = 2, 2, 5, 4, 3, 4
    lengths = [3, 5, 1, 4]  # unsorted
    params = _layer_params(rng, L, dirs, D, H, bias=True, lo=-0.5)
    x = _uniform(rng, T, B, D)
    h0 = _uniform(rng, L * dirs, B, H)
    d_output = _uniform(rng, T, B, dirs * H)  # non-zero on padded steps too
    d_h_n = _uniform(rng, L * dirs, B, H)
    kw = {"num_layers": L, "bidirectional": True, "nonlinearity": "relu", "h0": h0,
          "lengths": lengths}
    output, h_n = oracle.recurrent_forward(params, x, **kw)
    grads, dx, dh0 = oracle.recurrent_backward(params, x, d_output, d_h_n, **kw)

    rnn = torch.nn.RNN(D, H, num_layers=L, nonlinearity="relu", bidirectional=True,
                       dtype=torch.float64)
    f64 = torch.float64  # torch.tensor(list) would round to float32 otherwise
    with torch.no_grad():
        for k, suffix in itertools.product(range(L), ("", "_reverse")):
            for theirs, ours in [("weight_ih", "U"), ("weight_hh", "W"), ("bias_ih", "b")]:
                getattr(rnn, f"{theirs}_l{k}{suffix}").copy_(
                    torch.tensor(params[f"{ours}_l{k}{suffix}"], dtype=f64))
            getattr(rnn, f"bias_hh_l{k}{suffix}").zero_()
    X = torch.tensor(x, dtype=f64, requires_grad=True)
    H0 = torch.tensor(h0, dtype=f64, requires_grad=True)
    packed = pack_padded_sequence(X, torch.tensor(lengths), enforce_sorted=False)
    out_packed, HN = rnn(packed, H0)
    OUT, _ = pad_packed_sequence(out_packed, total_length=T)
    upstream = ((OUT * torch.tensor(d_output, dtype=f64)).sum()
                + (HN * torch.tensor(d_h_n, dtype=f64)).sum())
    names = [f"{w}_l{k}{s}" for k in range(L) for s in ("", "_reverse")
             for w in ("weight_ih", "weight_hh", "bias_ih")]
    got = torch.autograd.grad(upstream, [X, H0] + [getattr(rnn, n) for n in names])
    torch_names = {"weight_ih": "U", "weight_hh": "W", "bias_ih": "b"}
    pairs = [("output", output, OUT), ("h_n", h_n, HN), ("x", dx, got[0]), ("h0", dh0, got[1])]
    for name, g in zip(names, got[2:]):
        ours = torch_names[name.split("_l")[0]] + "_l" + name.split("_l")[1]
        pairs.append((ours, grads[ours], g))
    for name, ours, theirs in pairs:
        want = theirs.detach().reshape(-1).tolist()
        scale = max(abs(w) for w in want)
        err = max(abs(u - w) for u, w in zip(_flat(ours), want, strict=True))
        assert err <= 1e-12 * scale, f"{name}: max |oracle - torch| = {err:.3g} (scale {scale:.3g})"
