"""rnn_ext.torch.RNN against torch.nn.RNN: a drop-in whose passes run rnn_ext's kernels.

The reference is torch.nn.RNN holding the same state dict: every output,
h_n and gradient (parameters, input, h0) must agree to rounding, and
torch.autograd.gradcheck holds the autograd.Function to finite differences
in float64.  Ragged batches go in as PackedSequences with unsorted lengths.
"""

import copy
import gc
import io
import itertools
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import rnn_ext.recurrent  # noqa: E402
from rnn_ext._results import RecurrentForward  # noqa: E402
from rnn_ext.torch import RNN  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The cases are small: PyTorch's intra-op threads only contend for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# max |got - want| / max |want| per tensor
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def rel_diff(got, want):
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"dtype {got.dtype} != {want.dtype}"
    if want.numel() == 0:
        return 0.0
    got, want = got.detach().double(), want.detach().double()
    scale = want.abs().max().item()
    diff = (got - want).abs().max().item()
    return diff / scale if scale > 0 else diff


def pair(dtype=torch.float64, seed=0, **config):
    """(nn.RNN, rnn_ext.torch.RNN) of one configuration holding the same state dict."""
    torch.manual_seed(seed)
    ref = torch.nn.RNN(dtype=dtype, **config)
    ours = RNN(dtype=dtype, **config)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def config(num_layers, bidirectional, nonlinearity, bias, batch_first, D=3, H=4, dropout=0.0):
    return dict(input_size=D, hidden_size=H, num_layers=num_layers, nonlinearity=nonlinearity,
                bias=bias, batch_first=batch_first, bidirectional=bidirectional, dropout=dropout)


