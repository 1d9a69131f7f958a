"""Every bad input is refused before any kernel runs, with a message a user can act on.

Each case checks the exception type and that the message names both what was
expected and what was given.  The reference model has D=5, H=4, K=3 and the
reference batch T=4, B=2, so a message naming "(4, 2)" or "[0, 5)" is
naming this call's own numbers.
"""

import re

import numpy as np
import pytest

from rnn_ext import RNN

D, H, K = 5, 4, 3
T, B = 4, 2


def msg(*parts):
    """A regex matching the parts, in order, anywhere in the message."""
    return ".*".join(re.escape(p) for p in parts)


def model(**kw):
    kw.setdefault("seed", 0)
    kw.setdefault("dtype", np.float64)
    return RNN(D, H, K, **kw)


def good():
    return {
        "x": np.zeros((T, B), dtype=np.int64),
        "y": np.zeros((T, B), dtype=np.int64),
        "h0": None,
        "lengths": None,
    }


def with_(**changes):
    kw = good()
    kw.update(changes)
    return kw


def full(shape, value, dtype=np.float64):
    return np.full(shape, value, dtype=dtype)


def call_all(m, kw, *, forward=True, **extra):
    """Every pass that takes these arguments, each expected to raise the same way."""
    calls = [lambda: m.loss(**kw, **extra),
             lambda: m.grad_V(**kw, **extra),
             lambda: m.loss_and_grad(**kw, **extra)]
    if forward and not extra:
        fkw = {k: v for k, v in kw.items() if k != "y"}
        calls.append(lambda: m.forward(**fkw))
    return calls


def check(calls, exc, match):
    for call in calls:
        with pytest.raises(exc, match=match):
            call()


# --- x ---------------------------------------------------------------------------

X_CASES = [
    pytest.param(np.array(3), ValueError, msg("(T, B) or unbatched (T,)", "got shape ()"), id="x-scalar"),
    pytest.param(np.zeros((T, B, 1), dtype=int), ValueError, msg("int ids must be (T, B) or unbatched (T,)", "got shape (4, 2, 1)"), id="x-ids-3d"),
    pytest.param(np.zeros(T), ValueError, msg("(T, B, D) or unbatched (T, D)", "got shape (4,)"), id="x-floats-1d"),
    pytest.param(np.zeros((T, B, 1, D)), ValueError, msg("(T, B, D) or unbatched (T, D)", "got shape (4, 2, 1, 5)"), id="x-floats-4d"),
    pytest.param(np.zeros((T, B, 3)), ValueError, msg("input_size=5", "got shape (4, 2, 3)"), id="x-floats-wrong-D"),
    pytest.param(np.zeros((T, D + 1)), ValueError, msg("input_size=5", "got shape (4, 6)"), id="x-unbatched-wrong-D"),
    pytest.param(np.array([[0, 1], [-1, 2], [0, 0], [1, 1]]), ValueError, msg("[0, 5)", "got values in [-1, 2]"), id="x-id-negative"),
    pytest.param(np.array([[0, 1], [5, 2], [0, 0], [1, 1]]), ValueError, msg("[0, 5)", "got values in [0, 5]"), id="x-id-equal-D"),
    pytest.param(np.array([0, 1, 99]), ValueError, msg("[0, 5)", "got values in [0, 99]"), id="x-id-too-large-unbatched"),
    pytest.param(np.array([[2**40, 0]] * T), ValueError, msg("[0, 5)", str(2**40)), id="x-id-huge"),
    pytest.param(full((T, B, D), np.nan), ValueError, msg("x must be finite", "NaN or infinity"), id="x-nan"),
    pytest.param(full((T, B, D), -np.inf), ValueError, msg("x must be finite", "NaN or infinity"), id="x-inf"),
    pytest.param(np.zeros((0, B), dtype=int), ValueError, msg("at least one time step and one sequence", "T=0, B=2"), id="x-ids-T0"),
    pytest.param(np.zeros((T, 0), dtype=int), ValueError, msg("at least one time step and one sequence", "T=4, B=0"), id="x-ids-B0"),
    pytest.param(np.zeros((0, B, D)), ValueError, msg("at least one time step and one sequence", "T=0, B=2"), id="x-floats-T0"),
    pytest.param(np.zeros((T, 0, D)), ValueError, msg("at least one time step and one sequence", "T=4, B=0"), id="x-floats-B0"),
    pytest.param(np.zeros(0, dtype=int), ValueError, msg("at least one time step", "T=0"), id="x-unbatched-T0"),
    pytest.param(np.zeros((T, B), dtype=complex), TypeError, msg("x must be real", "complex"), id="x-complex"),
    pytest.param(np.zeros((T, B), dtype=bool), TypeError, msg("integers or floats", "booleans"), id="x-bool"),
    pytest.param(np.zeros((T, B), dtype=object), TypeError, msg("numeric", "object"), id="x-object"),
    pytest.param(np.zeros((T, B), dtype="datetime64[s]"), TypeError, msg("numeric", "datetime64"), id="x-datetime"),
    pytest.param("hello", TypeError, msg("x must be a numeric array", "str 'hello'"), id="x-string"),
    pytest.param(b"hello", TypeError, msg("x must be a numeric array", "bytes"), id="x-bytes"),
    pytest.param(np.array(["a", "b", "c", "d"]), TypeError, msg("numeric", "<U1"), id="x-array-of-strings"),
    pytest.param(None, TypeError, msg("x must be a numeric array", "got None"), id="x-None"),
    pytest.param([[0, 1], [2], [3, 4], [0, 1]], ValueError, msg("rectangular", "list"), id="x-ragged-list"),
]


