"""Model files: round trips, resumed training, atomic writes, damaged files rejected."""

import os
import zipfile

import numpy as np
import pytest

import rnn_ext.io as rio
from rnn_ext import RNN
from rnn_ext.optim import Adagrad, Adam
from rnn_ext.text import Vocab
from rnn_ext.training import Trainer

TEXT = "to be or not to be, that is the question. " * 10
SMALL = dict(hidden=8, seq_len=5, batch=3, seed=2)


def same_model(a, b):
    assert (a.input_size, a.hidden_size, a.output_size) == (b.input_size, b.hidden_size, b.output_size)
    assert (a.bias, a.nonlinearity, a.dtype, a.batch_first) == (b.bias, b.nonlinearity, b.dtype, b.batch_first)
    pa, pb = a.parameters(), b.parameters()
    assert pa.keys() == pb.keys()
    for k in pa:
        assert pb[k].dtype == pa[k].dtype
        np.testing.assert_array_equal(pb[k], pa[k])


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(bias=False), dict(nonlinearity="relu"), dict(dtype=np.float64), dict(batch_first=True)],
    ids=["default", "no-bias", "relu", "float64", "batch-first"],
)
def test_round_trip(tmp_path, kw):
    m = RNN(4, 5, 3, seed=1, **kw)
    path = tmp_path / "m.npz"
    rio.save(m, path)
    back = rio.load(path)
    same_model(m, back)
    assert back.vocab is None
    ck = rio.load_checkpoint(str(path))
    assert ck.optimizer is None and ck.step is None and ck.hidden is None


def test_round_trip_with_vocab_and_model_save(tmp_path):
    v = Vocab.from_text("héllo wörld 🙂")
    m = RNN(len(v), 6, len(v), seed=0)
    m.vocab = v
    path = tmp_path / "m.npz"
    m.save(path)
    back = rio.load(path)
    same_model(m, back)
    assert back.vocab == v


def test_file_is_plain_npz_without_pickles(tmp_path):
    m = RNN(3, 4, 3, seed=0)
    m.vocab = Vocab("abc")
    opt = Adam(m)
    path = tmp_path / "m.npz"
    rio.save(m, path, optimizer=opt, step=0)
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    assert all(a.dtype != object for a in arrays.values())
    assert arrays["format_version"] == rio.FORMAT_VERSION
    assert "param/U" in arrays and "config/hidden_size" in arrays and "vocab" in arrays
    assert str(arrays["optimizer/type"]) == "Adam"


def test_optimizer_state_and_step_round_trip(tmp_path):
    m = RNN(3, 4, 3, seed=0, dtype=np.float64)
    opt = Adagrad(m, lr=0.3)
    rng = np.random.default_rng(0)
    opt.step({k: rng.standard_normal(p.shape) for k, p in m.parameters().items()})
    h = rng.standard_normal((2, 4))
    path = tmp_path / "ck.npz"
    rio.save(m, path, optimizer=opt, step=17, hidden=h)
    ck = rio.load_checkpoint(path)
    same_model(m, ck.model)
    assert isinstance(ck.optimizer, Adagrad) and ck.optimizer.model is ck.model
    assert ck.optimizer.lr == 0.3
    np.testing.assert_array_equal(ck.optimizer.state["U"]["sum"], opt.state["U"]["sum"])
    assert ck.step == 17
    np.testing.assert_array_equal(ck.hidden, h)


def test_resumed_training_is_identical(tmp_path):
    kw = dict(SMALL, seq_len=20, batch=6)
    straight = Trainer(None, TEXT, **kw)
    straight.run(12, final_eval=False)
    # 12 steps cross the end of a pass (chunks_per_pass is smaller), so the resume
    # must also restore the carried state and the position in the text.
    assert straight.chunks_per_pass < 12

    first = Trainer(None, TEXT, **kw)
    first.run(5, final_eval=False)
    path = tmp_path / "ck.npz"
    first.save(path)
    resumed = Trainer.resume(rio.load_checkpoint(path), TEXT, **kw)
    assert resumed.step == 5
    hist = resumed.run(7, final_eval=False)
    assert hist.step == 12
    same_model(straight.model, resumed.model)
    np.testing.assert_array_equal(straight.h, resumed.h)


def test_resume_rejects_wrong_batch(tmp_path):
    tr = Trainer(None, TEXT, **SMALL)
    tr.run(2, final_eval=False)
    tr.save(tmp_path / "ck.npz")
    with pytest.raises(ValueError, match="batch=2"):
        Trainer.resume(rio.load_checkpoint(tmp_path / "ck.npz"), TEXT, **dict(SMALL, batch=2))


