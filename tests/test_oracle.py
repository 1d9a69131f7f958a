"""The oracle against central finite differences (float64) and against itself.

The oracle (rnn_ext/oracle.py) is the specification the compiled model is
tested against, so it is checked here from first principles: every gradient
it returns must match (L(p + eps) - L(p - eps)) / (2 eps) entry by entry.
"""

import ast
import itertools
import math
import random
from pathlib import Path

import pytest

from rnn_ext import oracle

EPS = 1e-6  # central-difference step
RTOL = 1e-6  # relative to the largest entry of the gradient
ATOL = 1e-8  # rounding noise of a central difference is about 1e-16 |L| / EPS
RELU_MARGIN = 1e-3  # keep pre-activations this far from relu's kink


# --- cases ----------------------------------------------------------------------


def _uniform(rng, *shape, lo=-1.0, hi=1.0):
    if len(shape) == 1:
        return [rng.uniform(lo, hi) for _ in range(shape[0])]
    return [_uniform(rng, *shape[1:], lo=lo, hi=hi) for _ in range(shape[0])]


def _min_abs_preactivation(args):
    """Smallest |a_t| over the steps that run (relu's kink sits at a = 0)."""
    U, W, V, b, c, x, ids, h0, lengths = oracle._prepare(
        args["U"], args["W"], args["V"], args["b"], args["c"], args["x"],
        args["h0"], args["lengths"], args["nonlinearity"],
    )
    acts = oracle._rnn_forward(U, W, V, b, c, x, ids, h0, lengths, args["nonlinearity"])
    return min(
        abs(aj)
        for t, a_t in enumerate(acts["a"])
        for n, a_tn in enumerate(a_t)
        if t < lengths[n]
        for aj in a_tn
    )


def make_case(seed, smallest, nonlinearity, bias, inputs, targets, reduction, ragged, ignore):
    """Random problem with sizes in smallest..4 (B up to 3); returns (id, kwargs)."""
    rng = random.Random(seed)
    T, B = rng.randint(smallest, 4), rng.randint(smallest, 3)
    D, H, K = (rng.randint(smallest, 4) for _ in range(3))
    if ragged:
        T, B = max(T, 2), max(B, 2)
    ignore_index = rng.choice([-100, -1])
    for _ in range(100):  # for relu, redraw until no pre-activation sits near the kink
        args = {
            "U": _uniform(rng, H, D),
            "W": _uniform(rng, H, H),
            "V": _uniform(rng, K, H, lo=-2.0, hi=2.0),
            "b": _uniform(rng, H) if bias else None,
            "c": _uniform(rng, K) if bias else None,
            "h0": _uniform(rng, B, H, lo=-0.5, hi=0.5),
            "nonlinearity": nonlinearity,
            "reduction": reduction,
            "ignore_index": ignore_index,
        }
        if inputs == "ids":
            args["x"] = [[rng.randrange(D) for _ in range(B)] for _ in range(T)]
        else:
            args["x"] = _uniform(rng, T, B, D)
        if ragged:
            lengths = [rng.randint(1, T) for _ in range(B)]
            lengths[rng.randrange(B)] = T
            args["lengths"] = lengths
        else:
            args["lengths"] = None
        if targets == "ids":
            y = [[rng.randrange(K) for _ in range(B)] for _ in range(T)]
            if ignore:
                for t, n in itertools.product(range(T), range(B)):
                    if rng.random() < 0.3:
                        y[t][n] = ignore_index
                y[0][0] = rng.randrange(K)  # at least one target counts
            args["y"] = y
        else:
            # unnormalised rows: the general gradient ŷ Σy - y is what is checked
            args["y"] = _uniform(rng, T, B, K, lo=0.0, hi=rng.choice([1.0, 2.0]))
        if nonlinearity == "tanh" or _min_abs_preactivation(args) > RELU_MARGIN:
            break
    else:
        raise RuntimeError(f"no relu case away from the kink for seed {seed}")
    case_id = (
        f"{nonlinearity}-{'bias' if bias else 'nobias'}-x_{inputs}-y_{targets}-{reduction}"
        f"{'-ragged' if ragged else ''}{'-ignore' if ignore else ''}-T{T}B{B}D{D}H{H}K{K}"
    )
    return case_id, args


