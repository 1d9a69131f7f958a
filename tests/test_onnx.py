"""rnn_ext.onnx.export: ONNX Runtime (CPU) against rnn_ext's forward and the oracle.

Every exported file is checked with onnx.checker.check_model(full_check=True)
and run by ONNX Runtime; its outputs must equal rnn_ext's to 1e-5 relative
(max |got - want| / max |want|) in float32.
"""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors  # noqa: E402

import rnn_ext  # noqa: E402
import rnn_ext.onnx as ro  # noqa: E402
from rnn_ext import oracle  # noqa: E402
from rnn_ext.cli import main  # noqa: E402
from rnn_ext.text import Vocab, default_corpus  # noqa: E402

TOL = 1e-5  # float32, max |got - want| / max |want|
T, B, D, H, K = 5, 3, 6, 4, 7


def rel(got, want):
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(np.asarray(got, dtype=np.float64) - want).max() / np.abs(want).max())


def session(path):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(path, **feed):
    return session(path).run(None, {k: v for k, v in feed.items() if v is not None})


def data(kind, rng, batch_first=False, T=T, B=B, D=D):
    x = rng.integers(0, D, size=(T, B)) if kind == "ids" else \
        rng.standard_normal((T, B, D)).astype(np.float32)
    return np.ascontiguousarray(x.swapaxes(0, 1)) if batch_first else x


# --- single layer: rnn_ext.RNN ------------------------------------------------------------------

GRID = list(itertools.product(("tanh", "relu"), (True, False), ("ids", "floats")))


@pytest.mark.parametrize("nonlinearity,bias,kind", GRID)
def test_rnn_matches_forward_and_oracle(tmp_path, nonlinearity, bias, kind):
    """Each of (h0, lengths) given or not, and the graphs without those inputs."""
    m = rnn_ext.RNN(D, H, K, nonlinearity=nonlinearity, bias=bias, seed=3)
    rng = np.random.default_rng(0)
    x = data(kind, rng)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    lengths = np.array([5, 1, 3])
    full = tmp_path / "full.onnx"
    ro.export(m, full, input=kind)
    case = f"{nonlinearity} bias={bias} {kind}"
    for h, n in itertools.product((None, h0), (None, lengths)):
        want = m.forward(x, None if h is None else h[0], n)
        probs, h_n = run(full, x=x, h0=np.zeros((1, B, H), np.float32) if h is None else h,
                         lengths=np.full(B, T) if n is None else n)
        assert probs.dtype == np.float32 and probs.shape == (T, B, K)
        assert h_n.dtype == np.float32 and h_n.shape == (1, B, H)
        assert rel(probs, want.probs) < TOL, case
        assert rel(h_n[0], want.h_last) < TOL, case
        spec = oracle.forward(m.U, m.W, m.V, m.b, m.c, x, None if h is None else h[0], n,
                              nonlinearity)
        assert rel(probs, spec["probs"]) < TOL, case
        assert rel(h_n[0], spec["h_last"]) < TOL, case
        # the same without those inputs in the graph
        bare = tmp_path / f"bare_{h is None}_{n is None}.onnx"
        ro.export(m, bare, input=kind, h0=h is not None, lengths=n is not None)
        probs2, h_n2 = run(bare, x=x, h0=h, lengths=n)
        assert rel(probs2, want.probs) < TOL, case
        assert rel(h_n2[0], want.h_last) < TOL, case


@pytest.mark.parametrize("kind", ["ids", "floats"])
def test_no_head_outputs_hidden_states_zero_past_lengths(tmp_path, kind):
    m = rnn_ext.RNN(D, H, K, seed=1)
    rng = np.random.default_rng(1)
    x = data(kind, rng)
    lengths = np.array([2, 5, 1])
    ro.export(m, tmp_path / "m.onnx", input=kind, head=False)
    sess = session(tmp_path / "m.onnx")
    assert [o.name for o in sess.get_outputs()] == ["output", "h_n"]
    out, h_n = sess.run(None, {"x": x, "h0": np.zeros((1, B, H), np.float32), "lengths": lengths})
    want = m.forward(x, lengths=lengths)
    assert rel(out, want.h) < TOL and rel(h_n[0], want.h_last) < TOL
    for n in range(B):  # ONNX RNN's Y past sequence_lens is zero, as rnn_ext's h is
        assert not out[lengths[n]:, n].any()
        assert np.array_equal(h_n[0, n] != 0, out[lengths[n] - 1, n] != 0)