# -- atomic write ----------------------------------------------------------------


def test_overwrite_and_no_leftover_temp_files(tmp_path):
    path = tmp_path / "m.npz"
    rio.save(RNN(3, 4, 3, seed=0), path)
    m2 = RNN(3, 4, 3, seed=1)
    rio.save(m2, path)
    same_model(m2, rio.load(path))
    assert os.listdir(tmp_path) == ["m.npz"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not mkstemp's 0600


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    old = RNN(3, 4, 3, seed=0)
    rio.save(old, path)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(rio.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        rio.save(RNN(3, 4, 3, seed=1), path)
    monkeypatch.undo()
    same_model(old, rio.load(path))
    assert os.listdir(tmp_path) == ["m.npz"]


def test_save_bad_arguments(tmp_path):
    m = RNN(3, 4, 3)
    with pytest.raises(ValueError, match="step"):
        rio.save(m, tmp_path / "m.npz", step=-1)
    with pytest.raises(ValueError, match="hidden"):
        rio.save(m, tmp_path / "m.npz", hidden=np.zeros((2, 5)))
    assert not os.listdir(tmp_path)


# -- damaged files -----------------------------------------------------------------


def good_arrays(**kw):
    m = RNN(3, 4, 3, seed=0, **kw)
    m.vocab = Vocab("abc")
    opt = Adam(m)
    opt.step({k: np.ones_like(p) for k, p in m.parameters().items()})
    return m, opt


def write_variant(tmp_path, edit):
    """Save a good checkpoint, apply `edit` to its dict of arrays, write it back with np.savez."""
    m, opt = good_arrays()
    path = tmp_path / "good.npz"
    rio.save(m, path, optimizer=opt, step=1, hidden=np.zeros((1, 4), np.float32))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    return bad


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda a: a.pop("param/W"), "missing entry 'param/W'"),
        (lambda a: a.pop("config/hidden_size"), "missing entry 'config/hidden_size'"),
        (lambda a: a.pop("format_version"), "format_version"),
        (lambda a: a.update(format_version=np.array(99)), "unknown format version 99"),
        (lambda a: a.update(format=np.array("something")), "not an rnn_ext model file"),
        (lambda a: a.update({"param/U": np.zeros((4, 2), np.float32)}), r"param/U has shape \(4, 2\), expected \(4, 3\)"),
        (lambda a: a.update({"param/V": a["param/V"].astype(np.float64)}), "param/V has dtype float64"),
        (lambda a: a.update({"param/b": np.full(4, np.nan, np.float32)}), "param/b holds non-finite"),
        (lambda a: a.update({"param/U": np.array([object()] * 12, dtype=object).reshape(4, 3)}), "param/U.*pickled"),
        (lambda a: a.update({"config/dtype": np.array("float16")}), "config/dtype"),
        (lambda a: a.update({"config/nonlinearity": np.array("sigmoid")}), "config/nonlinearity"),
        (lambda a: a.update({"config/hidden_size": np.array(0)}), "config/hidden_size must be >= 1"),
        (lambda a: a.update({"config/hidden_size": np.array([4, 4])}), "config/hidden_size.*scalar"),
        (lambda a: a.update({"config/bias": np.array(1.5)}), "config/bias"),
        (lambda a: a.update(vocab=np.array([97, 98], np.int32)), "vocab has 2 characters"),
        (lambda a: a.update(vocab=np.array([97, 97, 98], np.int32)), "bad vocab"),
        (lambda a: a.update(step=np.array(-3)), "step must be >= 0"),
        (lambda a: a.update(hidden=np.zeros((1, 5), np.float32)), "hidden must be"),
        (lambda a: a.update({"optimizer/U.exp_avg": np.zeros((2, 2), np.float32)}), "bad optimizer state.*U.exp_avg"),
        (lambda a: a.update({"optimizer/type": np.array("Nadam")}), "bad optimizer state.*Nadam"),
        (lambda a: a.update({"param/extra": np.zeros(3, np.float32)}), "unexpected parameters"),
    ],
)
def test_bad_entries_rejected(tmp_path, edit, match):
    bad = write_variant(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        rio.load(bad)


def test_bias_false_file_rejects_bias_arrays(tmp_path):
    def edit(a):
        a["config/bias"] = np.array(False)

    with pytest.raises(ValueError, match="unexpected parameters"):
        rio.load(write_variant(tmp_path, edit))


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    m, opt = good_arrays()
    rio.save(m, path, optimizer=opt)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 200):
        (tmp_path / "t.npz").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="t.npz"):
            rio.load(tmp_path / "t.npz")