@pytest.mark.parametrize("x, exc, match", X_CASES)
def test_bad_x(x, exc, match):
    # x is checked before anything else, so the good y does not get in the way
    check(call_all(model(), with_(x=x)), exc, match)


def test_bad_x_batch_first_names_batch_first_layout():
    m = model(batch_first=True)
    check(call_all(m, with_(x=np.zeros((B, T, 1), dtype=int), y=np.zeros((B, T), dtype=int))),
          ValueError, msg("(B, T) or unbatched (T,)", "got shape (2, 4, 1)"))
    check(call_all(m, with_(x=np.zeros((B, 0), dtype=int), y=np.zeros((B, 0), dtype=int))),
          ValueError, msg("at least one time step", "T=0, B=2"))


def test_float64_x_beyond_float32_range():
    """Finite float64 values that overflow float32 would reach the kernel as inf."""
    m = model(dtype=np.float32)
    x = full((T, B, D), 1e39)
    check(call_all(m, with_(x=x)), ValueError, r"x\b.*(finite|float32|range)")


# --- y ---------------------------------------------------------------------------

Y_CASES = [
    pytest.param(None, TypeError, msg("y (the targets) is required", "got None"), id="y-None"),
    pytest.param(np.zeros((T, B + 1), dtype=int), ValueError, msg("shape (4, 2) to match x", "got (4, 3)"), id="y-ids-wrong-B"),
    pytest.param(np.zeros((T + 1, B), dtype=int), ValueError, msg("shape (4, 2) to match x", "got (5, 2)"), id="y-ids-wrong-T"),
    pytest.param(np.zeros(T, dtype=int), ValueError, msg("shape (4, 2) to match x", "got (4,)"), id="y-ids-1d-for-batched-x"),
    pytest.param(np.zeros((T, B, 1), dtype=int), ValueError, msg("shape (4, 2) to match x", "got (4, 2, 1)"), id="y-ids-3d"),
    pytest.param(full((T, B), 3, int), ValueError, msg("[0, 3) (output_size)", "got 3"), id="y-id-equal-K"),
    pytest.param(full((T, B), -1, int), ValueError, msg("[0, 3)", "ignore_index=-100", "got -1"), id="y-id-negative"),
    pytest.param(full((T, B), 200, np.uint8), ValueError, msg("[0, 3)", "got 200"), id="y-id-uint8-too-large"),
    pytest.param(np.zeros((T, B, K + 1)), ValueError, msg("target rows must have shape (4, 2, 3)", "got (4, 2, 4)"), id="y-soft-wrong-width"),
    pytest.param(np.zeros((T + 1, B, K)), ValueError, msg("target rows must have shape (4, 2, 3)", "got (5, 2, 3)"), id="y-soft-wrong-T"),
    pytest.param(np.zeros((T, B)), ValueError, msg("target rows must have shape (4, 2, 3)", "got (4, 2)"), id="y-float-class-ids"),
    pytest.param(np.array([[[0.5, -0.1, 0.6]] * B] * T), ValueError, msg("non-negative", "got negative entries"), id="y-soft-negative"),
    pytest.param(full((T, B, K), np.nan), ValueError, msg("y must be finite", "NaN or infinity"), id="y-soft-nan"),
    pytest.param(full((T, B, K), np.inf), ValueError, msg("y must be finite", "NaN or infinity"), id="y-soft-inf"),
    pytest.param(np.zeros((T, B), dtype=complex), TypeError, msg("y must be real", "complex"), id="y-complex"),
    pytest.param(np.zeros((T, B), dtype=bool), TypeError, msg("integers or floats", "booleans"), id="y-bool"),
    pytest.param(np.zeros((T, B), dtype=object), TypeError, msg("numeric", "object"), id="y-object"),
    pytest.param("abcd", TypeError, msg("y must be a numeric array", "str 'abcd'"), id="y-string"),
    pytest.param([[0, 1], [2], [0, 1], [0, 1]], ValueError, msg("y must be a rectangular", "list"), id="y-ragged-list"),
]