def test_ids_are_exactly_one_hot_columns(tmp_path):
    """Gather of U's columns + an identity W: bit for bit the graph fed one-hot floats."""
    m = rnn_ext.RNN(D, H, K, seed=6)
    x = np.random.default_rng(6).integers(0, D, size=(T, B))
    feed = {"h0": np.zeros((1, B, H), np.float32), "lengths": np.array([5, 2, 4])}
    ro.export(m, tmp_path / "ids.onnx", input="ids")
    ro.export(m, tmp_path / "floats.onnx", input="floats")
    by_id = run(tmp_path / "ids.onnx", x=x, **feed)
    one_hot = run(tmp_path / "floats.onnx", x=np.eye(D, dtype=np.float32)[x], **feed)
    for a, b in zip(by_id, one_hot):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["ids", "floats"])
def test_batch_first(tmp_path, kind):
    m = rnn_ext.RNN(D, H, K, seed=2, batch_first=True)
    rng = np.random.default_rng(2)
    x = data(kind, rng, batch_first=True)
    h0 = rng.standard_normal((1, B, H)).astype(np.float32)
    lengths = np.array([5, 4, 2])
    ro.export(m, tmp_path / "m.onnx", input=kind)
    probs, h_n = run(tmp_path / "m.onnx", x=x, h0=h0, lengths=lengths)
    want = m.forward(x, h0[0], lengths)
    assert probs.shape == (B, T, K)
    assert rel(probs, want.probs) < TOL and rel(h_n[0], want.h_last) < TOL


def test_default_input_kind_follows_vocab(tmp_path):
    m = rnn_ext.RNN(3, H, 3, seed=0)
    ro.export(m, tmp_path / "floats.onnx")
    m.vocab = Vocab("abc")
    ro.export(m, tmp_path / "ids.onnx")
    kinds = {}
    for name in ("floats", "ids"):
        graph = onnx.load(tmp_path / f"{name}.onnx").graph
        x = graph.input[0]
        kinds[name] = (x.name, x.type.tensor_type.elem_type, len(x.type.tensor_type.shape.dim))
    assert kinds == {"floats": ("x", onnx.TensorProto.FLOAT, 3), "ids": ("x", onnx.TensorProto.INT64, 2)}


def test_graph_signature_metadata_and_dynamic_dims(tmp_path):
    m = rnn_ext.RNN(3, H, 3, seed=0)
    m.vocab = Vocab("ab\n")
    ro.export(m, tmp_path / "m.onnx")
    model = onnx.load(tmp_path / "m.onnx")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", ro.DEFAULT_OPSET)]
    assert ro.DEFAULT_OPSET == 17
    sig = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
           for v in [*model.graph.input, *model.graph.output]}
    assert sig == {"x": ["T", "B"], "h0": [1, "B", H], "lengths": ["B"], "probs": ["T", "B", 3],
                   "h_n": [1, "B", H]}
    assert [n.op_type for n in model.graph.node].count("RNN") == 1
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["rnn_ext.vocab"]) == "ab\n"
    assert json.loads(meta["rnn_ext.config"])["input"] == "ids"
    # any T and B
    sess = session(tmp_path / "m.onnx")
    for t, b in ((1, 1), (9, 4)):
        x = np.random.default_rng(t).integers(0, 3, size=(t, b))
        probs, h_n = sess.run(None, {"x": x, "h0": np.zeros((1, b, H), np.float32),
                                     "lengths": np.full(b, t)})
        want = m.forward(x)
        assert rel(probs, want.probs) < TOL and rel(h_n[0], want.h_last) < TOL


