"""Hostile model files: rnn_ext.io.load refuses them, never runs their code, never crashes.

A model file is an ``.npz`` archive (rnn_ext/io.py).  Whatever is handed to
``load`` / ``load_checkpoint`` -- truncated, bit-flipped, of another format
version, holding pickles, claiming absurd shapes, with any one entry removed
or replaced by something of the wrong kind -- the outcome is ValueError (or
OSError for I/O), or a model that is exactly what was saved (a flip the
archive's CRC-32 proves harmless), or, for a well-formed file with other
values, a model that validates and runs.  A pickle payload that would create
a marker file never creates it.  And ``save`` killed at any moment leaves the
previous file intact.  Unknown entries are refused.
"""

import io as _io
import os
import pickle
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile

import numpy as np
import pytest

import rnn_ext

rio = pytest.importorskip("rnn_ext.io")

D = K = 6   # the vocabulary's size
H = 5


def child_env():
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(rnn_ext.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def a_model(seed=0, dtype=np.float32, **kw):
    return rnn_ext.RNN(D, H, K, seed=seed, dtype=dtype, **kw)


@pytest.fixture
def saved(tmp_path):
    """A saved model and its file's bytes."""
    m = a_model()
    path = tmp_path / "model.npz"
    rio.save(m, path)
    return m, path, path.read_bytes()


@pytest.fixture
def checkpoint(tmp_path):
    """A file with everything a checkpoint can hold: vocab, optimizer, step, hidden."""
    from rnn_ext import optim, text

    m = a_model(seed=1)
    m.vocab = text.Vocab("abcdef")
    opt = optim.Adam(m, lr=0.01)
    x = np.arange(12).reshape(4, 3) % D
    _, g = m.loss_and_grad(x, x)
    opt.step(g)
    path = tmp_path / "ck.npz"
    rio.save(m, path, optimizer=opt, step=7, hidden=np.zeros((3, H), np.float32))
    return m, path


def entries(path):
    """The archive's members, name -> bytes, in order."""
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def npy(a, allow_pickle=False):
    buf = _io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=allow_pickle)
    return buf.getvalue()


def npy_header_only(descr, shape, data=b""):
    """An .npy member whose header claims ``shape`` of ``descr``, followed by ``data``."""
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + data


def same_params(a, b):
    pa, pb = a.parameters(), b.parameters()
    return pa.keys() == pb.keys() and all(
        pa[n].dtype == pb[n].dtype and pa[n].tobytes() == pb[n].tobytes() for n in pa)


def outcome(path, checkpoint=False):
    """("refused", exc) or ("loaded", model or Checkpoint); anything else fails the test."""
    fn = rio.load_checkpoint if checkpoint else rio.load
    try:
        return "loaded", fn(path)
    except (ValueError, OSError) as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return "refused", exc


def assert_valid(m):
    """A loaded model is a working model: consistent shapes, finite parameters."""
    assert isinstance(m, rnn_ext.RNN)
    Dm, Hm, Km = m.input_size, m.hidden_size, m.output_size
    shapes = {"U": (Hm, Dm), "W": (Hm, Hm), "V": (Km, Hm), "b": (Hm,), "c": (Km,)}
    for n, a in m.parameters().items():
        assert a.shape == shapes[n] and a.dtype == m.dtype and np.isfinite(a).all(), n
    loss, g = m.loss_and_grad(np.zeros(3, np.int64), np.zeros(3, np.int64))
    assert np.isfinite(loss)


# --- the basics ---------------------------------------------------------------------

def test_round_trip(saved):
    m, path, _ = saved
    kind, loaded = outcome(path)
    assert kind == "loaded"
    assert same_params(loaded, m)
    assert (loaded.input_size, loaded.hidden_size, loaded.output_size) == (D, H, K)


@pytest.mark.parametrize("what", ["missing", "directory", "empty", "garbage", "npy", "text-zip",
                                  "empty-zip"])
def test_not_a_model_file(tmp_path, what):
    path = tmp_path / "f.npz"
    if what == "directory":
        path.mkdir()
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "garbage":
        path.write_bytes(random.Random(0).randbytes(5000))
    elif what == "npy":
        path.write_bytes(npy(np.zeros(3)))
    elif what == "text-zip":
        write_zip(path, {"readme.txt": b"hello"})
    elif what == "empty-zip":
        write_zip(path, {})
    kind, exc = outcome(path)
    assert kind == "refused"
    if what in ("missing", "directory"):
        assert isinstance(exc, OSError)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permission bits")