def test_corrupted_member_bytes(tmp_path):
    path = tmp_path / "m.npz"
    rio.save(RNN(3, 4, 3, seed=0), path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param/W.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 140  # inside W's data
    data[start : start + 8] = b"\xff" * 8
    (tmp_path / "c.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="param/W"):
        rio.load(tmp_path / "c.npz")


@pytest.mark.parametrize("content", [b"", b"hello, not a model", b"\x93NUMPY\x01\x00garbage", b"\x80\x04\x95pickle"])
def test_not_an_npz(tmp_path, content):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not an rnn_ext model file"):
        rio.load(path)


def test_plain_npy_saved_as_npz_rejected(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.arange(3))
    with pytest.raises(ValueError, match="missing entry 'format'"):
        rio.load(path)


def test_io_errors_are_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        rio.load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError):
        rio.load(tmp_path)
    with pytest.raises(OSError):
        rio.save(RNN(3, 4, 3), tmp_path / "no" / "such" / "dir.npz")


def test_member_that_is_not_npy(tmp_path):
    path = tmp_path / "m.npz"
    rio.save(RNN(3, 4, 3, seed=0), path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["param/U.npy"] = b"no npy magic here"
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="'param/U' is not a .npy array"):
        rio.load(tmp_path / "x.npz")


# -- save refuses what load would refuse ------------------------------------------------


def poisoned_checkpoint(where):
    """A model, optimizer and hidden state with one non-finite value at ``where``."""
    m, opt = good_arrays()
    hidden = np.zeros((2, 4), np.float32)
    if where.startswith("param/"):
        m.parameters()[where[len("param/"):]].flat[2] = np.nan  # the live array, as an optimizer would
    elif where == "optimizer":
        opt.state["W"]["exp_avg_sq"].flat[0] = np.inf
    elif where == "hidden":
        hidden[1, 3] = -np.inf
    return m, opt, hidden


@pytest.mark.parametrize("where, match", [
    ("param/U", "param/U holds non-finite"),
    ("param/W", "param/W holds non-finite"),
    ("param/c", "param/c holds non-finite"),
    ("optimizer", "bad optimizer state.*W.exp_avg_sq.*non-finite"),
    ("hidden", "hidden holds non-finite"),
])
def test_save_refuses_non_finite_state(tmp_path, where, match):
    m, opt, hidden = poisoned_checkpoint(where)
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match=f"cannot save {path}: {match}"):
        rio.save(m, path, optimizer=opt, step=3, hidden=hidden)
    assert os.listdir(tmp_path) == []


def test_issue_repro_nan_gradient_then_save(tmp_path):
    """The issue's repro: an SGD step on a NaN gradient, then save."""
    from rnn_ext.optim import SGD

    m = RNN(3, 4, 3)
    with np.errstate(invalid="ignore"):
        try:
            SGD(m, lr=0.1).step({"U": np.full((4, 3), np.nan)})
        except ValueError:  # an optimizer that refuses the step changes nothing
            assert np.isfinite(m.U).all()
    if np.isfinite(m.U).all():
        m.save(tmp_path / "m.npz")
        rio.load(tmp_path / "m.npz")
    else:
        with pytest.raises(ValueError, match="param/U holds non-finite"):
            m.save(tmp_path / "m.npz")
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("edit, match", [
    (lambda m: {"hidden": np.zeros((2, 4), np.float64)}, "hidden must be a float32 array"),
    (lambda m: {"hidden": np.zeros((2, 5), np.float32)}, "hidden must be a float32 array"),
    (lambda m: setattr(m, "vocab", Vocab("abcd")) or {}, "the vocab has 4 characters"),
])
def test_save_refuses_what_load_would_refuse(tmp_path, edit, match):
    m, opt = good_arrays()
    kw = edit(m)
    with pytest.raises(ValueError, match=match):
        rio.save(m, tmp_path / "m.npz", optimizer=opt, **kw)
    assert os.listdir(tmp_path) == []


def test_unknown_entry_is_refused(tmp_path):
    bad = write_variant(tmp_path, lambda a: a.update(notes=np.array("hello")))
    with pytest.raises(ValueError, match=r"unexpected entries \['notes'\]"):
        rio.load(bad)


# -- where the file goes ------------------------------------------------------------------