def inputs(module, T, B, dtype, with_h0, lengths=None, seed=1):
    """x in the module's layout (padded when lengths are given) and h0 (or None)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, T) if module.batch_first else (T, B)
    x = torch.randn(*shape, module.input_size, dtype=dtype, generator=g)
    dirs = 2 if module.bidirectional else 1
    h0 = (0.5 * torch.randn(module.num_layers * dirs, B, module.hidden_size, dtype=dtype,
                            generator=g)) if with_h0 else None
    return x, h0


def call(module, x, h0, lengths):
    """module(x, h0) -> (output as padded tensor, h_n); packs x when lengths are given."""
    if lengths is None:
        return module(x, h0)
    packed = pack_padded_sequence(x, lengths, batch_first=module.batch_first,
                                  enforce_sorted=False)
    out, h_n = module(packed, h0)
    assert type(out) is type(packed)
    assert torch.equal(out.sorted_indices, packed.sorted_indices)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    padded, _ = pad_packed_sequence(out, batch_first=module.batch_first,
                                    total_length=x.shape[1 if module.batch_first else 0])
    return padded, h_n


def results(module, x, h0, lengths, seed=2):
    """Output, h_n and the gradient of a random linear function of both w.r.t. x, h0, params."""
    x = x.clone().requires_grad_(True)
    h0 = None if h0 is None else h0.clone().requires_grad_(True)
    out, h_n = call(module, x, h0, lengths)
    g = torch.Generator().manual_seed(seed)
    d_out = torch.randn(out.shape, dtype=out.dtype, generator=g)
    d_h_n = torch.randn(h_n.shape, dtype=h_n.dtype, generator=g)
    trained = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    leaves = [x] + ([] if h0 is None else [h0]) + [p for _, p in trained]
    grads = torch.autograd.grad((out * d_out).sum() + (h_n * d_h_n).sum(), leaves)
    names = ["x"] + ([] if h0 is None else ["h0"]) + [n for n, _ in trained]
    return {"output": out, "h_n": h_n, **{f"d{n}": gr for n, gr in zip(names, grads)}}


def assert_parity(ours, ref, tol, case=""):
    assert ours.keys() == ref.keys()
    bad = {k: rel_diff(ours[k], ref[k]) for k in ref}
    bad = {k: v for k, v in bad.items() if not v <= tol}
    assert not bad, f"{case}: max relative differences above {tol:g}: {bad}"


GRID = list(itertools.product((1, 2, 3), (False, True), ("tanh", "relu"), (True, False),
                              (False, True), (False, True), (False, True)))
GRID_IDS = [f"L{n}-{'bi' if bi else 'uni'}-{nl}-{'bias' if b else 'nobias'}"
            f"-{'bf' if bf else 'tm'}-{'h0' if h0 else 'noh0'}-{'packed' if pk else 'tensor'}"
            for n, bi, nl, b, bf, h0, pk in GRID]


# --- gradcheck: the Function against finite differences, float64 ----------------------


@pytest.mark.parametrize("case", GRID, ids=GRID_IDS)
def test_gradcheck_grid(case):
    num_layers, bidirectional, nonlinearity, bias, batch_first, with_h0, packed = case
    _, ours = pair(seed=3, **config(num_layers, bidirectional, nonlinearity, bias, batch_first,
                                    D=2, H=2))
    T, B = 3, 3
    lengths = torch.tensor([2, 3, 1]) if packed else None  # unsorted
    x, h0 = inputs(ours, T, B, torch.float64, with_h0)
    names = [n for n, _ in ours.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in ours.parameters()]

    def f(x, *rest):
        h0, weights = (rest[0], rest[1:]) if with_h0 else (None, rest)
        state = dict(zip(names, weights))
        out, h_n = torch.func.functional_call(ours, state, (x, h0) if lengths is None
                                              else (pack_padded_sequence(
                                                  x, lengths, batch_first=batch_first,
                                                  enforce_sorted=False), h0))
        return (out.data if lengths is not None else out), h_n

    args = [x.requires_grad_(True)] + ([h0.requires_grad_(True)] if with_h0 else []) + params
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


# --- parity with nn.RNN holding the same state dict -----------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", GRID, ids=GRID_IDS)
def test_parity_with_nn_rnn(case, dtype):
    num_layers, bidirectional, nonlinearity, bias, batch_first, with_h0, packed = case
    ref, ours = pair(dtype, seed=4, **config(num_layers, bidirectional, nonlinearity, bias,
                                             batch_first, D=5, H=6))
    T, B = 7, 4
    lengths = torch.tensor([5, 7, 2, 6]) if packed else None
    x, h0 = inputs(ref, T, B, dtype, with_h0)
    x_before = x.clone()
    assert_parity(results(ours, x, h0, lengths), results(ref, x, h0, lengths), TOL[dtype])
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_parity_at_pytorch_init_and_longer_sequences(dtype):
    """PyTorch's own initialisation (not a shrunk test one), T = 60, a 2-layer bidirectional tanh."""
    ref, ours = pair(dtype, seed=5, input_size=16, hidden_size=32, num_layers=2,
                     bidirectional=True)
    x, h0 = inputs(ref, 60, 8, dtype, True)
    lengths = torch.tensor([60, 13, 41, 60, 1, 27, 59, 8])
    assert_parity(results(ours, x, h0, lengths), results(ref, x, h0, lengths), TOL[dtype])
    assert_parity(results(ours, x, h0, None), results(ref, x, h0, None), TOL[dtype])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_unbatched_input(batch_first, with_h0):
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True,
                     batch_first=batch_first)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 3, dtype=torch.float64, generator=g)
    h0 = torch.randn(4, 4, dtype=torch.float64, generator=g) if with_h0 else None
    got, want = results(ours, x, h0, None), results(ref, x, h0, None)
    assert got["output"].shape == (5, 8) and got["h_n"].shape == (4, 4)
    assert_parity(got, want, TOL[torch.float64])


