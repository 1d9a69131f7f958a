"""rnn_ext.Recurrent and the heads against PyTorch autograd.

nn.RNN of the same configuration, holding the same weights, run through
pack_padded_sequence(enforce_sorted=False) with ragged, unsorted lengths;
random d_output (non-zero past the lengths) and d_h_n go back through
torch.autograd.grad.  Heads against CrossEntropyLoss and MSELoss.
"""

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import rnn_ext  # noqa: E402

TOL = {np.float32: 2e-5, np.float64: 1e-12}
TDT = {np.float32: torch.float32, np.float64: torch.float64}


def rel(got, want):
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def torch_grads(rnn, x, h0, lengths, d_out, d_hn, dtype):
    T = x.shape[0]
    xt = torch.tensor(x, dtype=TDT[dtype], requires_grad=True)
    h0t = torch.tensor(h0, dtype=TDT[dtype], requires_grad=True)
    packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    out, h_n = rnn(packed, h0t)
    out, _ = pad_packed_sequence(out, total_length=T)
    loss = (out * torch.tensor(d_out, dtype=TDT[dtype])).sum() + \
        (h_n * torch.tensor(d_hn, dtype=TDT[dtype])).sum()
    names = [n for n, _ in rnn.named_parameters()]
    grads = torch.autograd.grad(loss, list(rnn.parameters()) + [xt, h0t])
    g = {n: t.detach().numpy() for n, t in zip(names + ["x", "h0"], grads)}
    return out.detach().numpy(), h_n.detach().numpy(), g


def ours(name):
    return name.replace("weight_ih", "U").replace("weight_hh", "W").replace("bias_ih", "b")


def run_case(L, bidir, relu, bias, dtype, seed=0, T=7, B=5, D=4, H=6):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    rnn = torch.nn.RNN(D, H, L, nonlinearity="relu" if relu else "tanh", bias=bias,
                       bidirectional=bidir, dtype=TDT[dtype])
    layer = rnn_ext.Recurrent.from_torch(rnn)
    dirs = 2 if bidir else 1
    x = rng.normal(size=(T, B, D))
    lengths = rng.permutation(np.r_[T, 1, rng.integers(1, T + 1, size=B - 2)])
    h0 = rng.normal(size=(L * dirs, B, H))
    d_out = rng.normal(size=(T, B, dirs * H))
    d_hn = rng.normal(size=(L * dirs, B, H))
    out, h_n, g = torch_grads(rnn, x, h0, lengths, d_out, d_hn, dtype)
    fwd = layer.forward(x, h0, lengths)
    got = layer.backward(fwd, d_out, d_hn)
    errs = {"output": rel(fwd.output, out), "h_n": rel(fwd.h_n, h_n),
            "x": rel(got.x, g["x"]), "h0": rel(got.h0, g["h0"])}
    for name, want in g.items():
        if name.startswith(("weight", "bias_ih")):
            errs[ours(name)] = rel(got.params[ours(name)], want)
        elif name.startswith("bias_hh"):   # both biases get db
            errs[name] = rel(got.params[ours(name.replace("bias_hh", "bias_ih"))], want)
    return errs


def test_three_layer_bidirectional_relu_ragged_float64(capsys):
    """The case the issue asks numbers for."""
    errs = run_case(3, True, True, True, np.float64, seed=2024)
    with capsys.disabled():
        print("\n3-layer bidirectional relu, ragged lengths, float64, max relative difference "
              "to PyTorch: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) < TOL[np.float64], errs


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("L, bidir, relu, bias",
                         [c for c in itertools.product([1, 2, 3], [False, True], [False, True],
                                                       [True, False])][::2])
def test_matches_torch(dtype, L, bidir, relu, bias):
    errs = run_case(L, bidir, relu, bias, dtype, seed=L * 10 + bidir)
    assert max(errs.values()) < TOL[dtype], errs


def test_to_torch_round_trip():
    layer = rnn_ext.Recurrent(3, 4, 2, bidirectional=True, nonlinearity="relu",
                              dtype=np.float64, seed=1, batch_first=True)
    rnn = layer.to_torch()
    assert rnn.num_layers == 2 and rnn.bidirectional and rnn.batch_first
    back = rnn_ext.Recurrent.from_torch(rnn)
    np.testing.assert_array_equal(back.flat, layer.flat)
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    out, h_n = rnn(torch.tensor(x))
    assert rel(layer.forward(x).output, out.detach().numpy()) < 1e-12


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_heads_match_torch_losses(dtype):
    rng = np.random.default_rng(0)
    F, K, N = 5, 4, 6
    feats = rng.normal(size=(N, F))
    y = rng.integers(0, K, size=N)
    head = rnn_ext.heads.Softmax(F, K, dtype=dtype, seed=0)
    lin = torch.nn.Linear(F, K, dtype=TDT[dtype])
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(head.params["V"]))
        lin.bias.copy_(torch.tensor(head.params["c"]))
    ft = torch.tensor(feats, dtype=TDT[dtype], requires_grad=True)
    for reduction in ("sum", "mean"):
        loss_t = torch.nn.CrossEntropyLoss(reduction=reduction)(lin(ft), torch.tensor(y))
        gt = torch.autograd.grad(loss_t, [lin.weight, lin.bias, ft])
        loss, d_feat, g = head.loss_and_grad(feats, y, reduction=reduction)
        assert loss == pytest.approx(loss_t.item(), rel=TOL[dtype])
        assert rel(g.params["V"], gt[0]) < TOL[dtype] and rel(g.params["c"], gt[1]) < TOL[dtype]
        assert rel(d_feat, gt[2]) < TOL[dtype]
    reg = rnn_ext.heads.Linear(F, 2, dtype=dtype, seed=0)
    lin = torch.nn.Linear(F, 2, dtype=TDT[dtype])
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(reg.params["V"]))
        lin.bias.copy_(torch.tensor(reg.params["c"]))
    yt = rng.normal(size=(N, 2))
    for reduction in ("sum", "mean"):
        loss_t = torch.nn.MSELoss(reduction=reduction)(lin(ft), torch.tensor(yt, dtype=TDT[dtype]))
        gt = torch.autograd.grad(loss_t, [lin.weight, lin.bias, ft])
        loss, d_feat, g = reg.loss_and_grad(feats, yt, reduction=reduction)
        assert loss == pytest.approx(loss_t.item(), rel=TOL[dtype])
        assert rel(g.params["V"], gt[0]) < TOL[dtype] and rel(g.params["c"], gt[1]) < TOL[dtype]
        assert rel(d_feat, gt[2]) < TOL[dtype]