@pytest.mark.parametrize("opset", [ro.MIN_OPSET, ro.DEFAULT_OPSET, 21])
def test_opsets(tmp_path, opset):
    m = rnn_ext.RNN(D, H, K, seed=4)
    rng = np.random.default_rng(4)
    x = data("ids", rng)
    ro.export(m, tmp_path / "m.onnx", opset=opset, input="ids")
    assert onnx.load(tmp_path / "m.onnx").opset_import[0].version == opset
    probs, h_n = run(tmp_path / "m.onnx", x=x, h0=np.zeros((1, B, H), np.float32),
                     lengths=np.full(B, T))
    assert rel(probs, m.forward(x).probs) < TOL


def test_float64(tmp_path):
    m = rnn_ext.RNN(D, H, K, seed=5, dtype=np.float64)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, B, D))
    with pytest.raises(ValueError, match="float64.*dtype=np.float32"):
        ro.export(m, tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)
    # a documented cast: float32 rounding of the weights and of the arithmetic
    ro.export(m, tmp_path / "f32.onnx", dtype=np.float32)
    probs, _ = run(tmp_path / "f32.onnx", x=x.astype(np.float32),
                   h0=np.zeros((1, B, H), np.float32), lengths=np.full(B, T))
    assert probs.dtype == np.float32 and rel(probs, m.forward(x).probs) < TOL
    # exact float64: a valid graph; ONNX Runtime's CPU provider has no double RNN kernel
    ro.export(m, tmp_path / "f64.onnx", dtype=np.float64)
    try:
        probs, _ = run(tmp_path / "f64.onnx", x=x, h0=np.zeros((1, B, H)), lengths=np.full(B, T))
    except ort_errors.NotImplemented as exc:
        assert "RNN" in str(exc), exc
    else:
        assert probs.dtype == np.float64 and rel(probs, m.forward(x).probs) < 1e-12


# --- stacked and bidirectional: rnn_ext.Recurrent, heads, and the multi-layer RNN ----------------

LAYER_GRID = list(itertools.product((1, 2, 3), (False, True), ("tanh", "relu"), (True, False),
                                    ("ids", "floats")))


@pytest.mark.parametrize("num_layers,bidirectional,nonlinearity,bias,kind", LAYER_GRID)
def test_recurrent_matches_forward(tmp_path, num_layers, bidirectional, nonlinearity, bias, kind):
    dirs = 2 if bidirectional else 1
    layer = rnn_ext.Recurrent(D, H, num_layers, nonlinearity=nonlinearity, bias=bias,
                              bidirectional=bidirectional, seed=7)
    rng = np.random.default_rng(num_layers)
    x = data(kind, rng)
    h0 = rng.standard_normal((num_layers * dirs, B, H)).astype(np.float32)
    lengths = np.array([2, 5, 4])
    case = f"L={num_layers} dirs={dirs} {nonlinearity} bias={bias} {kind}"
    ro.export(layer, tmp_path / "full.onnx", input=kind)
    sess = session(tmp_path / "full.onnx")
    for h, n in itertools.product((None, h0), (None, lengths)):
        want = layer.forward(x, h, n)
        out, h_n = sess.run(None, {"x": x, "h0": np.zeros_like(h0) if h is None else h,
                                   "lengths": np.full(B, T) if n is None else n})
        assert out.shape == (T, B, dirs * H) and h_n.shape == (num_layers * dirs, B, H), case
        assert rel(out, want.output) < TOL, case
        assert rel(h_n, want.h_n) < TOL, case
    spec_output, spec_h_n = oracle.recurrent_forward(
        layer.params, x, num_layers=num_layers, bidirectional=bidirectional,
        nonlinearity=nonlinearity, h0=h0, lengths=lengths)
    assert rel(out, spec_output) < TOL and rel(h_n, spec_h_n) < TOL, case
    # without the h0 and lengths inputs
    ro.export(layer, tmp_path / "bare.onnx", input=kind, h0=False, lengths=False)
    out, h_n = run(tmp_path / "bare.onnx", x=x)
    want = layer.forward(x)
    assert rel(out, want.output) < TOL and rel(h_n, want.h_n) < TOL, case
    # with a softmax head on top
    head = rnn_ext.heads.Softmax(dirs * H, K, bias=bias, seed=8)
    ro.export(layer, tmp_path / "head.onnx", input=kind, head=head)
    probs, h_n = run(tmp_path / "head.onnx", x=x, h0=h0, lengths=lengths)
    want = layer.forward(x, h0, lengths)
    assert rel(probs, head.forward(want.output)) < TOL, case
    assert rel(probs, oracle.softmax_head_forward(head.params["V"], head.params.get("c"),
                                                  spec_output)) < TOL, case
    assert rel(h_n, want.h_n) < TOL, case