@pytest.mark.parametrize("y, exc, match", Y_CASES)
def test_bad_y(y, exc, match):
    m = model()
    check(call_all(m, with_(y=y), forward=False), exc, match)


@pytest.mark.parametrize("kind", ["ids", "float"])
def test_bad_y_unbatched(kind):
    m = model()
    x = np.zeros(T, dtype=int) if kind == "ids" else np.zeros((T, D))
    check(call_all(m, with_(x=x, y=np.zeros((T, B), dtype=int)), forward=False),
          ValueError, msg("shape (4,) to match x", "got (4, 2)"))
    check(call_all(m, with_(x=x, y=np.zeros((T, K + 2))), forward=False),
          ValueError, msg("shape (4, 3)", "got (4, 5)"))


def test_bad_y_batch_first_names_batch_first_shape():
    m = model(batch_first=True)
    x = np.zeros((B, T), dtype=int)
    check(call_all(m, with_(x=x, y=np.zeros((T, B), dtype=int)), forward=False),
          ValueError, msg("shape (2, 4) to match x", "got (4, 2)"))


def test_soft_targets_beyond_float32_range():
    m = model(dtype=np.float32)
    check(call_all(m, with_(y=full((T, B, K), 1e39)), forward=False),
          ValueError, r"y\b.*(finite|float32|range)")


# --- h0 ---------------------------------------------------------------------------

H0_CASES = [
    pytest.param(np.zeros(H), ValueError, msg("h0 must have shape (2, 4)", "got (4,)"), id="h0-unbatched-for-batched-x"),
    pytest.param(np.zeros((B, H + 1)), ValueError, msg("h0 must have shape (2, 4)", "got (2, 5)"), id="h0-wrong-H"),
    pytest.param(np.zeros((B + 1, H)), ValueError, msg("h0 must have shape (2, 4)", "got (3, 4)"), id="h0-wrong-B"),
    pytest.param(np.zeros((2, B, H)), ValueError, msg("h0 must have shape (2, 4)", "got (2, 2, 4)"), id="h0-3d"),
    pytest.param(np.zeros((H, B)), ValueError, msg("h0 must have shape (2, 4)", "got (4, 2)"), id="h0-transposed"),
    pytest.param(full((B, H), np.nan), ValueError, msg("h0 must be finite", "NaN or infinity"), id="h0-nan"),
    pytest.param(full((B, H), np.inf), ValueError, msg("h0 must be finite", "NaN or infinity"), id="h0-inf"),
    pytest.param(np.zeros((B, H), dtype=complex), TypeError, msg("h0 must be real", "complex"), id="h0-complex"),
    pytest.param(np.zeros((B, H), dtype=bool), TypeError, msg("h0 must hold integers or floats", "booleans"), id="h0-bool"),
    pytest.param("zeros", TypeError, msg("h0 must be a numeric array", "str 'zeros'"), id="h0-string"),
    pytest.param([[0.0] * H, [0.0]], ValueError, msg("h0 must be a rectangular", "list"), id="h0-ragged-list"),
]


