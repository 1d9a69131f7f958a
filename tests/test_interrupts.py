"""SIGINT and SIGTERM never leave a half-applied step or a half-written file.

A Python signal handler runs between two bytecodes of the main thread.  The
tests here deliver a real SIGINT (``signal.raise_signal``) at every line a
training step or a save executes, from a trace function, so the handler
runs exactly there, as a Ctrl-C landing at that moment would.  Each time,
the interrupt must act (KeyboardInterrupt), and the checkpoint saved
afterwards must load and resume to exactly the result of an uninterrupted
run.  The command line is interrupted for real, by SIGINT and SIGTERM.
"""

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import rnn_ext
import rnn_ext.io as rio
from rnn_ext._signals import deferred
from rnn_ext.training import Trainer

TEXT = ("the cat sat on the mat. the dog sat on the log. " * 12) + "a cat and a dog.\n" * 6
KW = dict(hidden=6, seq_len=5, batch=3, seed=1, dtype=np.float64, optimizer="adam", lr=1e-2)
START, EXTRA = 3, 3  # checkpoint after START steps; compare after START + EXTRA
RNN_EXT_DIR = os.path.dirname(os.path.abspath(rnn_ext.__file__))
SAVE_CODE = tuple(os.path.join(RNN_EXT_DIR, f) for f in ("io.py", "_signals.py", "training.py"))
posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals to a child process")


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt, as in any Python program (whatever pytest set)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def state(tr):
    """Everything a checkpoint holds, as plain arrays."""
    opt = {k: np.asarray(v) for k, v in tr.optimizer.state_dict().items()}
    return tr.step, {k: p.copy() for k, p in tr.model.parameters().items()}, opt, \
        None if tr.h is None else tr.h.copy()