@pytest.mark.parametrize("num_layers,bidirectional", [(2, False), (2, True), (3, True)])
def test_multilayer_rnn_and_linear_head(tmp_path, num_layers, bidirectional):
    dirs = 2 if bidirectional else 1
    m = rnn_ext.RNN(D, H, K, num_layers=num_layers, bidirectional=bidirectional, seed=9,
                    batch_first=True)
    m.vocab = Vocab("abcdef")
    rng = np.random.default_rng(9)
    x = data("ids", rng, batch_first=True)
    h0 = rng.standard_normal((num_layers * dirs, B, H)).astype(np.float32)
    lengths = np.array([5, 3, 1])
    ro.export(m, tmp_path / "m.onnx")  # ids: the model has a vocabulary
    probs, h_n = run(tmp_path / "m.onnx", x=x, h0=h0, lengths=lengths)
    want = m.forward(x, h0, lengths)
    assert probs.shape == (B, T, K)
    assert rel(probs, want.probs) < TOL and rel(h_n, want.h_n) < TOL
    assert [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node].count("RNN") == num_layers
    # a linear head on the model's layer (time-major: the layer's own batch_first is False)
    lin = rnn_ext.heads.Linear(dirs * H, 2, seed=10)
    ro.export(m.layer, tmp_path / "lin.onnx", input="ids", head=lin)
    sess = session(tmp_path / "lin.onnx")
    assert [o.name for o in sess.get_outputs()] == ["predictions", "h_n"]
    xt = np.ascontiguousarray(x.T)
    pred, _ = sess.run(None, {"x": xt, "h0": h0, "lengths": lengths})
    assert rel(pred, lin.forward(m.layer.forward(xt, h0, lengths).output)) < TOL


# --- bad input: clear errors, nothing left behind --------------------------------------------