def test_non_contiguous_input_and_frozen_weights():
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2)
    for module in (ref, ours):
        module.weight_hh_l1.requires_grad_(False)
        module.bias_ih_l0.requires_grad_(False)
    x = torch.randn(4, 6, 3, dtype=torch.float64).transpose(0, 1)  # (6, 4, 3), non-contiguous
    assert not x.is_contiguous()
    assert_parity(results(ours, x, None, None), results(ref, x, None, None), TOL[torch.float64])
    out, _ = ours(x.requires_grad_(True))
    out.sum().backward()
    assert ours.weight_hh_l1.grad is None and ours.bias_ih_l0.grad is None
    assert ours.bias_hh_l0.grad is not None


def test_input_reaches_the_layer_as_a_view_of_the_tensor(monkeypatch):
    seen = []
    forward = rnn_ext.recurrent.Recurrent.forward

    def spy(self, x, *args, **kwargs):
        seen.append(x)
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(rnn_ext.recurrent.Recurrent, "forward", spy)
    ours = RNN(3, 4, batch_first=True)
    x = torch.randn(2, 5, 3)
    ours(x)
    ours(x.requires_grad_(True))[0].sum().backward()
    assert len(seen) == 2
    for arr in seen:
        assert np.shares_memory(arr, x.detach().numpy())


# --- training: the same loss curve as nn.RNN ------------------------------------------


def train_losses(rnn_cls, dtype, packed, steps=50):
    """Embedding -> rnn -> Linear -> cross-entropy, Adam, clip_grad_norm_; the losses."""
    V, E, H, T, B = 11, 8, 16, 12, 6
    torch.manual_seed(7)
    embed = torch.nn.Embedding(V, E, dtype=dtype)
    rnn = rnn_cls(E, H, num_layers=2, bidirectional=packed, dtype=dtype)
    head = torch.nn.Linear(H * (2 if packed else 1), V, dtype=dtype)
    params = [*embed.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=0.02)
    g = torch.Generator().manual_seed(8)
    tokens = torch.randint(0, V, (T + 1, B), generator=g)
    lengths = torch.tensor([12, 5, 9, 12, 3, 7])
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        x = embed(tokens[:-1])
        if packed:
            out, _ = rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, total_length=T)
            target = tokens[1:].clone()
            target[torch.arange(T)[:, None] >= lengths[None, :]] = -100
        else:
            out, _ = rnn(x)
            target = tokens[1:]
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), target.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


@pytest.mark.parametrize("dtype,packed,tol", [(torch.float64, False, 1e-11),
                                              (torch.float64, True, 1e-11),
                                              (torch.float32, False, 1e-4)],
                         ids=["float64", "float64-packed-bidirectional", "float32"])
def test_training_loop_gives_nn_rnns_losses(dtype, packed, tol):
    ours = train_losses(RNN, dtype, packed)
    ref = train_losses(torch.nn.RNN, dtype, packed)
    assert ref[-1] < 0.75 * ref[0]  # it learns, so the comparison means something
    diff = np.max(np.abs(ours - ref))
    assert diff <= tol, f"loss curves differ by up to {diff:.3g}"


# --- module behaviours ---------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(num_layers=3, nonlinearity="relu", bias=False, batch_first=True, dropout=0.25,
         bidirectional=True),
    dict(num_layers=2, dropout=0.5),
], ids=["default", "all-options", "dropout"])
def test_constructor_init_repr_and_state_dict_like_nn_rnn(kwargs):
    torch.manual_seed(9)
    ref = torch.nn.RNN(5, 7, **kwargs)
    torch.manual_seed(9)
    ours = RNN(5, 7, **kwargs)
    assert isinstance(ours, torch.nn.RNN)
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1  # same init, same draws
        assert p1.dtype == torch.float32
    # state dicts both ways
    other = torch.nn.RNN(5, 7, **kwargs)
    other.load_state_dict(ours.state_dict())
    ours2 = RNN(5, 7, **kwargs)
    ours2.load_state_dict(other.state_dict())
    for p1, p2 in zip(ours2.parameters(), ours.parameters()):
        assert torch.equal(p1, p2)