def test_unreadable_file_is_oserror(saved, tmp_path):
    """A file its reader may not read: PermissionError.  Root reads any file, so as
    root the load runs in a forked child that has dropped to the 'nobody' user."""
    _, path, data = saved
    if os.geteuid() != 0:
        path.chmod(0)
        kind, exc = outcome(path)
        assert kind == "refused" and isinstance(exc, PermissionError), exc
        return
    # a directory every user may enter, holding a file no user but root may read
    d = tempfile.mkdtemp(prefix="rnn-ext-unreadable-")
    try:
        os.chmod(d, 0o755)
        locked = os.path.join(d, "model.npz")
        with open(locked, "wb") as f:
            f.write(data)
        os.chmod(locked, 0)
        assert outcome(locked)[0] == "loaded"  # root can
        with warnings.catch_warnings():  # fork in a process with BLAS threads (3.12+ warns)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: as nobody, try the load; report by exit status
            status = 9
            try:
                os.setgid(65534)
                os.setuid(65534)
                os.stat(locked)  # the path itself is reachable ...
                try:
                    rio.load(locked)  # ... but the file may not be read
                    status = 1
                except PermissionError:
                    status = 0
                except BaseException:
                    status = 2
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "as nobody: 1 loaded, 2 other error, 9 setup"
    finally:
        shutil.rmtree(d)


# --- damaged files ---------------------------------------------------------------------

