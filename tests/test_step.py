"""model.step / layer.step: one time step equals the forward pass's step."""

import numpy as np
import pytest

import rnn_ext
from rnn_ext import _kernels

TOL = {np.float32: 2e-6, np.float64: 1e-14}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("kind", ["ids", "floats"])
@pytest.mark.parametrize("B", [1, 3])
def test_steps_equal_forward(dtype, L, kind, B):
    rng = np.random.default_rng(L + B)
    m = rnn_ext.RNN(5, 6, 4, num_layers=L, nonlinearity="relu" if L == 2 else "tanh",
                    dtype=dtype, seed=1)
    T = 7
    x = rng.integers(0, 5, size=(T, B)) if kind == "ids" else rng.normal(size=(T, B, 5))
    h0 = rng.normal(size=(L, B, 6))
    f = m.forward(x, h0)
    h = h0
    for t in range(T):
        h, p = m.step(x[t], h)
        np.testing.assert_allclose(p, f.probs[t], rtol=TOL[dtype], atol=TOL[dtype])
    assert h.dtype == dtype and p.dtype == dtype
    np.testing.assert_allclose(h, f.h_n, rtol=TOL[dtype], atol=TOL[dtype])
    # the layer alone gives the same states
    hl = h0
    for t in range(T):
        hl = m.layer.step(x[t], hl)
    np.testing.assert_allclose(hl, f.h_n, rtol=TOL[dtype], atol=TOL[dtype])


def test_unbatched_and_defaults():
    m = rnn_ext.RNN(5, 6, 4, seed=0, dtype=np.float64)
    h, p = m.step(3)
    assert h.shape == (1, 6) and p.shape == (4,)
    f = m.forward(np.array([3]))
    np.testing.assert_allclose(p, f.probs[0], rtol=1e-14)
    h2, _ = m.step(np.int64(2), h[0])          # (H,) accepted with one layer
    h3, _ = m.step(2, h)
    np.testing.assert_array_equal(h2, h3)
    hx, _ = m.step(np.zeros(5), None)         # float input
    assert hx.shape == (1, 6)