def test_positional_arguments_and_bad_arguments_like_nn_rnn():
    ours = RNN(3, 4, 2, "relu", False, True, 0.0, True)
    ref = torch.nn.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    assert repr(ours) == repr(ref)
    for args, kwargs in [((3, 4), dict(proj_size=2)), ((3, 4), dict(nonlinearity="gelu")),
                         ((3, 4), dict(dropout=1.5)), ((3, 0), {}), ((3, 4), dict(num_layers=0))]:
        with pytest.raises(ValueError) as want:
            torch.nn.RNN(*args, **kwargs)
        with pytest.raises(ValueError) as got:
            RNN(*args, **kwargs)
        assert str(got.value) == str(want.value)


def test_bad_input_raises_nn_rnns_errors():
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2)
    bad = [
        (torch.randn(5, 2, 4, dtype=torch.float64), None),           # wrong input size
        (torch.randn(5, 2, 3, dtype=torch.float64), torch.zeros(2, 3, 4, dtype=torch.float64)),
        (torch.randn(5, 2, 3, dtype=torch.float64), torch.zeros(2, 4, dtype=torch.float64)),
        (torch.randn(5, 3, dtype=torch.float64), torch.zeros(2, 1, 4, dtype=torch.float64)),
        (torch.randn(1, 5, 2, 3, dtype=torch.float64), None),        # 4-D
        (torch.randn(5, 2, 3, dtype=torch.float32), None),           # mixed dtypes
        (torch.randn(0, 2, 3, dtype=torch.float64), None),           # no time steps
    ]
    for x, h0 in bad:
        with pytest.raises((RuntimeError, ValueError)) as want:
            ref(x, h0)
        with pytest.raises(want.type) as got:
            ours(x, h0)
        assert str(got.value) == str(want.value)


def test_double_float_and_dtype_out():
    ref, ours = pair(torch.float32, input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, h0 = inputs(ref, 6, 2, torch.float32, True)
    assert_parity(results(ours, x, h0, None), results(ref, x, h0, None), TOL[torch.float32])
    ours.double()
    ref.double()
    x, h0 = x.double(), h0.double()
    got = results(ours, x, h0, None)
    assert got["output"].dtype == torch.float64 and got["dweight_hh_l1"].dtype == torch.float64
    assert_parity(got, results(ref, x, h0, None), TOL[torch.float64])
    ours.float()
    ref.float()
    got = results(ours, x.float(), h0.float(), None)
    assert got["output"].dtype == torch.float32
    assert_parity(got, results(ref, x.float(), h0.float(), None), TOL[torch.float32])


def test_deepcopy_pickle_and_torch_save():
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, h0 = inputs(ref, 5, 2, torch.float64, True)
    ours(x, h0)  # populate the layer cache first: it must not travel
    want = results(ref, x, h0, None)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    clones = [copy.deepcopy(ours), pickle.loads(pickle.dumps(ours)),
              torch.load(buffer, weights_only=False)]
    for clone in clones:
        assert type(clone) is RNN and repr(clone) == repr(ours)
        assert_parity(results(clone, x, h0, None), want, TOL[torch.float64])
    with torch.no_grad():
        clones[0].weight_hh_l0.zero_()
    assert_parity(results(ours, x, h0, None), want, TOL[torch.float64])  # independent


def test_eval_mode_ignores_dropout_like_nn_rnn():
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=3, dropout=0.5)
    ref.eval()
    ours.eval()
    x, h0 = inputs(ref, 5, 2, torch.float64, True)
    assert_parity(results(ours, x, h0, None), results(ref, x, h0, None), TOL[torch.float64])