def test_check_writable(tmp_path):
    rio.check_writable(tmp_path / "new.npz")
    (tmp_path / "old.npz").write_bytes(b"x")
    rio.check_writable(tmp_path / "old.npz")  # replaced atomically, like save
    assert sorted(os.listdir(tmp_path)) == ["old.npz"]
    for bad, kind in [(tmp_path / "no" / "dir" / "m.npz", FileNotFoundError), (tmp_path, IsADirectoryError)]:
        with pytest.raises(kind) as info:
            rio.check_writable(bad)
        assert info.value.filename == str(bad)


def test_save_errors_name_the_users_path(tmp_path):
    m = RNN(3, 4, 3)
    (tmp_path / "d.npz").mkdir()
    for bad in (tmp_path / "no" / "m.npz", tmp_path / "d.npz"):
        with pytest.raises(OSError) as info:
            rio.save(m, bad)
        assert info.value.filename == str(bad) and ".tmp" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["d.npz"]


def test_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """KeyboardInterrupt (or any exception) raised inside the write: the old file stays,
    the temporary file goes."""
    path = tmp_path / "m.npz"
    old = RNN(3, 4, 3, seed=0)
    rio.save(old, path)

    def interrupted_savez(f, **arrays):
        f.write(b"PK\x03\x04 part of a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(rio.np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        rio.save(RNN(3, 4, 3, seed=1), path)
    monkeypatch.undo()
    same_model(old, rio.load(path))
    assert os.listdir(tmp_path) == ["m.npz"]
# -- stacked and bidirectional models; files of format version 1 -------------------

from pathlib import Path  # noqa: E402

FORMAT1 = Path(__file__).parent / "data" / "format1_checkpoint.npz"


def same_config(a, b):
    same_model(a, b)
    assert (a.num_layers, a.bidirectional, a.dropout) == (b.num_layers, b.bidirectional, b.dropout)


@pytest.mark.parametrize(
    "kw",
    [dict(num_layers=2), dict(num_layers=3, bidirectional=True, dropout=0.25, nonlinearity="relu"),
     dict(bidirectional=True, bias=False, dtype=np.float64, batch_first=True), dict(dropout=0.5)],
    ids=["2-layers", "3-layers-bi-dropout-relu", "bi-nobias-float64-batch-first", "1-layer-dropout"],
)
def test_round_trip_stacked(tmp_path, kw):
    m = RNN(4, 5, 3, seed=1, **kw)
    path = tmp_path / "m.npz"
    rio.save(m, path)
    back = rio.load(path)
    same_config(m, back)
    with np.load(path, allow_pickle=False) as f:
        assert int(f["format_version"]) == 2
        assert int(f["config/num_layers"]) == m.num_layers
        assert sorted(n[len("param/"):] for n in f.files if n.startswith("param/")) == sorted(m.parameters())
    x = np.random.default_rng(0).integers(0, 4, size=(6, 2))
    assert back.loss(x, x % 3) == m.loss(x, x % 3)


def test_checkpoint_of_a_stacked_model(tmp_path):
    m = RNN(3, 4, 3, num_layers=2, bidirectional=True, seed=0, dtype=np.float64)
    opt = Adam(m, lr=0.01)
    rng = np.random.default_rng(0)
    for _ in range(2):
        opt.step({k: rng.standard_normal(p.shape) for k, p in m.parameters().items()})
    h = rng.standard_normal((4, 2, 4))
    path = tmp_path / "ck.npz"
    rio.save(m, path, optimizer=opt, step=2, hidden=h)
    ck = rio.load_checkpoint(path)
    same_config(m, ck.model)
    assert isinstance(ck.optimizer, Adam) and ck.optimizer.model is ck.model
    assert set(ck.optimizer.state) == set(m.parameters()) and "U_l1_reverse" in ck.optimizer.state
    for name, state in opt.state.items():
        assert ck.optimizer.state[name]["step"] == state["step"] == 2
        for slot in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(ck.optimizer.state[name][slot], state[slot])
    np.testing.assert_array_equal(ck.hidden, h)
    # the loaded optimizer takes the same next step
    g = {k: rng.standard_normal(p.shape) for k, p in m.parameters().items()}
    opt.step(g)
    ck.optimizer.step(g)
    same_config(m, ck.model)


def test_hidden_shape_follows_the_layers(tmp_path):
    one = RNN(3, 4, 3, seed=0)
    two = RNN(3, 4, 3, num_layers=2, seed=0)
    rio.save(one, tmp_path / "a.npz", hidden=np.zeros((1, 2, 4), np.float32))  # (1, B, H) also fits
    assert rio.load_checkpoint(tmp_path / "a.npz").hidden.shape == (1, 2, 4)
    with pytest.raises(ValueError, match=r"hidden must be a float32 array of shape \(2, B, 4\), got float32 \(2, 4\)"):
        rio.save(two, tmp_path / "b.npz", hidden=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"hidden must be a float32 array of shape \(2, B, 4\), got float32 \(3, 2, 4\)"):
        rio.save(two, tmp_path / "b.npz", hidden=np.zeros((3, 2, 4), np.float32))
    assert not (tmp_path / "b.npz").exists()


def test_resumed_stacked_training_with_dropout_is_identical(tmp_path):
    kw = dict(SMALL, seq_len=20, batch=6, num_layers=2, dropout=0.3)
    straight = Trainer(None, TEXT, **kw)
    straight.run(12, final_eval=False)
    assert straight.chunks_per_pass < 12

    first = Trainer(None, TEXT, **kw)
    first.run(5, final_eval=False)
    first.save(tmp_path / "ck.npz")
    ck = rio.load_checkpoint(tmp_path / "ck.npz")
    assert ck.hidden.shape == (2, 6, 8) and ck.model.dropout == 0.3
    resumed = Trainer.resume(ck, TEXT, **kw)
    resumed.run(7, final_eval=False)
    same_config(straight.model, resumed.model)
    np.testing.assert_array_equal(straight.h, resumed.h)


def test_file_of_format_version_1_loads():
    """A checkpoint written by rnn_ext before stacked models (format version 1)."""
    with np.load(FORMAT1, allow_pickle=False) as f:
        raw = {k: f[k] for k in f.files}
    assert int(raw["format_version"]) == 1 and "config/num_layers" not in raw
    ck = rio.load_checkpoint(FORMAT1)
    m = ck.model
    assert (m.num_layers, m.bidirectional, m.dropout) == (1, False, 0.0)
    assert list(m.parameters()) == ["U", "W", "V", "b", "c"]
    for name, p in m.parameters().items():
        np.testing.assert_array_equal(p, raw[f"param/{name}"])
    assert m.vocab == Vocab.from_codepoints(raw["vocab"])
    assert isinstance(ck.optimizer, Adam) and ck.optimizer.state["W"]["step"] == ck.step == 4
    np.testing.assert_array_equal(ck.optimizer.state["W"]["exp_avg"], raw["optimizer/W.exp_avg"])
    np.testing.assert_array_equal(ck.hidden, raw["hidden"])
    assert ck.hidden.shape == (3, m.hidden_size)
    # it trains on from where it stopped
    tr = Trainer.resume(ck, TEXT, hidden=6, seq_len=5, batch=3, seed=2)
    tr.run(2, final_eval=False)
    assert tr.step == 6


def format2_variant(tmp_path, edit, **kw):
    m = RNN(3, 4, 3, num_layers=2, seed=0, **kw)
    path = tmp_path / "good.npz"
    rio.save(m, path, hidden=np.zeros((2, 1, 4), np.float32))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda a: a.pop("config/num_layers"), "missing entry 'config/num_layers'"),
        (lambda a: a.pop("config/dropout"), "missing entry 'config/dropout'"),
        (lambda a: a.update({"config/num_layers": np.array(0)}), "config/num_layers must be >= 1"),
        (lambda a: a.update({"config/num_layers": np.array(2**40)}), "needs at least"),
        (lambda a: a.update({"config/num_layers": np.array(1)}), "missing entry 'param/U'"),
        (lambda a: a.update({"config/num_layers": np.array(3)}), "missing entry 'param/U_l2'"),
        (lambda a: a.update({"config/bidirectional": np.array(True)}), "needs at least 9 parameters"),
        (lambda a: a.update({"config/dropout": np.array(1.0)}), r"config/dropout must be in \[0, 1\)"),
        (lambda a: a.update({"config/dropout": np.array(np.nan)}), "config/dropout"),
        (lambda a: a.update({"config/dropout": np.array(0)}), "config/dropout.*scalar"),
        (lambda a: a.update({"param/W_l1": np.zeros((4, 3), np.float32)}), r"param/W_l1 has shape \(4, 3\)"),
        (lambda a: a.pop("param/b_l1"), "missing entry 'param/b_l1'"),
        (lambda a: a.update(hidden=np.zeros((1, 4), np.float32)), r"hidden must be a float32 array of shape \(2, B, 4\)"),
        (lambda a: a.update(format_version=np.array(1)), "not part of format version 1"),
    ],
)
def test_bad_stacked_entries_rejected(tmp_path, edit, match):
    with pytest.raises(ValueError, match=match):
        rio.load_checkpoint(format2_variant(tmp_path, edit))