CASES = []
for i, (smallest, nonlinearity, bias, inputs, targets, reduction) in enumerate(
    itertools.product((1, 2), ("tanh", "relu"), (True, False), ("ids", "floats"),
                      ("ids", "rows"), ("sum", "mean"))
):
    ragged = i % 2 == (1 if smallest == 1 else 0)
    ignore = targets == "ids" and i % 4 in (0, 3)
    CASES.append(
        make_case(1000 + i, smallest, nonlinearity, bias, inputs, targets, reduction, ragged, ignore)
    )


# --- finite differences -------------------------------------------------------------


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


def numerical_gradient(args, name):
    """Central differences of oracle.loss with respect to args[name], flattened."""
    out = []
    for container, i in _slots(args[name]):
        saved = container[i]
        container[i] = saved + EPS
        up = oracle.loss(**args)
        container[i] = saved - EPS
        down = oracle.loss(**args)
        container[i] = saved
        out.append((up - down) / (2 * EPS))
    return out


def gradient_error(analytic, numeric):
    """(max abs difference, allowed difference, index of the worst entry)."""
    diffs = [abs(a - n) for a, n in zip(analytic, numeric, strict=True)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    scale = max(abs(a) for a in analytic)
    return diffs[worst], RTOL * scale + ATOL, worst


@pytest.mark.parametrize("args", [args for _, args in CASES], ids=[cid for cid, _ in CASES])
def test_gradients_match_finite_differences(args):
    _, grads = oracle.loss_and_grad(**args)
    names = ["U", "W", "V", "h0"]
    names += ["b", "c"] if args["b"] is not None else []
    names += ["x"] if not isinstance(args["x"][0][0], int) else []
    failures = []
    for name in names:
        analytic = _flat(grads[name])
        numeric = numerical_gradient(args, name)
        err, allowed, worst = gradient_error(analytic, numeric)
        if not err <= allowed:
            failures.append(
                f"d{name}: |analytic - numeric| = {err:.3g} > {allowed:.3g} at flat index "
                f"{worst} (analytic {analytic[worst]!r}, numeric {numeric[worst]!r})"
            )
    assert not failures, "\n".join(failures)


# --- semantics ----------------------------------------------------------------------------


def _params(seed, D=3, H=4, K=3, bias=True):
    rng = random.Random(seed)
    return {
        "U": _uniform(rng, H, D),
        "W": _uniform(rng, H, H),
        "V": _uniform(rng, K, H),
        "b": _uniform(rng, H) if bias else None,
        "c": _uniform(rng, K) if bias else None,
    }


def _close(a, b, tol=1e-12):
    fa, fb = _flat(a), _flat(b)
    return len(fa) == len(fb) and all(abs(u - v) <= tol * (1 + abs(v)) for u, v in zip(fa, fb))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_padded_steps_are_zero_and_h_last_is_last_real_step(bias):
    p = _params(1, bias=bias)
    rng = random.Random(2)
    T, B, lengths = 4, 3, [4, 1, 2]
    x = _uniform(rng, T, B, 3)
    h0 = _uniform(rng, B, 4)
    out = oracle.forward(**p, x=x, h0=h0, lengths=lengths)
    padded_probs = oracle._softmax(p["c"] if bias else [0.0] * 3)
    for n, length in enumerate(lengths):
        assert out["h_last"][n] == out["h"][length - 1][n]
        for t in range(length, T):
            assert out["h"][t][n] == [0.0] * 4
            assert out["probs"][t][n] == padded_probs
    if not bias:
        assert all(abs(q - 1 / 3) < 1e-15 for q in padded_probs)


@pytest.mark.parametrize("targets", ["ids", "rows"])
def test_ragged_batch_equals_sequences_run_one_by_one(targets):
    """Packed semantics: each sequence of a ragged batch behaves as if run alone."""
    p = _params(3)
    rng = random.Random(4)
    T, B, lengths = 4, 3, [2, 4, 1]
    x = [[rng.randrange(3) for _ in range(B)] for _ in range(T)]
    if targets == "ids":
        y = [[rng.randrange(3) for _ in range(B)] for _ in range(T)]
    else:
        y = _uniform(rng, T, B, 3, lo=0.0)
    h0 = _uniform(rng, B, 4)
    total, grads = oracle.loss_and_grad(**p, x=x, y=y, h0=h0, lengths=lengths)
    out = oracle.forward(**p, x=x, h0=h0, lengths=lengths)
    sum_loss, sum_grads = 0.0, {k: [0.0] * len(_flat(p[k])) for k in p}
    for n, length in enumerate(lengths):
        xs = [[x[t][n]] for t in range(length)]
        ys = [[y[t][n]] for t in range(length)]
        loss_n, g_n = oracle.loss_and_grad(**p, x=xs, y=ys, h0=[h0[n]])
        out_n = oracle.forward(**p, x=xs, h0=[h0[n]])
        assert [out["h"][t][n] for t in range(length)] == [h[0] for h in out_n["h"]]
        assert grads["h0"][n] == g_n["h0"][0]
        sum_loss += loss_n
        for k in p:
            sum_grads[k] = [s + g for s, g in zip(sum_grads[k], _flat(g_n[k]))]
    assert math.isclose(total, sum_loss, rel_tol=1e-13)
    for k in p:
        assert _close(grads[k], sum_grads[k]), k


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_all_targets_ignored_gives_zero_loss_and_zero_gradients(reduction):
    p = _params(5)
    rng = random.Random(6)
    x = _uniform(rng, 3, 2, 3)
    y = [[7, 7], [7, 7], [7, 7]]
    total, grads = oracle.loss_and_grad(**p, x=x, y=y, reduction=reduction, ignore_index=7)
    assert total == 0.0 and isinstance(total, float)
    for name in ["U", "W", "V", "b", "c", "h0", "x"]:
        assert all(g == 0.0 for g in _flat(grads[name])), name
    assert oracle.loss(**p, x=x, y=y, reduction=reduction, ignore_index=7) == 0.0
    # targets that count only in padded rows are not counted either
    y = [[0, 1], [7, 2], [7, 7]]
    total = oracle.loss(**p, x=x, y=y, lengths=[1, 1], reduction=reduction, ignore_index=7)
    first = oracle.loss(**p, x=x[:1], y=y[:1], reduction=reduction, ignore_index=7)
    assert math.isclose(total, first, rel_tol=1e-14)


@pytest.mark.parametrize("targets", ["ids", "rows"])
def test_mean_is_sum_divided_by_counted_rows(targets):
    p = _params(7)
    rng = random.Random(8)
    T, B, lengths = 3, 3, [3, 2, 1]
    x = [[rng.randrange(3) for _ in range(B)] for _ in range(T)]
    if targets == "ids":
        y = [[0, -100, 2], [1, 1, 0], [-100, 0, 1]]
        count = sum(1 for t in range(T) for n in range(B) if t < lengths[n] and y[t][n] != -100)
    else:
        y = _uniform(rng, T, B, 3, lo=0.0)
        count = sum(lengths)
    s, gs = oracle.loss_and_grad(**p, x=x, y=y, lengths=lengths, reduction="sum")
    m, gm = oracle.loss_and_grad(**p, x=x, y=y, lengths=lengths, reduction="mean")
    assert math.isclose(m, s / count, rel_tol=1e-14)
    for name in ["U", "W", "V", "b", "c", "h0"]:
        assert _close(gm[name], [g / count for g in _flat(gs[name])]), name


def test_ids_are_one_hot_columns():
    p = _params(9, D=4)
    rng = random.Random(10)
    ids = [[rng.randrange(4) for _ in range(2)] for _ in range(3)]
    onehot = [[[1.0 if d == i else 0.0 for d in range(4)] for i in row] for row in ids]
    y = [[rng.randrange(3) for _ in range(2)] for _ in range(3)]
    li, gi = oracle.loss_and_grad(**p, x=ids, y=y)
    lf, gf = oracle.loss_and_grad(**p, x=onehot, y=y)
    assert li == lf
    assert gi["x"] is None and gf["x"] is not None
    for name in ["U", "W", "V", "b", "c", "h0", "h_last"]:
        assert _close(gi[name], gf[name]), name
    assert oracle.forward(**p, x=ids) == oracle.forward(**p, x=onehot)


def test_class_ids_are_one_hot_rows():
    p = _params(11)
    rng = random.Random(12)
    x = _uniform(rng, 3, 2, 3)
    y = [[rng.randrange(3) for _ in range(2)] for _ in range(3)]
    rows = [[[1.0 if k == i else 0.0 for k in range(3)] for i in row] for row in y]
    for reduction in ["sum", "mean"]:
        li, gi = oracle.loss_and_grad(**p, x=x, y=y, reduction=reduction)
        lr, gr = oracle.loss_and_grad(**p, x=x, y=rows, reduction=reduction)
        assert math.isclose(li, lr, rel_tol=1e-15)
        for name in ["U", "W", "V", "b", "c", "h0", "x"]:
            assert _close(gi[name], gr[name]), (reduction, name)


def test_h0_none_means_zeros():
    p = _params(13)
    x, y = [[0, 1], [2, 2]], [[1, 0], [2, 1]]
    zeros = [[0.0] * 4, [0.0] * 4]
    assert oracle.forward(**p, x=x) == oracle.forward(**p, x=x, h0=zeros)
    assert oracle.loss_and_grad(**p, x=x, y=y) == oracle.loss_and_grad(**p, x=x, y=y, h0=zeros)


def test_loss_and_grad_V_agree_with_loss_and_grad():
    p = _params(14)
    rng = random.Random(15)
    x = _uniform(rng, 4, 3, 3)
    y = [[rng.randrange(3) for _ in range(3)] for _ in range(4)]
    kw = {"x": x, "y": y, "lengths": [4, 2, 3], "reduction": "mean"}
    total, grads = oracle.loss_and_grad(**p, **kw)
    assert oracle.loss(**p, **kw) == total
    assert oracle.grad_V(**p, **kw) == (total, grads["V"], grads["c"])
    out = oracle.forward(**p, x=x, lengths=kw["lengths"])
    assert grads["h_last"] == out["h_last"]


def test_no_bias_gives_no_bias_gradients():
    p = _params(16, bias=False)
    total, grads = oracle.loss_and_grad(**p, x=[[0]], y=[[1]])
    assert grads["b"] is None and grads["c"] is None
    assert oracle.grad_V(**p, x=[[0]], y=[[1]])[2] is None


def test_one_step_by_hand():
    """T = B = D = H = 1, K = 2: every quantity in closed form."""
    u, v = 0.5, 1.5
    h = math.tanh(u)  # eq. (1), x = e_0, h0 = 0
    p1 = 1 / (1 + math.exp(-2 * v * h))  # softmax of z = (v h, -v h)
    loss = -math.log(p1)  # eq. (3), y = 0
    dz = [p1 - 1, 1 - p1]
    total, g = oracle.loss_and_grad([[u]], [[0.3]], [[v], [-v]], None, None, [[0]], [[0]])
    assert math.isclose(total, loss, rel_tol=1e-15)
    assert _close(g["V"], [[dz[0] * h], [dz[1] * h]])  # eq. (4)
    delta = (1 - h * h) * (v * dz[0] - v * dz[1])  # eq. (5)
    assert _close(g["U"], [[delta]])  # eq. (6)
    assert _close(g["W"], [[0.0]])  # h_{-1} = 0
    assert _close(g["h0"], [[0.3 * delta]])  # eq. (7)


def test_relu_derivative_at_zero_is_zero():
    # a = 0 exactly everywhere: [a > 0] = 0, so nothing flows below the output layer
    zeros = [[0.0, 0.0], [0.0, 0.0]]
    total, g = oracle.loss_and_grad(
        zeros, zeros, [[1.0, -1.0], [0.5, 2.0]], None, [0.1, 0.2], [[0, 1]], [[1, 0]],
        nonlinearity="relu",
    )
    assert _flat(g["U"]) == [0.0] * 4 and _flat(g["h0"]) == [0.0] * 4


def test_numpy_arrays_are_accepted():
    np = pytest.importorskip("numpy")
    p = _params(17)
    x, y = [[0, 1], [2, 2]], [[1, 0], [2, 1]]
    pa = {k: np.array(v) for k, v in p.items()}
    assert oracle.loss_and_grad(**pa, x=np.array(x), y=np.array(y)) == oracle.loss_and_grad(
        **p, x=x, y=y
    )


@pytest.mark.parametrize(
    "change, match",
    [
        ({"nonlinearity": "sigmoid"}, "nonlinearity"),
        ({"reduction": "avg"}, "reduction"),
        ({"y": [[3, 0]]}, "target ids"),
        ({"y": [[-1, 0]]}, "target ids"),
        ({"x": [[3, 0]]}, "input ids"),
        ({"lengths": [0, 1]}, "lengths"),
        ({"lengths": [2, 1]}, "lengths"),
        ({"lengths": [1]}, "lengths"),
        ({"h0": [[0.0] * 4]}, "h0"),
        ({"b": [0.0] * 3}, "b"),
        ({"y": [[0, 1], [0, 1]]}, "y"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_bad_arguments_raise_value_error(change, match):
    kw = {**_params(18), "x": [[0, 1]], "y": [[0, 1]], **change}
    with pytest.raises(ValueError, match=match):
        oracle.loss_and_grad(**kw)


def test_oracle_uses_the_standard_library_only():
    tree = ast.parse(Path(oracle.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or ".").split(".")[0])
    assert imported <= {"math", "operator"}, imported