def dropout_probe(p, seed):
    """Layer 1's output over layer 0's in a 2-layer relu stack built to show the mask:
    layer 1 is h1 = relu(m ⊙ h0 / (1-p)) with W_ih = I, W_hh = 0, no bias, and layer 0's
    states are positive, so the ratio is the mask over (1 - p)."""
    H = 64
    ours = RNN(H, H, num_layers=2, nonlinearity="relu", bias=False, dropout=p,
               dtype=torch.float64)
    single = torch.nn.RNN(H, H, nonlinearity="relu", bias=False, dtype=torch.float64)
    with torch.no_grad():
        ours.weight_ih_l0.uniform_(0.1, 1.0)
        ours.weight_hh_l0.uniform_(0.0, 0.1)
        ours.weight_ih_l1.copy_(torch.eye(H))
        ours.weight_hh_l1.zero_()
        single.weight_ih_l0.copy_(ours.weight_ih_l0)
        single.weight_hh_l0.copy_(ours.weight_hh_l0)
    x = torch.rand(10, 8, H, dtype=torch.float64) + 0.1
    ours.train()
    torch.manual_seed(seed)
    out, _ = ours(x)
    below, _ = single(x)
    return out / below


def test_train_mode_dropout_between_layers():
    p = 0.3
    ratio = dropout_probe(p, seed=10)
    kept = ratio != 0
    assert torch.allclose(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - p)), rtol=1e-12)
    assert abs((~kept).double().mean().item() - p) < 0.03  # 5120 draws
    assert torch.equal(dropout_probe(p, seed=10) != 0, kept)  # torch.manual_seed reproduces it
    assert not torch.equal(dropout_probe(p, seed=11) != 0, kept)


def test_train_mode_dropout_gradients():
    """gradcheck with the same masks in every evaluation (the seed reset before each)."""
    _, ours = pair(seed=12, **config(2, True, "tanh", True, False, D=2, H=3, dropout=0.4))
    ours.train()
    x, h0 = inputs(ours, 4, 2, torch.float64, True)

    def f(x, h0):
        torch.manual_seed(13)
        return ours(x, h0)

    out_train, _ = f(x, h0)
    ours.eval()
    out_eval, _ = f(x, h0)
    ours.train()
    assert not torch.allclose(out_train, out_eval)  # the masks are on
    assert torch.autograd.gradcheck(f, (x.requires_grad_(True), h0.requires_grad_(True)))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_keeps_no_activations(mode):
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=3)
    x, h0 = inputs(ref, 50, 2, torch.float64, True)
    want_out, want_h = ref(x, h0)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        out, h_n = ours(x.requires_grad_(True), h0)
        out.mul_(1)  # writable, as PyTorch's results are
    assert out.grad_fn is None and not out.requires_grad
    assert rel_diff(out, want_out) <= 1e-12 and rel_diff(h_n, want_h) <= 1e-12
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is RecurrentForward]
    # the output does not hold the lower layers' states alive: 3 layers x 51 steps
    assert out.untyped_storage().nbytes() == out.numel() * out.element_size()


@pytest.mark.parametrize("change", ["weight", "input"])
def test_in_place_change_before_backward_raises_like_nn_rnn(change):
    for module in pair(input_size=3, hidden_size=4):
        w = torch.ones(3, dtype=torch.float64, requires_grad=True)
        inp = torch.randn(5, 2, 3, dtype=torch.float64) * w
        out, _ = module(inp)
        with torch.no_grad():
            if change == "weight":
                module.weight_hh_l0.mul_(2)  # an optimizer step before backward
            else:
                inp.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_output_changed_in_place_keeps_gradients_like_nn_rnn(bidirectional):
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional)
    x, _ = inputs(ref, 5, 2, torch.float64, False)
    got, want = [], []
    for module, grads in ((ours, got), (ref, want)):
        xr = x.clone().requires_grad_(True)
        out, _ = module(xr)
        out.relu_()
        out.sum().backward()
        grads += [out, xr.grad, module.weight_hh_l0.grad]
    for g, w in zip(got, want):
        assert rel_diff(g, w) <= 1e-12


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_one_step_with_a_carried_state(batch_first, nonlinearity):
    """T = 1 without autograd (generation): rnn_ext's one-step kernel, nn.RNN's results."""
    ref, ours = pair(torch.float32, input_size=5, hidden_size=6, num_layers=2,
                     nonlinearity=nonlinearity, batch_first=batch_first)
    g = torch.Generator().manual_seed(16)
    h_ref = h_ours = None
    with torch.inference_mode():
        for _ in range(20):
            x = torch.randn(3, 1, 5, generator=g)
            x = x if batch_first else x.transpose(0, 1).contiguous()
            out_ref, h_ref = ref(x, h_ref)
            out, h_ours = ours(x, h_ours)
            assert rel_diff(out, out_ref) <= TOL[torch.float32]
            assert rel_diff(h_ours, h_ref) <= TOL[torch.float32]
        out.zero_()  # the output is apart from h_n
        assert h_ours.abs().max() > 0
        unbatched, h = ours(torch.randn(1, 5), torch.randn(2, 6))
        assert unbatched.shape == (1, 6) and h.shape == (2, 6)
        if nonlinearity == "relu":  # a NaN state reaches PyTorch's relu, which keeps it
            h_nan = torch.zeros(2, 3, 6)
            h_nan[0, 1, 2] = float("nan")
            got, want = ours(x, h_nan), ref(x, h_nan)
            assert all(torch.equal(a.isnan(), b.isnan()) for a, b in zip(got, want))