def same_state(a, b):
    (sa, pa, oa, ha), (sb, pb, ob, hb) = a, b
    return (sa == sb and pa.keys() == pb.keys() and all(np.array_equal(pa[k], pb[k]) for k in pa)
            and oa.keys() == ob.keys() and all(np.array_equal(oa[k], ob[k]) for k in oa)
            and (ha is None) == (hb is None) and (ha is None or np.array_equal(ha, hb)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A checkpoint after START steps, and the states after START..START+EXTRA steps."""
    path = tmp_path_factory.mktemp("ref") / "start.npz"
    tr = Trainer(None, TEXT, **KW)
    tr.run(START, eval_every=None, final_eval=False)
    tr.save(path)
    states = {START: state(tr)}
    for _ in range(EXTRA):
        tr.train_step()
        states[tr.step] = state(tr)
    return path, states


def resumed(path):
    return Trainer.resume(rio.load_checkpoint(path), TEXT, **KW)


def assert_resumes_to_reference(path, states):
    """The file loads, holds one of the reference states, and resumes to the final one."""
    tr = resumed(path)
    assert tr.step in states, tr.step
    assert same_state(state(tr), states[tr.step]), f"the file's step-{tr.step} state is not the reference"
    tr.run(START + EXTRA - tr.step, eval_every=None, final_eval=False)
    assert same_state(state(tr), states[START + EXTRA])


class LineSignal:
    """Raise SIGINT at the n-th 'line' event of a call (n = None: only count them)."""

    def __init__(self, at=None, only=None):
        self.at, self.only, self.count = at, only, 0

    def __call__(self, frame, event, arg):
        if event == "line" and (self.only is None or frame.f_code.co_filename.startswith(self.only)):
            if self.count == self.at:
                signal.raise_signal(signal.SIGINT)
            self.count += 1
        return self

    def run(self, fn):
        """fn() traced; True if a KeyboardInterrupt came out of it (by the end of this call).

        A watchdog (SIGALRM, where there is one) turns a hang into a failure: an
        interrupt that leaves a lock held deadlocks the next call."""
        def hung(signum, frame):
            raise AssertionError(f"a SIGINT at line event {self.at} left the process hung")

        watchdog = hasattr(signal, "setitimer")
        if watchdog:
            old = signal.signal(signal.SIGALRM, hung)
            signal.setitimer(signal.ITIMER_REAL, 20.0)
        try:
            try:
                sys.settrace(self)
                try:
                    fn()
                finally:
                    sys.settrace(None)
            except KeyboardInterrupt:
                return True
            return False
        finally:
            if watchdog:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)


def points(n, stride):
    """Injection points: every one of the first and last 64, and every stride-th between."""
    return sorted(set(range(min(n, 64))) | set(range(max(0, n - 64), n)) | set(range(0, n, stride)))


def test_interrupt_at_every_line_of_a_training_step(reference, tmp_path, sigint_raises):
    """SIGINT at each line of run(1): the step happened wholly or not at all."""
    path, states = reference
    probe, tr = LineSignal(), resumed(path)
    probe.run(lambda: tr.run(1, eval_every=None, final_eval=False))
    n = probe.count
    assert n > 300  # the gradient pass, the optimizer step, the bookkeeping
    out = tmp_path / "ck.npz"
    after = {START: 0, START + 1: 0}
    for i, at in enumerate(points(n, 1)):
        tr = resumed(path)
        interrupted = LineSignal(at).run(lambda tr=tr: tr.run(1, eval_every=None, final_eval=False))
        assert interrupted, f"a SIGINT at line event {at} of {n} was lost"
        after[tr.step] += 1
        assert same_state(state(tr), states[tr.step]), f"SIGINT at {at} of {n}: not a reference state"
        assert len(tr.history.loss) == tr.step - START  # the history saw the same steps
        if i % 8 == 0:  # and through a file (the save itself is interrupted below)
            tr.save(out)
            assert_resumes_to_reference(out, states)
    # both outcomes occur: an interrupt before the step stops run() there; one
    # anywhere in the step (gradient pass, update, bookkeeping) acts just after it
    assert after[START] > 0 and after[START + 1] > 0, after


def test_interrupt_at_every_line_of_train_step(reference, sigint_raises):
    path, states = reference
    probe, tr = LineSignal(), resumed(path)
    probe.run(tr.train_step)
    for at in points(probe.count, 5):
        tr = resumed(path)
        assert LineSignal(at).run(tr.train_step), at
        assert same_state(state(tr), states[tr.step]), f"SIGINT at {at}: not a reference state"


def test_interrupt_at_every_line_of_a_save(reference, tmp_path, sigint_raises):
    """SIGINT at each line of a save over an older checkpoint: the file is the old
    or the new checkpoint, never a mixture, never missing, and no temporary file stays."""
    path, states = reference
    out = tmp_path / "ck.npz"
    tr = resumed(path)
    tr.save(out)  # the old file: step START
    old = out.read_bytes()
    tr.train_step()  # the new state: step START + 1
    probe = LineSignal(only=SAVE_CODE)
    probe.run(lambda: tr.save(out))
    mine = probe.count  # lines of the save's own code
    probe = LineSignal()
    probe.run(lambda: tr.save(out))
    total = probe.count  # with NumPy's and zipfile's
    assert mine > 20 and total > mine
    seen = {START: 0, START + 1: 0}
    for only, n, stride in ((SAVE_CODE, mine, 1), (None, total, 199)):
        for i, at in enumerate(points(n, stride)):
            out.write_bytes(old)
            assert LineSignal(at, only).run(lambda: tr.save(out)), f"SIGINT at {at} of {n} lost"
            assert sorted(os.listdir(tmp_path)) == ["ck.npz"], os.listdir(tmp_path)
            got = state(resumed(out))
            seen[got[0]] += 1
            assert same_state(got, states[got[0]]), f"SIGINT at {at} of {n}: not a reference state"
            if i % 16 == 0:
                assert_resumes_to_reference(out, states)
    # an interrupt while the save checks its arrays stops it before a byte is
    # written; one while it writes acts once the new file is in place
    assert seen[START] > 0 and seen[START + 1] > 0, seen


# -- the deferral itself ---------------------------------------------------------------


def test_deferred_holds_signals_until_the_block_ends(sigint_raises):
    got = []
    old_term = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGTERM)
                for _ in range(1000):  # plenty of chances for a handler to run here
                    pass
                got.append("end of block")
        assert got == ["end of block"]  # SIGINT came first, and raised
        with deferred():
            signal.raise_signal(signal.SIGTERM)
            got.append("end of block 2")
        assert got == ["end of block", "end of block 2", signal.SIGTERM]
        # the handlers are the ones from before
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        with deferred():  # nested: the inner block hands the signal to the outer one
            with deferred():
                signal.raise_signal(signal.SIGTERM)
            got.append("between")
        assert got[-2:] == ["between", signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, old_term)


def test_deferred_leaves_ignored_signals_and_other_threads_alone(sigint_raises):
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with deferred():
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
            signal.raise_signal(signal.SIGTERM)  # ignored, before and after
    finally:
        signal.signal(signal.SIGTERM, old)
    errors = []

    def worker():
        try:
            with deferred():  # signal.signal would raise ValueError outside the main thread
                pass
        except BaseException as exc:  # pragma: no cover - the failure path
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == []


# -- the command line, interrupted for real ---------------------------------------------

CLI_OPTS = ["--hidden", "8", "--seq-len", "6", "--batch", "2", "--steps", "1000000", "--eval-every", "40",
            "--sample-every", "0", "--seed", "3"]


def cli_env():
    env = dict(os.environ)
    root = str(Path(rnn_ext.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli_reference(steps):
    tr = Trainer(None, TEXT * 4, hidden=8, seq_len=6, batch=2, seed=3, optimizer="adam", lr=None,
                 clip=5.0, clip_norm=None, val_fraction=0.1, dtype=np.float32)
    tr.run(steps, eval_every=None, final_eval=False)
    return tr


@posix_signals
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_signal_saves_one_consistent_state(tmp_path, sig, status):
    """A signal during training: exit 130/143, one line, and the file is exactly the
    state after the step it reports (checked against an uninterrupted in-process run)."""
    (tmp_path / "t.txt").write_text(TEXT * 4, encoding="utf-8")
    out = tmp_path / "m.npz"
    rng = random.Random(sig)
    for _ in range(1):
        proc = subprocess.Popen([sys.executable, "-m", "rnn_ext", "train", tmp_path / "t.txt", *CLI_OPTS,
                                 "--out", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env(), cwd=tmp_path)
        try:
            assert proc.stdout.readline().startswith(str(tmp_path / "t.txt"))
            assert proc.stdout.readline().startswith("model:")  # training is starting
            threading.Event().wait(rng.uniform(0.2, 0.6))
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == status, err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"interrupted ({sig.name}) after "), err
        assert "Traceback" not in err
        ck = rio.load_checkpoint(out)
        assert last == f"interrupted ({sig.name}) after {ck.step} steps"
        assert ck.step > 0
        ref = cli_reference(ck.step)
        for k, p in ref.model.parameters().items():
            np.testing.assert_array_equal(ck.model.parameters()[k], p, err_msg=k)
        for k, v in ref.optimizer.state_dict().items():
            np.testing.assert_array_equal(np.asarray(ck.optimizer.state_dict()[k]), np.asarray(v), err_msg=k)
        np.testing.assert_array_equal(ck.hidden, ref.h)
        assert sorted(os.listdir(tmp_path)) == ["m.npz", "t.txt"]


def test_cli_interrupt_before_training_is_one_line(tmp_path, monkeypatch, capsys, sigint_raises):
    """A Ctrl-C while the text is read, or the model built: one line, exit 130, nothing written."""
    from rnn_ext import cli

    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    real_read = cli._read_text

    def read_then_ctrl_c(path):
        text = real_read(path)
        signal.raise_signal(signal.SIGINT)
        return text

    monkeypatch.setattr(cli, "_read_text", read_then_ctrl_c)
    code = cli.main(["train", str(tmp_path / "t.txt"), "--out", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert code == 130
    assert err.strip().splitlines() == ["rnn-ext: interrupted (SIGINT)"]
    assert not (tmp_path / "m.npz").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


SAVER = """
import sys, numpy as np, rnn_ext, rnn_ext.io as rio
path = sys.argv[1]
models = [rnn_ext.RNN(256, 768, 256, seed=s) for s in (1, 2)]
print("ready", flush=True)
i = 0
while True:
    rio.save(models[i % 2], path)
    i += 1
"""


@posix_signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_save_leaves_no_temporary_file(tmp_path, sig):
    """A process saving ~3 MB models in a loop, stopped by SIGTERM (default action:
    terminate) or SIGINT: the file loads as one of the two models and no temporary
    file is left (SIGKILL, which nothing can catch, is in test_hostile_files.py)."""
    path = tmp_path / "model.npz"
    rng = random.Random(sig)
    for _ in range(2 if sig == signal.SIGTERM else 1):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=cli_env())
        try:
            assert proc.stdout.readline().strip() == b"ready"
            threading.Event().wait(rng.uniform(0.05, 0.3))
            proc.send_signal(sig)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode in (-sig, 1), proc.returncode  # 1: KeyboardInterrupt's traceback
        m = rio.load(path)
        assert m.hidden_size == 768
        assert os.listdir(tmp_path) == ["model.npz"], os.listdir(tmp_path)