def test_bad_input(tmp_path):
    m = rnn_ext.RNN(D, H, K, seed=0)
    out = tmp_path / "m.onnx"
    cases = [
        (lambda: ro.export(object(), out), TypeError, "must be an rnn_ext.RNN or an rnn_ext.Recurrent, got builtins.object"),
        (lambda: ro.export("model.npz", out), TypeError, "got builtins.str"),
        (lambda: ro.export(m, out, head=object()), TypeError, "own head"),
        (lambda: ro.export(rnn_ext.Recurrent(D, H), out, head=True), ValueError, "has none"),
        (lambda: ro.export(rnn_ext.Recurrent(D, H), out, head=m), TypeError, "heads.Softmax"),
        (lambda: ro.export(rnn_ext.Recurrent(D, H), out, head=rnn_ext.heads.Softmax(H + 1, K)),
         ValueError, "takes 5 features"),
        (lambda: ro.export(m, out, input="onehot"), ValueError, "input must be one of"),
        (lambda: ro.export(m, out, opset=12), ValueError, r"opset must be in \[13, "),
        (lambda: ro.export(m, out, opset=17.0), TypeError, "opset must be an int"),
        (lambda: ro.export(m, out, h0="yes"), TypeError, "h0 must be a bool"),
        (lambda: ro.export(m, out, dtype=np.int32), ValueError, "dtype must be None, float32 or float64"),
        (lambda: ro.export(m, 3), TypeError, "path must be a str or os.PathLike"),
        (lambda: ro.export(m, tmp_path / "no" / "such" / "dir.onnx"), FileNotFoundError, "cannot write there"),
        (lambda: ro.export(m, tmp_path), IsADirectoryError, "is a directory"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    m = rnn_ext.RNN(D, H, K, seed=0)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        ro.export(m, out)
    assert os.listdir(tmp_path) == ["m.onnx"] and out.read_bytes() == b"old"
    monkeypatch.undo()
    ro.export(m, out)
    assert os.listdir(tmp_path) == ["m.onnx"] and out.read_bytes() != b"old"


def test_import_rnn_ext_does_not_import_onnx():
    code = ("import sys, rnn_ext; bad = [m for m in ('onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.abspath(rnn_ext.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


# --- the command line: train, export, sample greedily through ONNX Runtime ----------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_cli")
    (d / "text.txt").write_text(default_corpus()[:40_000], encoding="utf-8")
    code = main(["train", str(d / "text.txt"), "--hidden", "48", "--steps", "300", "--batch", "16",
                 "--eval-every", "0", "--sample-every", "0", "--quiet", "--out", str(d / "m.npz")])
    assert code == 0
    return d


def test_cli_export_and_greedy_sampling_matches(trained, capsys):
    d = trained
    capsys.readouterr()
    assert main(["export", str(d / "m.npz"), str(d / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "saved" in out and "probs float32 (T, B," in out
    prime, length = "The ", 300
    assert main(["sample", str(d / "m.npz"), "--temperature", "0", "--prime", prime,
                 "--length", str(length)]) == 0
    want = capsys.readouterr().out
    model = rnn_ext.load(d / "m.npz")
    sess = session(d / "m.onnx")
    H = model.hidden_size
    # the prime in one pass, then one step per character with the state carried
    ids = model.vocab.encode(prime)[:, None]
    probs, h = sess.run(None, {"x": ids, "h0": np.zeros((1, 1, H), np.float32),
                               "lengths": np.array([len(prime)])})
    got = []
    for _ in range(length):
        nxt = int(np.argmax(probs[-1, 0]))
        got.append(nxt)
        probs, h = sess.run(None, {"x": np.array([[nxt]]), "h0": h, "lengths": np.array([1])})
    assert prime + model.vocab.decode(got) + "\n" == want


def test_cli_export_options_and_errors(trained, capsys, tmp_path):
    d = trained
    assert main(["export", str(d / "m.npz"), str(tmp_path / "h.onnx"), "--no-head", "--no-h0",
                 "--no-lengths", "--input", "floats", "--opset", "13"]) == 0
    graph = onnx.load(tmp_path / "h.onnx").graph
    assert [i.name for i in graph.input] == ["x"] and [o.name for o in graph.output] == ["output", "h_n"]
    capsys.readouterr()
    for argv, fragment in [
        ([str(tmp_path / "missing.npz"), str(tmp_path / "x.onnx")], "cannot read"),
        ([str(d / "m.npz"), str(tmp_path / "no" / "x.onnx")], "cannot write there"),
        ([str(d / "m.npz"), str(tmp_path / "x.onnx"), "--opset", "99"], "opset must be in"),
    ]:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rnn-ext: error:") and fragment in err and len(err.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["h.onnx"]


def test_runtime_refuses_out_of_range_ids_and_mismatched_shapes(tmp_path):
    """What docs/onnx.md promises a caller about bad input at run time."""
    m = rnn_ext.RNN(D, H, K, seed=0)
    ro.export(m, tmp_path / "m.onnx", input="ids")
    sess = session(tmp_path / "m.onnx")
    x, h0, n = np.zeros((T, B), np.int64), np.zeros((1, B, H), np.float32), np.full(B, T)
    for feed in ({"x": x + D, "h0": h0, "lengths": n},                       # id out of range
                 {"x": x, "h0": h0, "lengths": n[:-1]},                      # lengths not (B,)
                 {"x": x, "h0": h0, "lengths": n + 1},                       # a length > T
                 {"x": x, "h0": h0[:, :-1], "lengths": n},                   # h0 not (1, B, H)
                 {"x": x.astype(np.int32), "h0": h0, "lengths": n}):         # ids not int64
        with pytest.raises((ort_errors.InvalidArgument, ort_errors.Fail)):
            sess.run(None, feed)