def test_non_finite_values_propagate_like_nn_rnn():
    """rnn_ext's layer refuses NaN/inf; the module gives nn.RNN's results instead."""
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, h0 = inputs(ref, 5, 2, torch.float64, True)
    x[2, 1, 0] = float("nan")
    h0[0, 0, 0] = float("inf")
    for got, want in zip(ours(x, h0), ref(x, h0)):
        assert torch.equal(got.isnan(), want.isnan())
        assert rel_diff(got.nan_to_num(), want.nan_to_num()) <= 1e-12
    for nonlinearity in ("tanh", "relu"):
        ref, ours = pair(input_size=3, hidden_size=4, num_layers=2, nonlinearity=nonlinearity)
        for module in (ref, ours):
            with torch.no_grad():
                module.weight_hh_l0[1, 2] = float("nan")
        x, h0 = inputs(ref, 5, 2, torch.float64, True)
        for got, want in zip(ours(x, h0), ref(x, h0)):
            assert torch.equal(got.isnan(), want.isnan()), nonlinearity
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    x, h0 = inputs(ref, 5, 2, torch.float64, True)
    x.requires_grad_(True)
    out, _ = ours(x, h0)
    d_out = torch.zeros_like(out)
    d_out[3, 0, 1] = float("nan")
    (dx,) = torch.autograd.grad(out, x, d_out)
    assert dx.isnan().any() and dx.dtype == x.dtype


def test_double_backward_raises_a_clear_error():
    _, ours = pair(input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    out, _ = ours(x)
    (dx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        dx.sum().backward()


def test_weights_replaced_or_changed_between_calls():
    """New storage (p.data = ...), writes through .data and plain in-place changes all reach
    the kernel: nothing of a previous call's weights is reused."""
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2)
    x, h0 = inputs(ref, 5, 2, torch.float64, True)
    ours(x, h0)
    changes = [
        lambda m: setattr(m.weight_hh_l0, "data", torch.randn(4, 4, dtype=torch.float64,
                                                              generator=g)),
        lambda m: m.bias_hh_l1.data.copy_(torch.randn(4, dtype=torch.float64, generator=g)),
        lambda m: m.weight_ih_l1.detach().numpy().__imul__(-0.5),
    ]
    for change in changes:
        g = torch.Generator().manual_seed(15)
        change(ref)
        g = torch.Generator().manual_seed(15)
        change(ours)
        assert_parity(results(ours, x, h0, None), results(ref, x, h0, None), TOL[torch.float64])


def test_parametrized_weights():
    """torch.nn.utils.parametrizations (here weight_norm) compute a weight per call."""
    from torch.nn.utils.parametrizations import weight_norm

    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2)
    for module in (ref, ours):
        weight_norm(module, "weight_hh_l1")
    x, h0 = inputs(ref, 5, 2, torch.float64, True)
    got, want = results(ours, x, h0, None), results(ref, x, h0, None)
    assert "dparametrizations.weight_hh_l1.original0" in got
    assert_parity(got, want, TOL[torch.float64])


