"""The rnn-ext command line, run as a subprocess: exit codes, messages, files written."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rnn_ext
import rnn_ext.io as rio
from rnn_ext.cli import main

TEXT = "Sing, O goddess, the anger of Achilles son of Peleus, that brought countless ills.\n" * 8
TINY = ["--hidden", "8", "--seq-len", "6", "--batch", "2", "--steps", "12", "--eval-every", "0",
        "--sample-every", "0"]


def run(*args, cwd=None, timeout=120):
    env = dict(os.environ)
    root = str(Path(rnn_ext.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONIOENCODING"] = "utf-8"
    return subprocess.run([sys.executable, "-m", "rnn_ext", *map(str, args)], capture_output=True,
                          text=True, encoding="utf-8", cwd=cwd, env=env, timeout=timeout)


def call(capsys, *args):
    """main(argv) in-process (no interpreter start-up), as a CompletedProcess."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_one_line_error(r, *fragments):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("rnn-ext: error:"), r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "text.txt").write_text(TEXT, encoding="utf-8")
    r = run("train", d / "text.txt", *TINY, "--out", d / "m.npz", cwd=d)
    assert r.returncode == 0, r.stderr
    return d, r


def test_train_writes_model_and_reports_bits_per_char(trained):
    d, r = trained
    assert "bits/char" in r.stdout and "validation loss" in r.stdout
    assert "chars/s" in r.stdout and "saved" in r.stdout
    ck = rio.load_checkpoint(d / "m.npz")
    assert ck.model.hidden_size == 8
    assert ck.model.vocab.chars == "".join(sorted(set(TEXT)))
    assert ck.step == 12 and ck.optimizer is not None
    assert "Traceback" not in r.stderr


def test_train_is_reproducible(trained, tmp_path):
    d, _ = trained
    r = run("train", d / "text.txt", *TINY, "--out", tmp_path / "again.npz", "--quiet")
    assert r.returncode == 0, r.stderr
    a, b = rio.load(d / "m.npz"), rio.load(tmp_path / "again.npz")
    for k, p in a.parameters().items():
        np.testing.assert_array_equal(p, b.parameters()[k])