@pytest.mark.parametrize("h0, exc, match", H0_CASES)
def test_bad_h0(h0, exc, match):
    check(call_all(model(), with_(h0=h0)), exc, match)


def test_bad_h0_unbatched():
    m = model()
    kw = with_(x=np.zeros(T, dtype=int), y=np.zeros(T, dtype=int))
    check(call_all(m, {**kw, "h0": np.zeros((2, H))}), ValueError, msg("h0 must have shape (4,)", "got (2, 4)"))
    check(call_all(m, {**kw, "h0": np.zeros(H + 1)}), ValueError, msg("h0 must have shape (4,)", "got (5,)"))


def test_h0_beyond_float32_range():
    m = model(dtype=np.float32)
    check(call_all(m, with_(h0=full((B, H), 1e39))), ValueError, r"h0\b.*(finite|float32|range)")


# --- lengths ----------------------------------------------------------------------

LENGTHS_CASES = [
    pytest.param(np.array([4, 4, 4]), ValueError, msg("lengths must have shape (B,) = (2,)", "got (3,)"), id="lengths-too-long"),
    pytest.param(np.array([4]), ValueError, msg("(B,) = (2,)", "got (1,)"), id="lengths-too-short"),
    pytest.param(np.array([[4], [4]]), ValueError, msg("(B,) = (2,)", "got (2, 1)"), id="lengths-2d"),
    pytest.param(3, ValueError, msg("(B,) = (2,)", "got ()"), id="lengths-scalar"),
    pytest.param(np.array([0, 2]), ValueError, msg("[1, T] = [1, 4]", "got values in [0, 2]"), id="lengths-zero"),
    pytest.param(np.array([3, -1]), ValueError, msg("[1, T] = [1, 4]", "got values in [-1, 3]"), id="lengths-negative"),
    pytest.param(np.array([5, 2]), ValueError, msg("[1, T] = [1, 4]", "got values in [2, 5]"), id="lengths-greater-than-T"),
    pytest.param(np.array([2.0, 3.0]), TypeError, msg("lengths must be integers", "float64"), id="lengths-float"),
    pytest.param([2.5, 3], TypeError, msg("lengths must be integers", "float64"), id="lengths-float-list"),
    pytest.param(np.array([True, True]), TypeError, msg("lengths", "booleans"), id="lengths-bool"),
    pytest.param(np.array([2, 3], dtype=complex), TypeError, msg("lengths must be real", "complex"), id="lengths-complex"),
    pytest.param("23", TypeError, msg("lengths must be a numeric array", "str '23'"), id="lengths-string"),
]


@pytest.mark.parametrize("lengths, exc, match", LENGTHS_CASES)
def test_bad_lengths(lengths, exc, match):
    check(call_all(model(), with_(lengths=lengths)), exc, match)


def test_lengths_with_unbatched_x():
    kw = with_(x=np.zeros(T, dtype=int), y=np.zeros(T, dtype=int), lengths=np.array([2]))
    check(call_all(model(), kw), ValueError, msg("lengths needs batched input", "unbatched"))


# --- reduction, ignore_index ----------------------------------------------------------


@pytest.mark.parametrize("reduction", ["avg", "SUM", "", None, "none"],
                         ids=["avg", "SUM-uppercase", "empty", "None", "none"])
def test_bad_reduction(reduction):
    check(call_all(model(), good(), reduction=reduction), ValueError,
          msg("reduction must be one of ('sum', 'mean')", f"got {reduction!r}"))


@pytest.mark.parametrize("ignore_index, kind", [(1.5, "float"), (True, "bool"), ("-100", "str"), (None, "NoneType")],
                         ids=["float", "bool", "string", "None"])