def test_two_forwards_before_backward_with_other_weights_in_between():
    """A layer reused by a later call (here functional_call with other weights) is
    reloaded with the first call's weights before its backward."""
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2)
    x, h0 = inputs(ref, 5, 2, torch.float64, True)
    x = x.requires_grad_(True)
    out, _ = ours(x, h0)
    other = {n: torch.randn_like(p) for n, p in ours.named_parameters()}
    torch.func.functional_call(ours, other, (x, h0))[0].sum().backward()
    (dx,) = torch.autograd.grad(out.sum(), x)
    (want,) = torch.autograd.grad(ref(x, h0)[0].sum(), x)
    assert rel_diff(dx, want) <= 1e-12


def test_concurrent_calls_from_threads():
    ref, ours = pair(input_size=8, hidden_size=16, num_layers=2, bidirectional=True)
    cases = [inputs(ref, 20, 4, torch.float64, True, seed=s) for s in range(4)]
    want = [results(ref, x, h0, None) for x, h0 in cases]
    got = [None] * len(cases)

    def work(i):
        for _ in range(5):
            got[i] = results(ours, *cases[i], None)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        assert_parity(g, w, TOL[torch.float64])


# --- what goes to PyTorch's own implementation ----------------------------------------


def test_other_dtypes_autocast_and_devices_run_pytorchs_implementation():
    torch.manual_seed(14)
    ref = torch.nn.RNN(3, 4, num_layers=2, dtype=torch.bfloat16)
    ours = RNN(3, 4, num_layers=2, dtype=torch.bfloat16)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    assert all(torch.equal(a, b) for a, b in zip(ours(x), ref(x)))  # the same code ran
    ref, ours = pair(torch.float32, input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = ours(x), ref(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # torch.func transforms wrap the tensors: PyTorch's implementation runs under them
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    got, want = (torch.func.grad(lambda x, m=m: m(x)[0].pow(2).sum())(x) for m in (ours, ref))
    assert rel_diff(got, want) <= 1e-12
    empty = torch.randn(5, 0, 3, dtype=torch.float64)  # an empty batch: PyTorch's shapes
    assert [t.shape for t in ours(empty)] == [t.shape for t in ref(empty)] == [(5, 0, 4),
                                                                              (2, 0, 4)]
    meta = RNN(3, 4, num_layers=2, bidirectional=True, device="meta")
    out, h_n = meta(torch.empty(5, 2, 3, device="meta"))
    assert out.device.type == "meta" and out.shape == (5, 2, 8) and h_n.shape == (4, 2, 4)


def test_dropout_one_in_training_runs_pytorchs_implementation():
    ref, ours = pair(input_size=3, hidden_size=4, num_layers=2, dropout=1.0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, _ = ours(x)
    assert torch.equal(out, ref(x)[0])  # layer 1 sees zeros: h = tanh(b) at every step


def test_readme_example():
    """The README's rnn_ext.torch example, as written there, against nn.RNN."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = text[text.index("## From PyTorch"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    rnn, torch_rnn, out = scope["rnn"], scope["torch_rnn"], scope["out"]
    assert type(rnn) is RNN and out.shape == (25, 4, 128)
    torch_rnn(scope["x"], scope["h0"])[0].square().mean().backward()
    for name, p in rnn.named_parameters():
        assert rel_diff(p.grad, getattr(torch_rnn, name).grad) <= TOL[torch.float32], name


# --- imports -------------------------------------------------------------------------


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_import_rnn_ext_does_not_import_torch():
    r = run_python("import sys, rnn_ext; rnn_ext.RNN(3, 4, 3); print('torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_rnn_ext_torch_without_torch_names_the_extra():
    r = run_python("import sys; sys.modules['torch'] = None\nimport rnn_ext.torch")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and 'pip install "rnn-ext[torch]"' in r.stderr, r.stderr