def test_train_progress_and_samples(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    args = ["--hidden", "8", "--seq-len", "6", "--batch", "2", "--steps", "10", "--sample-every", "5",
            "--eval-every", "5", "--out", tmp_path / "m.npz"]
    r = run("train", tmp_path / "t.txt", *args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--- sample after") == 2
    assert "10/10" in r.stderr and "bpc" in r.stderr  # the progress bar


def test_sample_prints_prime_and_is_reproducible(trained, capsys):
    d, _ = trained
    a = run("sample", d / "m.npz", "--length", "40", "--prime", "Sing", "--seed", "1")
    b = run("sample", d / "m.npz", "--length", "40", "--prime", "Sing", "--seed", "1")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    assert a.stdout.startswith("Sing") and len(a.stdout) == 4 + 40 + 1
    g1 = call(capsys, "sample", d / "m.npz", "--length", "30", "--temperature", "0")
    g2 = call(capsys, "sample", d / "m.npz", "--length", "30", "--temperature", "0", "--seed", "5")
    assert g1.returncode == 0 and g1.stdout == g2.stdout


def test_plot(trained, tmp_path):
    d, _ = trained
    r = run("train", d / "text.txt", *TINY, "--out", tmp_path / "m.npz", "--plot", tmp_path / "loss.png",
            "--quiet")
    assert r.returncode == 0, r.stderr
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install 'rnn-ext[plot]'" in r.stderr
        assert not (tmp_path / "loss.png").exists()
    else:
        assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "m.npz").exists()


def test_default_corpus(tmp_path):
    pytest.importorskip("pydoc_data.topics")
    r = run("train", "--hidden", "4", "--steps", "2", "--eval-every", "0", "--sample-every", "0",
            "--out", tmp_path / "m.npz")
    assert r.returncode == 0, r.stderr
    assert "pydoc_data.topics" in r.stdout
    assert (tmp_path / "m.npz").exists()


def test_version_and_help(capsys):
    r = call(capsys, "--version")
    assert r.returncode == 0 and rnn_ext.__version__ in r.stdout
    r = call(capsys, "train", "--help")
    assert r.returncode == 0 and "--seq-len" in r.stdout


@pytest.mark.skipif(shutil.which("rnn-ext") is None, reason="console script not installed")
def test_console_script():
    r = subprocess.run(["rnn-ext", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "rnn-ext" in r.stdout


# -- errors: one line on stderr, exit code 2 ------------------------------------


def test_missing_file(tmp_path):
    assert_one_line_error(run("train", tmp_path / "nope.txt", *TINY), "nope.txt")


def test_empty_file(tmp_path):
    (tmp_path / "e.txt").write_bytes(b"")
    assert_one_line_error(run("train", tmp_path / "e.txt", *TINY), "empty")


def test_binary_file(tmp_path, capsys):
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 4)
    assert_one_line_error(run("train", tmp_path / "b.bin", *TINY), "binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    assert_one_line_error(call(capsys, "train", tmp_path / "latin1.txt", *TINY), "not UTF-8")


def test_text_shorter_than_one_chunk(tmp_path, capsys):
    (tmp_path / "s.txt").write_text("just a few words\n", encoding="utf-8")
    r = call(capsys, "train", tmp_path / "s.txt", "--seq-len", "25", "--batch", "32")
    assert_one_line_error(r, "too short")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--hidden", "0"], "--hidden"),
        (["--seq-len", "-3"], "--seq-len"),
        (["--batch", "x"], "--batch"),
        (["--steps", "0"], "--steps"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-1e-3"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--clip", "-5"], "--clip"),
        (["--val-fraction", "1"], "--val-fraction"),
        (["--optimizer", "lbfgs"], "--optimizer"),
        (["--optimizer", "sgd"], "--lr"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_options(trained, args, fragment, capsys):
    # In-process to keep the suite fast; the subprocess tests cover this path end to end.
    d, _ = trained
    assert_one_line_error(call(capsys, "train", d / "text.txt", *TINY, *args, "--out", d / "x.npz"), fragment)
    assert not (d / "x.npz").exists()


def test_sample_errors(trained, tmp_path, capsys):
    d, _ = trained
    assert_one_line_error(run("sample", tmp_path / "missing.npz"), "missing.npz")
    data = (d / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run("sample", tmp_path / "cut.npz"), "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a model at all")
    assert_one_line_error(call(capsys, "sample", tmp_path / "junk.npz"), "not an rnn_ext model file")
    assert_one_line_error(call(capsys, "sample", d / "m.npz", "--prime", "Zzz~"), "not in the vocabulary")
    assert_one_line_error(call(capsys, "sample", d / "m.npz", "--temperature", "-1"), "--temperature")
    assert_one_line_error(call(capsys, "sample", d / "m.npz", "--length", "-5"), "--length")
    bare = rnn_ext.RNN(3, 4, 3)
    bare.save(tmp_path / "bare.npz")
    assert_one_line_error(call(capsys, "sample", tmp_path / "bare.npz"), "no vocabulary")


def test_no_command(capsys):
    r = call(capsys)
    assert r.returncode == 2 and "train" in r.stderr


# -- options that change the result: each checked against the library -------------------


def reference_trainer(text, *args):
    """The Trainer `rnn-ext train` builds for these options, run as the command runs it."""
    from rnn_ext.cli import build_parser, trainer_options
    from rnn_ext.training import Trainer

    opts = build_parser().parse_args(["train", "x.txt", *map(str, args)])
    tr = Trainer(None, text, **trainer_options(opts))
    tr.run(opts.steps, eval_every=None, final_eval=False)
    return tr


def assert_same_params(model, tr):
    assert model.dtype == tr.model.dtype
    for k, p in tr.model.parameters().items():
        np.testing.assert_array_equal(model.parameters()[k], p, err_msg=k)


def differs(model, tr):
    return any(not np.array_equal(model.parameters()[k], p) for k, p in tr.model.parameters().items())


@pytest.mark.parametrize("extra", [["--dtype", "float64"], ["--clip-norm", "0.05"],
                                   ["--optimizer", "sgd", "--lr", "0.5", "--clip", "0"]],
                         ids=["dtype", "clip-norm", "sgd-no-clip"])
def test_training_options_reach_the_trainer(trained, tmp_path, capsys, extra):
    """The file equals the library's Trainer with the same options, and not the one without."""
    d, _ = trained
    r = call(capsys, "train", d / "text.txt", *TINY, *extra, "--out", tmp_path / "m.npz", "--quiet")
    assert r.returncode == 0, r.stderr
    m = rio.load(tmp_path / "m.npz")
    assert_same_params(m, reference_trainer(TEXT, *TINY, *extra))
    assert differs(m, reference_trainer(TEXT, *TINY)) or m.dtype != np.float32
    if extra[:2] == ["--dtype", "float64"]:
        assert m.dtype == np.float64


def test_threads_option_holds_during_training_only(trained, tmp_path, capsys, monkeypatch):
    from rnn_ext import _threads
    from rnn_ext.training import Trainer

    d, _ = trained
    seen = []
    real = Trainer._prepare_step

    def spy(self):
        seen.append(_threads.get_num_threads())
        return real(self)

    monkeypatch.setattr(Trainer, "_prepare_step", spy)
    before = _threads.get_num_threads()
    r = call(capsys, "train", d / "text.txt", *TINY, "--threads", "1", "--out", tmp_path / "m.npz")
    assert r.returncode == 0, r.stderr
    assert seen == [1] * 12
    assert "1 BLAS threads" in r.stdout
    assert _threads.get_num_threads() == before  # the process-wide setting is back


def test_sample_top_k(trained, capsys):
    from rnn_ext.text import sample

    d, _ = trained
    greedy = call(capsys, "sample", d / "m.npz", "--length", "40", "--temperature", "0")
    top1 = call(capsys, "sample", d / "m.npz", "--length", "40", "--temperature", "3", "--top-k", "1",
                "--seed", "4")
    assert top1.returncode == 0 and top1.stdout == greedy.stdout
    top3 = call(capsys, "sample", d / "m.npz", "--length", "40", "--temperature", "3", "--top-k", "3",
                "--seed", "4")
    m = rio.load(d / "m.npz")
    assert top3.stdout == sample(m, length=40, temperature=3.0, top_k=3, seed=4) + "\n"
    assert top3.stdout != greedy.stdout


def test_sample_tiny_temperature_is_greedy(trained):
    d, _ = trained
    greedy = run("sample", d / "m.npz", "--length", "40", "--temperature", "0")
    tiny = run("sample", d / "m.npz", "--length", "40", "--temperature", "1e-310", "--seed", "2")
    assert tiny.returncode == 0 and tiny.stderr == ""  # no RuntimeWarning
    assert tiny.stdout == greedy.stdout


# -- checked before any work ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "plot-missing-dir"])
def test_output_paths_checked_before_training(trained, tmp_path, capsys, where):
    d, _ = trained
    out = tmp_path / "m.npz"
    args = ["train", d / "text.txt", *TINY, "--steps", "20000", "--quiet"]
    if where == "missing-dir":
        out = tmp_path / "no" / "such" / "m.npz"
    elif where == "a-directory":
        out = tmp_path
    else:
        args += ["--plot", tmp_path / "no" / "loss.png"]
    r = call(capsys, *args, "--out", out)  # 20 000 steps (seconds): only a check before training returns at once
    option = "--plot" if where.startswith("plot") else "--out"
    bad = tmp_path / "no" / "loss.png" if where.startswith("plot") else out
    assert_one_line_error(r, option, str(bad))
    assert ".tmp" not in r.stderr
    assert r.stdout == ""
    assert os.listdir(tmp_path) == ([] if where != "a-directory" else [])


@pytest.mark.parametrize("args, fragment", [
    (["train", "--hidden", "100000"], "hidden=100000"),
    (["train", "--hidden", "1e5"], "hidden=100000"),
    (["sample", "--length", "1e12"], "--length 1000000000000"),
    (["sample", "--length", "1000000000000"], "--length 1000000000000"),
])
def test_sizes_beyond_memory_are_one_line(trained, tmp_path, capsys, args, fragment):
    d, _ = trained
    where = [d / "text.txt", *TINY, "--out", tmp_path / "m.npz"] if args[0] == "train" else [d / "m.npz"]
    r = call(capsys, args[0], *where, *args[1:])
    assert_one_line_error(r, fragment, "memory")
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("command", ["train", "sample"])
def test_negative_seed_names_the_option(trained, tmp_path, capsys, command):
    d, _ = trained
    where = [d / "text.txt", "--out", tmp_path / "m.npz"] if command == "train" else [d / "m.npz"]
    assert_one_line_error(call(capsys, command, *where, "--seed", "-1"), "--seed", "-1")


def test_divergence_is_one_line_and_keeps_the_old_file(trained, tmp_path, capsys):
    """SGD with a huge rate overflows at once: exit 1, one line naming the step, and the
    file already at --out (the last good checkpoint) is left as it was."""
    d, _ = trained
    out = tmp_path / "m.npz"
    out.write_bytes((d / "m.npz").read_bytes())
    r = call(capsys, "train", d / "text.txt", *TINY, "--optimizer", "sgd", "--lr", "1e38", "--clip", "0",
             "--quiet", "--out", out)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnn-ext: error: training diverged at step ")
    assert f"{out} was not written" in lines[0]
    assert out.read_bytes() == (d / "m.npz").read_bytes()
    assert os.listdir(tmp_path) == ["m.npz"]
# -- stacked models ---------------------------------------------------------------------


def test_train_layers_and_dropout_then_sample(tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    r = call(capsys, "train", tmp_path / "t.txt", *TINY, "--layers", "2", "--dropout", "0.2",
             "--quiet", "--out", tmp_path / "m.npz")
    assert r.returncode == 0, r.stderr
    ck = rio.load_checkpoint(tmp_path / "m.npz")
    m = ck.model
    assert (m.num_layers, m.dropout, m.bidirectional) == (2, 0.2, False)
    assert "W_l1" in m.parameters() and ck.hidden.shape == (2, 2, 8)
    a = call(capsys, "sample", tmp_path / "m.npz", "--length", "25", "--prime", "Sing", "--seed", "3")
    b = call(capsys, "sample", tmp_path / "m.npz", "--length", "25", "--prime", "Sing", "--seed", "3")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("Sing") and len(a.stdout) == 4 + 25 + 1
    # the same run again: the dropout masks come from --seed
    r = call(capsys, "train", tmp_path / "t.txt", *TINY, "--layers", "2", "--dropout", "0.2",
             "--quiet", "--out", tmp_path / "again.npz")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(rio.load(tmp_path / "again.npz").flat, m.flat)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--layers", "0"], "--layers"),
        (["--layers", "two"], "--layers"),
        (["--layers", "2", "--dropout", "1"], "--dropout"),
        (["--layers", "2", "--dropout", "-0.1"], "--dropout"),
        (["--layers", "2", "--dropout", "nan"], "--dropout"),
        (["--dropout", "0.5"], "--dropout 0.5 acts between layers: it needs --layers 2"),
    ],
)
def test_bad_layer_options(trained, args, fragment, capsys):
    d, _ = trained
    assert_one_line_error(call(capsys, "train", d / "text.txt", *TINY, *args, "--out", d / "y.npz"), fragment)
    assert not (d / "y.npz").exists()


def test_sample_refuses_a_bidirectional_model(tmp_path, capsys):
    from rnn_ext.text import Vocab

    v = Vocab("abc")
    m = rnn_ext.RNN(3, 4, 3, bidirectional=True, seed=0)
    m.vocab = v
    m.save(tmp_path / "bi.npz")
    assert_one_line_error(call(capsys, "sample", tmp_path / "bi.npz"), "bidirectional")