def test_bad_ignore_index_type(ignore_index, kind):
    check(call_all(model(), good(), ignore_index=ignore_index), TypeError,
          msg("ignore_index must be an int", f"got {kind}"))


def test_ignore_index_out_of_int64_range():
    """An int that fits no index type is a bad value, not a crash in the kernel call."""
    check(call_all(model(), good(), ignore_index=2**70), ValueError, msg("ignore_index", str(2**70)))


# --- the constructor -----------------------------------------------------------------

SIZE_CASES = [
    pytest.param(0, ValueError, "got 0", id="zero"),
    pytest.param(-3, ValueError, "got -3", id="negative"),
    pytest.param(2.0, TypeError, "got float 2.0", id="float"),
    pytest.param(True, TypeError, "got bool True", id="bool"),
    pytest.param("3", TypeError, "got str '3'", id="string"),
    pytest.param(None, TypeError, "got NoneType None", id="None"),
    pytest.param(np.float64(4), TypeError, "got float64", id="numpy-float"),
]


@pytest.mark.parametrize("which", ["input_size", "hidden_size", "output_size"])
@pytest.mark.parametrize("value, exc, given", SIZE_CASES)
def test_bad_size(which, value, exc, given):
    sizes = {"input_size": D, "hidden_size": H, "output_size": K, which: value}
    with pytest.raises(exc, match=msg(f"{which} must be a positive int", given)):
        RNN(**sizes)


@pytest.mark.parametrize("dtype, given", [
    pytest.param(np.float16, "float16", id="float16"),
    pytest.param(np.int64, "int64", id="int64"),
    pytest.param(int, "int64", id="python-int"),
    pytest.param("int32", "int32", id="int32-string"),
    pytest.param(np.complex128, "complex128", id="complex128"),
    pytest.param(bool, "bool", id="bool"),
    pytest.param(object, "object", id="object"),
    pytest.param("nonsense", "nonsense", id="not-a-dtype"),
])
def test_bad_dtype(dtype, given):
    with pytest.raises(TypeError, match=msg("dtype must be float32 or float64", given)):
        RNN(D, H, K, dtype=dtype)


@pytest.mark.parametrize("nonlinearity", ["sigmoid", "Tanh", "", None],
                         ids=["sigmoid", "Tanh-capitalised", "empty", "None"])
def test_bad_nonlinearity(nonlinearity):
    with pytest.raises(ValueError, match=msg("nonlinearity must be one of ('tanh', 'relu')", f"got {nonlinearity!r}")):
        RNN(D, H, K, nonlinearity=nonlinearity)


@pytest.mark.parametrize("flag", ["bias", "batch_first"])
@pytest.mark.parametrize("value, given", [(1, "int"), ("yes", "str"), (None, "NoneType")],
                         ids=["int", "string", "None"])
def test_bad_bool_flag(flag, value, given):
    with pytest.raises(TypeError, match=msg(f"{flag} must be a bool", f"got {given}")):
        RNN(D, H, K, **{flag: value})


# --- assigned parameters ---------------------------------------------------------------

SHAPES = {"U": (H, D), "W": (H, H), "V": (K, H), "b": (H,), "c": (K,)}


def _wrong_shape(shape):
    """The transpose where that differs, else one axis too many."""
    return shape[::-1] if len(shape) == 2 and shape[0] != shape[1] else shape + (1,)