def test_step_bad_input():
    m = rnn_ext.RNN(5, 6, 4, num_layers=2, seed=0)
    with pytest.raises(ValueError, match=r"x_t id must be in \[0, 5\)"):
        m.step(5)
    with pytest.raises(ValueError, match=r"x_t ids must be in \[0, 5\)"):
        m.step(np.array([0, -1]))
    with pytest.raises(ValueError, match=r"h must have shape \(2, 1, 6\)"):
        m.step(np.array([1]), np.zeros((1, 6)))
    with pytest.raises(ValueError, match=r"x_t of floats must be \(5,\) or \(B, 5\)"):
        m.step(np.zeros(4))
    with pytest.raises(ValueError, match="h must be finite"):
        m.step(1, np.full((2, 6), np.nan))
    with pytest.raises(TypeError, match="x_t must be a numeric array"):
        m.step("a")
    bi = rnn_ext.RNN(5, 6, 4, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        bi.step(1)
    h = np.zeros((2, 6), np.float32)
    keep = h.copy()
    m.step(1, h)
    np.testing.assert_array_equal(h, keep)   # the carried state is not modified


@pytest.mark.parametrize("L", [1, 2])
def test_every_spelling_of_an_id_and_a_state_gives_the_same_step(L):
    m = rnn_ext.RNN(5, 6, 4, num_layers=L, seed=3)
    h = np.random.default_rng(0).normal(size=(L, 6)).astype(np.float32)
    want_h, want_p = m.step(np.array([2]), h[:, None])
    spellings = [(2, h), (np.int64(2), h), (np.uint8(2), h), (np.array(2), h),
                 (2, h.astype(np.float64)), (2, np.asfortranarray(h)), (2, h.tolist())]
    if L == 1:
        spellings.append((2, h[0]))
    for x_t, state in spellings:
        h1, p1 = m.step(x_t, state)
        assert h1.shape == (L, 6) and p1.shape == (4,) and h1.dtype == p1.dtype == np.float32
        np.testing.assert_array_equal(h1, want_h[:, 0])
        np.testing.assert_array_equal(p1, want_p[0])
        np.testing.assert_array_equal(m.layer.step(x_t, state), want_h[:, 0])
    # what comes back is new memory, never a view of the state passed in
    h1, p1 = m.step(2, h)
    assert h1.flags.owndata and p1.flags.owndata and h1.flags.writeable


def test_step_refuses_bad_ids_of_every_kind():
    m = rnn_ext.RNN(5, 6, 4, seed=0)
    for bad in (5, -1, np.int64(7), 10**30):
        with pytest.raises(ValueError, match=r"x_t id must be in \[0, 5\)"):
            m.step(bad)
    with pytest.raises(TypeError):
        m.step(True)
    with pytest.raises(ValueError, match=r"h must have shape \(1, 6\)"):
        m.step(1, np.zeros((1, 1, 6), np.float32))


@pytest.mark.parametrize("L", [1, 2])
def test_the_bound_step_equals_the_general_one_and_sees_assignments(L):
    """model.step(int, state) takes the bound short path (FastPass.step); a state
    spelled another way takes the general one.  Both give the same bits, before
    and after the parameters are assigned, and bad ids are refused the same way."""
    m = rnn_ext.RNN(5, 6, 4, num_layers=L, seed=4)
    h = np.random.default_rng(1).normal(size=(L, 6)).astype(np.float32)
    for assign in (False, True):
        if assign:
            m.W = np.random.default_rng(2).normal(size=(6, 6))
            m.c = np.arange(4.0)
        h1, p1 = m.step(3, h)                       # the bound path
        h2, p2 = m.step(3, h.tolist())              # the general path
        np.testing.assert_array_equal(h1, h2)
        np.testing.assert_array_equal(p1, p2)
        # the layer's own bound path (StepPass without an output layer)
        hl = m.layer.step(3, h)
        assert type(hl) is np.ndarray and hl.shape == (L, 6)
        np.testing.assert_array_equal(hl, h1)
        np.testing.assert_array_equal(hl, m.layer.step(3, h.tolist()))
        f = m.forward(np.array([[3]]), h[:, None])
        np.testing.assert_allclose(p1, f.probs[0, 0], rtol=2e-6, atol=2e-6)
    for bad in (5, -1, 10**30):
        with pytest.raises(ValueError, match=r"x_t id must be in \[0, 5\)"):
            m.step(bad, h)
    with pytest.raises(TypeError):
        m.step(True, h)
    with pytest.raises(ValueError, match="h must have shape"):
        m.step(1, np.zeros((L + 1, 6), np.float32))
    for bad in (5, -1, 10**30):
        with pytest.raises(ValueError, match=r"x_t id must be in \[0, 5\)"):
            m.layer.step(bad, h)
    with pytest.raises(ValueError, match="h must have shape"):
        m.layer.step(1, np.zeros((L + 1, 6), np.float32))


def test_a_layers_bound_step_follows_its_own_parameters():
    """A layer on its own binds its buffer for step; assigning into its views
    reaches the bound path, and a float64 layer takes the general one."""
    layer = rnn_ext.Recurrent(5, 6, num_layers=2, seed=5)
    h = np.random.default_rng(3).normal(size=(2, 6)).astype(np.float32)
    before = layer.step(1, h)
    layer.params["W_l1"][...] *= -1
    after = layer.step(1, h)
    np.testing.assert_array_equal(after, layer.step(1, h.tolist()))
    np.testing.assert_array_equal(after[0], before[0])   # layer 0 is unchanged
    assert not np.array_equal(after[1], before[1])
    f = layer.forward(np.array([[1]]), h[:, None])
    np.testing.assert_allclose(after, f.h_n[:, 0], rtol=2e-6, atol=2e-6)
    wide = rnn_ext.Recurrent(5, 6, dtype=np.float64, seed=5)
    assert wide.step(1, np.zeros((1, 6))).dtype == np.float64


@pytest.mark.parametrize("cls, doc", [(rnn_ext.RNN, "One time step: the next state and the output"),
                                      (rnn_ext.Recurrent, "One time step through every layer")])
def test_step_is_a_method_with_its_signature_and_docs(cls, doc):
    """step is compiled (src/_kernels.pyx) but reads as the class's own method:
    its name, signature and docstring, callable on the class or an instance."""
    import inspect

    assert cls.step.__name__ == "step" and cls.step.__qualname__ == f"{cls.__name__}.step"
    assert list(inspect.signature(cls.step).parameters) == ["self", "x_t", "h"]
    assert inspect.signature(cls.step).parameters["h"].default is None
    assert cls.step.__doc__.startswith(doc)
    piece = cls(5, 6, 4, seed=0) if cls is rnn_ext.RNN else cls(5, 6, seed=0)
    h = np.zeros((1, 6), np.float32)
    bound, via_class = piece.step(2, h), cls.step(piece, 2, h=h)
    if cls is rnn_ext.Recurrent:  # the states alone, not (states, probabilities)
        bound, via_class = (bound,), (via_class,)
    for a, b in zip(bound, via_class, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError):
        piece.step()


def test_step_pass_object_checks_what_it_binds():
    m = rnn_ext.RNN(5, 6, 4, num_layers=2, seed=0)
    flat, offs = m.layer.flat, m._offs
    V, c = m.head.params["V"], m.head.params["c"]
    _kernels.StepPass(flat, offs, 5, 6, V, c, False)
    _kernels.StepPass(flat, offs, 5, 6, None, None, False)
    for args in [(flat[:-1], offs, 5, 6, V, c), (flat, offs, 40, 6, V, c),
                 (flat, offs, 5, 6, np.ascontiguousarray(V[:, :5]), c), (flat, offs, 5, 6, V, c[:3]),
                 (flat, offs, 5, 6, None, c)]:
        with pytest.raises(ValueError, match="rnn_ext._kernels"):
            _kernels.StepPass(*args, False)


def test_step_pass_guards_its_buffers():
    """The compiled entry point trusts validated input, but a caller that bypassed
    the validation gets a ValueError, not a read out of bounds."""
    m = rnn_ext.RNN(5, 6, 4, num_layers=2, seed=0)
    flat, offs = m.layer.flat, m._offs
    V, c = m.head.params["V"], m.head.params["c"]
    h = np.zeros((2, 6), np.float32)

    def call(h=h, xf=None, xi=1, flat=flat, offs=offs, D=5, V=V, c=c, batched=False):
        return _kernels.step_pass(h, xf, xi, flat, offs, D, False, V, c, batched)

    h1, p1 = call()  # the well-formed call runs
    assert h1.shape == (2, 6) and p1.shape == (4,) and h1.dtype == p1.dtype == np.float32
    h1, p1 = call(h=np.zeros((2, 3, 6), np.float32), xi=np.array([0, 1, 4]), batched=True)
    assert h1.shape == (2, 3, 6) and p1.shape == (3, 4)
    assert call(V=None, c=None)[1] is None
    for kwargs in [dict(h=h.astype(np.float64)), dict(h=np.zeros((2, 7), np.float32)),
                   dict(h=np.zeros((12, 2), np.float32).T), dict(h=h.tolist()),
                   dict(xi=5), dict(xi=-1), dict(xi=None), dict(xi=np.int64(1)),
                   dict(xi=np.array([0, 9], dtype=np.intp), batched=True),
                   dict(xi=np.array([0, 1], dtype=np.intp)),  # B = 2 unbatched
                   dict(xi=np.array([0, 1], dtype=np.int32), batched=True),
                   dict(xf=np.zeros((1, 5)), xi=None), dict(flat=flat[:-1]),
                   dict(flat=flat.astype(np.float64)), dict(offs=offs[:1]),
                   dict(offs=offs.astype(np.int32)), dict(D=40), dict(V=V[:, :5]),
                   dict(V=np.asfortranarray(V)), dict(c=c[:3])]:
        with pytest.raises(ValueError, match="rnn_ext._kernels"):
            call(**kwargs)