def test_truncated(saved, tmp_path):
    _, _, data = saved
    cut = tmp_path / "cut.npz"
    points = sorted({0, 1, 2, 3, 4, 5, 10, 30, 64, 100, len(data) - 1, len(data) - 22}
                    | set(range(0, len(data), max(1, len(data) // 80))))
    for n in points:
        if n >= len(data):
            continue
        cut.write_bytes(data[:n])
        kind, _ = outcome(cut)
        assert kind == "refused", f"a file cut to {n} of {len(data)} bytes was loaded"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_flips(tmp_path, dtype):
    """One flipped bit anywhere: refused, or (the archive's checksums prove the data
    intact) exactly the saved model."""
    m = a_model(seed=2, dtype=dtype)
    path = tmp_path / "m.npz"
    rio.save(m, path)
    data = bytearray(path.read_bytes())
    rng = random.Random(1)
    flipped = tmp_path / "flipped.npz"
    # the first and last bytes (magic, end-of-central-directory) and a fixed sample
    # of the rest, each with a random bit; every byte would take ~10 s
    positions = sorted(set(range(64)) | set(range(len(data) - 256, len(data)))
                       | set(rng.sample(range(len(data)), min(len(data), 600))))
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 1 << rng.randrange(8)
        flipped.write_bytes(bad)
        kind, got = outcome(flipped)
        if kind == "loaded":
            assert same_params(got, m), f"a flip at byte {pos} loaded a different model"
            assert (got.input_size, got.hidden_size, got.output_size, got.nonlinearity,
                    got.bias, got.batch_first, got.dtype) == (
                D, H, K, m.nonlinearity, m.bias, m.batch_first, m.dtype), pos


def test_random_byte_runs(saved, tmp_path):
    """Runs of random bytes written over the file: refused or the saved model."""
    m, _, data = saved
    rng = random.Random(2)
    bad_path = tmp_path / "bad.npz"
    for _ in range(300):
        bad = bytearray(data)
        start = rng.randrange(len(data))
        n = rng.choice([1, 2, 4, 8, 64])
        bad[start:start + n] = rng.randbytes(len(bad[start:start + n]))
        bad_path.write_bytes(bad)
        kind, got = outcome(bad_path)
        if kind == "loaded":
            assert same_params(got, m)


# --- crafted files -----------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, 1, 3, 99, -1, 2**63 - 1])
def test_wrong_version(saved, tmp_path, version):
    _, path, _ = saved
    members = entries(path)
    members["format_version.npy"] = npy(np.array(version, np.int64))
    write_zip(path, members)
    kind, exc = outcome(path)
    assert kind == "refused" and "version" in str(exc)


@pytest.mark.parametrize("value", [np.array("1"), np.array(1.0), np.array([1]), np.array(True),
                                   np.array(1, np.uint64)])
def test_version_of_the_wrong_kind(saved, tmp_path, value):
    _, path, _ = saved
    members = entries(path)
    members["format_version.npy"] = npy(value)
    write_zip(path, members)
    kind, _ = outcome(path)
    if kind == "loaded":  # an unsigned 1 is still version 1
        assert value.dtype.kind == "u"


class Payload:
    """Unpickling this creates ``path``: proof that a pickle was run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_payload_is_live(tmp_path):
    """The payload of the tests below does create its marker when unpickled."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("where", ["format", "format_version", "param/U", "config/dtype",
                                   "vocab", "extra"])
def test_pickled_object_arrays_are_refused_unrun(saved, tmp_path, where):
    _, path, _ = saved
    marker = tmp_path / "marker"
    members = entries(path)
    payload = np.empty(1, dtype=object)
    payload[0] = Payload(marker)
    members[where + ".npy"] = npy(payload, allow_pickle=True)
    write_zip(path, members)
    kind, exc = outcome(path)
    assert not marker.exists(), "loading the file ran its pickle"
    assert kind == "refused"


@pytest.mark.parametrize("how", ["raw-pickle", "npy-pickle", "member-raw-pickle"])
def test_pickles_in_other_wrappings(saved, tmp_path, how):
    _, path, _ = saved
    marker = tmp_path / "marker"
    blob = pickle.dumps(Payload(marker))
    if how == "raw-pickle":
        path.write_bytes(blob)
    elif how == "npy-pickle":
        payload = np.empty(1, dtype=object)
        payload[0] = Payload(marker)
        path.write_bytes(npy(payload, allow_pickle=True))
    else:
        members = entries(path)
        members["param/U.npy"] = blob
        write_zip(path, members)
    kind, _ = outcome(path)
    assert not marker.exists(), "loading the file ran its pickle"
    assert kind == "refused"


@pytest.mark.parametrize("victim", ["format.npy", "format_version.npy", "config/dtype.npy",
                                    "param/U.npy", "param/c.npy"])
def test_member_that_is_not_npy(saved, tmp_path, victim):
    """A member holding bytes that are no .npy at all (NumPy hands those back as raw bytes)."""
    _, path, _ = saved
    members = entries(path)
    members[victim] = b"this is not an npy array"
    write_zip(path, members)
    kind, _ = outcome(path)
    assert kind == "refused"


ABSURD = [
    ("<f4", (2**40, 2**40)),
    ("<f4", (2**31, 2**31)),
    ("<f4", (10**6, 10**6)),
    ("<f4", (2**62,)),
    ("<f8", (2**33,)),          # 64 GiB claimed, a few bytes present
    ("|V2147483647", (4,)),     # 2 GiB items
    ("<f4", (-1, 5)),
    ("<f4", (H, 2**40)),
]


@pytest.mark.parametrize("descr, shape", ABSURD, ids=[f"{d}{s}" for d, s in ABSURD])
@pytest.mark.parametrize("config", ["as-saved", "matching"])
def test_absurd_shapes_in_a_header(saved, tmp_path, descr, shape, config):
    """Headers claiming terabytes: refused without allocating them."""
    _, path, _ = saved
    members = entries(path)
    members["param/U.npy"] = npy_header_only(descr, shape, b"\0" * 64)
    if config == "matching" and len(shape) == 2 and min(shape) > 0:
        members["config/hidden_size.npy"] = npy(np.array(shape[0], np.int64))
        members["config/input_size.npy"] = npy(np.array(shape[1], np.int64))
    write_zip(path, members)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kind, _ = outcome(path)
    assert kind == "refused"
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak   # KiB on Linux
    # (AddressSanitizer writes shadow memory for what it does allocate)
    if os.environ.get("RNN_EXT_SANITIZED") != "1":
        assert grown < 256 * 1024, f"peak RSS grew {grown} KiB"


@pytest.mark.parametrize("size", [0, -1, 2**31, 2**62, 2**63 - 1])
def test_absurd_sizes_in_the_config(saved, tmp_path, size):
    _, path, _ = saved
    members = entries(path)
    members["config/hidden_size.npy"] = npy(np.array(size, np.int64))
    write_zip(path, members)
    kind, _ = outcome(path)
    assert kind == "refused"


def hostile_values(a):
    """Replacements for one entry's array: other kinds, shapes and values."""
    out = [np.array("text"), np.array(1.5), np.array(-3), np.array(2**62), np.array(True),
           np.zeros(0), np.zeros((2, 2, 2)), np.array(1 + 2j)]
    if a.dtype.kind in "fiu" and a.size:
        out += [a.astype(np.float64), a.astype(np.int64), a.reshape(-1)[:-1], a[..., None],
                np.concatenate([a.reshape(-1), a.reshape(-1)])]
        if a.dtype.kind == "f":
            for v in (np.nan, np.inf, -np.inf, 1e300):
                b = a.astype(np.float64).copy()
                b.flat[0] = v
                out.append(b)
        out += [-np.abs(a.astype(np.float64)) - 1, np.full_like(a, 2**31 - 1)]
    if a.dtype.kind == "U":
        out += [np.array(""), np.array("float16"), np.array("relu\0"), np.array(["tanh"])]
    return out


def test_every_entry_removed_or_replaced(checkpoint, tmp_path):
    """Each entry of a full checkpoint, in turn, removed or replaced by each hostile
    value: load_checkpoint refuses, or returns a model that validates and runs."""
    _, path = checkpoint
    members = entries(path)
    bad = tmp_path / "bad.npz"
    tried = 0
    for name in members:
        original = np.load(_io.BytesIO(members[name]), allow_pickle=False)
        for replacement in [None] + hostile_values(original):
            changed = dict(members)
            if replacement is None:
                del changed[name]
            else:
                changed[name] = npy(replacement)
            write_zip(bad, changed)
            for ck in (False, True):
                kind, got = outcome(bad, checkpoint=ck)
                tried += 1
                if kind == "loaded":
                    model = got.model if ck else got
                    assert_valid(model)
                    if ck and got.optimizer is not None:
                        # the optimizer steps; a huge lr or eps read from the file may
                        # overflow the parameters, which is arithmetic, not a crash
                        _, g = model.loss_and_grad(np.zeros(3, np.int64), np.zeros(3, np.int64))
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", RuntimeWarning)
                            got.optimizer.step(g)
                    if ck and got.hidden is not None:
                        assert got.hidden.shape[1] == model.hidden_size
                        assert np.isfinite(got.hidden).all()
    assert tried > 100


def test_extra_and_duplicate_members(saved, tmp_path):
    m, path, _ = saved
    members = entries(path)
    members["surprise.npy"] = npy(np.arange(3))
    members["param/Q.npy"] = npy(np.zeros((H, H), np.float32))
    write_zip(path, members)
    kind, got = outcome(path)
    assert kind == "refused" and "unexpected" in str(got)
    # a second member of the same name (zipfile warns; the reader must not crash)
    members = entries(tmp_path / "model.npz")
    with pytest.warns(UserWarning), zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
        z.writestr("param/U.npy", npy(np.full((H, D), np.nan, np.float32)))
    kind, got = outcome(path)
    if kind == "loaded":
        assert_valid(got)


# --- a save killed midway -------------------------------------------------------------------

WRITER = """
import sys, numpy as np, rnn_ext, rnn_ext.io as rio
path = sys.argv[1]
models = [rnn_ext.RNN(256, 768, 256, seed=s) for s in (1, 2)]
print("ready", flush=True)
i = 0
while True:
    rio.save(models[i % 2], path)
    i += 1
"""


def test_save_killed_midway_leaves_old_or_new_file(tmp_path):
    """A writer saving two ~3 MB models in turn is killed with SIGKILL at random
    moments; the file then holds one of the two models, bit for bit."""
    path = tmp_path / "model.npz"
    models = [rnn_ext.RNN(256, 768, 256, seed=s) for s in (1, 2)]
    rio.save(models[0], path)
    rng = random.Random(3)
    kills = 8
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                                env=child_env())
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        kind, got = outcome(path)
        assert kind == "loaded", f"after a kill: {got}"
        assert same_params(got, models[0]) or same_params(got, models[1])
    # SIGKILL cannot be caught, so a save killed by it can leave its temporary file
    # behind (SIGTERM and SIGINT cannot: test_interrupts.py), never a damaged model.npz
    others = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(n.startswith(".model.npz.") and n.endswith(".tmp") for n in others), others