PARAM_CASES = [
    *[pytest.param(name, np.zeros(_wrong_shape(shape)), ValueError,
                   msg(f"{name} must have shape {shape}", f"got {_wrong_shape(shape)}"),
                   id=f"{name}-wrong-shape")
      for name, shape in SHAPES.items()],
    pytest.param("W", np.zeros(H), ValueError, msg("W must have shape (4, 4)", "got (4,)"), id="W-1d"),
    pytest.param("b", np.float64(0.0), ValueError, msg("b must have shape (4,)", "got ()"), id="b-scalar"),
    pytest.param("U", full((H, D), np.nan), ValueError, msg("U must be finite", "NaN or infinity"), id="U-nan"),
    pytest.param("W", full((H, H), np.inf), ValueError, msg("W must be finite", "NaN or infinity"), id="W-inf"),
    pytest.param("V", full((K, H), -np.inf), ValueError, msg("V must be finite", "NaN or infinity"), id="V-minus-inf"),
    pytest.param("b", full(H, np.nan), ValueError, msg("b must be finite"), id="b-nan"),
    pytest.param("c", full(K, np.nan), ValueError, msg("c must be finite"), id="c-nan"),
    pytest.param("b", None, ValueError, msg("bias=True", "b must be an array of shape (4,)", "got None"), id="b-None-with-bias"),
    pytest.param("U", None, TypeError, msg("U must be a numeric array", "got None"), id="U-None"),
    pytest.param("U", np.zeros((H, D), dtype=complex), TypeError, msg("U must be real", "complex"), id="U-complex"),
    pytest.param("W", np.zeros((H, H), dtype=bool), TypeError, msg("W must hold integers or floats", "booleans"), id="W-bool"),
    pytest.param("V", "weights", TypeError, msg("V must be a numeric array", "str 'weights'"), id="V-string"),
    pytest.param("V", [[0.0] * H, [0.0]], ValueError, msg("V must be a rectangular", "list"), id="V-ragged-list"),
]


@pytest.mark.parametrize("name, value, exc, match", PARAM_CASES)
def test_bad_parameter_assignment(name, value, exc, match):
    m = model()
    before = getattr(m, name)
    keep = before.copy()
    with pytest.raises(exc, match=match):
        setattr(m, name, value)
    # a refused assignment leaves the model as it was
    assert getattr(m, name) is before
    np.testing.assert_array_equal(before, keep)


@pytest.mark.parametrize("name", ["b", "c"])
def test_bias_false_rejects_bias_arrays(name):
    m = model(bias=False)
    with pytest.raises(ValueError, match=msg("bias=False", f"{name} must stay None")):
        setattr(m, name, np.zeros(SHAPES[name]))
    assert getattr(m, name) is None
    setattr(m, name, None)  # None is what it holds already: allowed
    assert getattr(m, name) is None


@pytest.mark.parametrize("name", ["U", "W", "V", "b", "c"])
def test_parameter_beyond_float32_range(name):
    m = model(dtype=np.float32)
    with pytest.raises(ValueError, match=rf"{name}\b.*(finite|float32|range)"):
        setattr(m, name, full(SHAPES[name], 1e39))


@pytest.mark.parametrize("seed, exc, match", [
    pytest.param("abc", TypeError, msg("seed must be a non-negative int or None", "str 'abc'"), id="str"),
    pytest.param(1.5, TypeError, msg("seed must be a non-negative int or None", "float 1.5"), id="float"),
    pytest.param(True, TypeError, msg("seed must be a non-negative int or None", "bool"), id="bool"),
    pytest.param(-1, ValueError, msg("seed must be a non-negative int or None", "-1"), id="negative"),
])
def test_bad_seed(seed, exc, match):
    with pytest.raises(exc, match=match):
        RNN(3, 4, 5, seed=seed)


def test_dtype_none_is_refused_not_float64():
    with pytest.raises(TypeError, match=msg("dtype must be float32 or float64", "None")):
        RNN(3, 4, 5, dtype=None)


def test_numpy_bools_are_accepted_as_flags():
    m = RNN(3, 4, 5, bias=np.False_, batch_first=np.True_)
    assert m.bias is False and m.batch_first is True and m.b is None


def test_boolean_lengths_name_integers():
    m = RNN(3, 4, 5)
    with pytest.raises(TypeError, match="lengths must be integers, got booleans"):
        m.forward(np.zeros((4, 2), dtype=int), lengths=[True, True])


def test_float_y_shaped_like_ids_gets_a_hint():
    m = RNN(3, 4, 5)
    with pytest.raises(ValueError, match="pass class ids as an int array"):
        m.loss(np.zeros((4, 2), dtype=int), np.zeros((4, 2)))
