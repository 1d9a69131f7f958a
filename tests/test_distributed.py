"""rnn_ext.distributed on a LocalCluster: the same numbers as one process.

One cluster (two worker processes, one thread each, on loopback) serves the
whole module.  Distributed results are held against the single-process ones
with the per-dtype tolerances of summing shard gradients in a different
order (rnn_ext.distributed's docstring); a worker killed mid-training must
not change the outcome at all.
"""

import inspect
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import rnn_ext  # noqa: E402
import rnn_ext.distributed as rd  # noqa: E402
from rnn_ext import training  # noqa: E402
from rnn_ext.io import load, load_checkpoint  # noqa: E402

# max |a - b| / max |a| per array: one step's difference in summation order
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
# the same after 20 training steps (losses and parameters); in float32 the
# parameters are compared norm-wise: Adagrad's and Adam's first steps are
# +-lr for every entry, so an entry whose gradient is at rounding level can
# step the other way (measured: ~2e-5 on the losses, ~3e-4 norm-wise and
# ~2e-3 max-abs on the parameters with Adagrad)
TRAIN_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-11}
PARAM_NORM_RTOL32 = 2e-3
GRAD_NAMES = ("U", "W", "V", "b", "c", "h0", "x", "h_last")
D, H, K = 5, 7, 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=":0")
    client = distributed.Client(cluster)
    client.wait_for_workers(2, timeout=30)
    yield client
    client.close()
    cluster.close()


def assert_close(actual, expected, rtol, what="", norm=False):
    """max |a - b| / max |b| <= rtol (or ||a - b|| / ||b|| with norm=True)."""
    if expected is None:
        assert actual is None, what
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    diff = actual.astype(np.float64) - expected
    if norm:
        err = float(np.linalg.norm(diff)) / max(float(np.linalg.norm(expected)), 1e-300)
    else:
        scale = max(float(np.max(np.abs(expected), initial=0.0)), np.finfo(expected.dtype).tiny)
        err = float(np.max(np.abs(diff), initial=0.0)) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


# -- loss_and_grad --------------------------------------------------------------

CASES = [
    # (kind, B, dtype, options)
    ("ids", 4, np.float64, {}),
    ("ids", 5, np.float64, {"reduction": "mean"}),
    ("ids", 1, np.float64, {}),  # fewer sequences than workers
    ("ids", 3, np.float64, {"lengths": True, "reduction": "mean"}),
    ("ids", 5, np.float64, {"ignore": True, "reduction": "mean"}),
    ("ids", 5, np.float64, {"ignore": True, "lengths": True}),
    ("ids", 3, np.float64, {"h0": True, "batch_first": True}),
    ("ids", 3, np.float64, {"bias": False, "nonlinearity": "relu"}),
    ("ids", 0, np.float64, {}),  # unbatched (T,)
    ("float", 4, np.float64, {}),
    ("float", 5, np.float64, {"reduction": "mean", "h0": True}),
    ("float", 1, np.float64, {"reduction": "mean"}),
    ("float", 3, np.float64, {"lengths": True, "batch_first": True, "reduction": "mean"}),
    ("float", 3, np.float64, {"soft": True}),
    ("float", 0, np.float64, {"h0": True}),
    ("ids", 5, np.float32, {"reduction": "mean"}),
    ("float", 3, np.float32, {"lengths": True, "h0": True}),
]


def make_case(kind, B, dtype, opts, T=6, seed=0):
    rng = np.random.default_rng(seed)
    model = rnn_ext.RNN(D, H, K, dtype=dtype, seed=seed, bias=opts.get("bias", True),
                        nonlinearity=opts.get("nonlinearity", "tanh"),
                        batch_first=opts.get("batch_first", False))
    b = max(B, 1)
    x = rng.integers(0, D, size=(T, b)) if kind == "ids" else rng.normal(size=(T, b, D))
    y = rng.integers(0, K, size=(T, b))
    kw = {"reduction": opts.get("reduction", "sum")}
    if opts.get("soft"):
        y = rng.dirichlet(np.ones(K), size=(T, b))
    if opts.get("ignore"):
        y[rng.random(size=(T, b)) < 0.3] = -1
        y[:, -1] = -1  # a whole sequence (the last shard's) counts nothing
        kw["ignore_index"] = -1
    if opts.get("lengths"):
        kw["lengths"] = rng.integers(1, T + 1, size=b)
    if opts.get("h0"):
        kw["h0"] = rng.normal(size=(b, H)) * 0.5
    if B == 0:
        x, y = x[:, 0], y[:, 0]
        if "h0" in kw:
            kw["h0"] = kw["h0"][0]
    elif opts.get("batch_first"):
        x, y = np.swapaxes(x, 0, 1), np.swapaxes(y, 0, 1)
    return model, x, y, kw


@pytest.mark.parametrize("kind,B,dtype,opts", CASES, ids=[
    f"{k}-B{b}-{np.dtype(d).name}-{'-'.join(sorted(o)) or 'plain'}" for k, b, d, o in CASES])
def test_loss_and_grad_matches_one_process(client, kind, B, dtype, opts):
    model, x, y, kw = make_case(kind, B, dtype, opts)
    loss, g = model.loss_and_grad(x, y, **kw)
    dloss, dg = rd.loss_and_grad(model, x, y, client=client, **kw)
    if B <= 1:  # one shard: the worker makes the local call itself
        assert dloss == loss
        for name in GRAD_NAMES:
            a, b = getattr(dg, name), getattr(g, name)
            assert (a is None and b is None) or np.array_equal(a, b), name
        return
    rtol = RTOL[np.dtype(dtype)]
    assert isinstance(dloss, float)
    assert abs(dloss - loss) <= rtol * max(abs(loss), 1e-300), (dloss, loss)
    for name in GRAD_NAMES:
        assert_close(getattr(dg, name), getattr(g, name), rtol, name)


def test_mean_with_no_counted_target(client):
    model, x, y, _ = make_case("ids", 3, np.float64, {})
    y[:] = -100
    loss, g = rd.loss_and_grad(model, x, y, reduction="mean", client=client)
    assert loss == 0.0
    assert not any(np.any(a) for a in g.parameters().values())


def test_loss_and_grad_validates_before_sending(client):
    model, x, y, _ = make_case("ids", 3, np.float64, {})
    with pytest.raises(ValueError, match="input_size"):
        rd.loss_and_grad(model, x + D, y, client=client)
    with pytest.raises(ValueError, match="reduction"):
        rd.loss_and_grad(model, x, y, reduction="avg", client=client)


# -- training ---------------------------------------------------------------------

TEXT = "\n".join(
    f"{i:3d} the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs"
    for i in range(60)
)
TRAIN = {"hidden": 16, "seq_len": 8, "batch": 5, "steps": 20, "eval_every": 10, "seed": 3,
         "optimizer": "adam", "lr": 1e-2, "clip": 1.0}


def assert_same_run(hist, ref, rtol, param_rtol=None):
    assert len(hist.loss) == len(ref.loss) == hist.step
    assert_close(hist.loss, ref.loss, rtol, "loss")
    assert_close(hist.smooth_loss, ref.smooth_loss, rtol, "smooth_loss")
    assert hist.val_steps == ref.val_steps
    assert_close(hist.val_loss, ref.val_loss, rtol, "val_loss")
    assert abs(hist.train_loss - ref.train_loss) <= rtol * ref.train_loss
    assert hist.chars == ref.chars
    for name, p in ref.model.parameters().items():
        assert_close(hist.model.parameters()[name], p, param_rtol or rtol, name,
                     norm=param_rtol is not None)
    assert hist.model.vocab == ref.vocab


@pytest.fixture(scope="module")
def local_run():
    return training.train(None, TEXT, dtype=np.float64, **TRAIN)


@pytest.fixture(scope="module")
def cluster_run(client):
    return rd.train(None, TEXT, client=client, dtype=np.float64, **TRAIN)


def test_training_matches_one_process_float64(local_run, cluster_run):
    assert_same_run(cluster_run, local_run, TRAIN_RTOL[np.dtype(np.float64)])


@pytest.mark.parametrize("optimizer,lr", [("adagrad", 0.1), ("adam", 1e-2)])
def test_training_matches_one_process_float32(client, optimizer, lr):
    opts = dict(TRAIN, optimizer=optimizer, lr=lr)
    ref = training.train(None, TEXT, dtype=np.float32, **opts)
    hist = rd.train(None, TEXT, client=client, dtype=np.float32, **opts)
    assert_same_run(hist, ref, TRAIN_RTOL[np.dtype(np.float32)], PARAM_NORM_RTOL32)


def test_training_batch_smaller_than_workers(client):
    opts = dict(TRAIN, batch=1, steps=6, eval_every=0)
    ref = training.train(None, TEXT, dtype=np.float64, **opts)
    with rd.DistributedTrainer(None, TEXT, client=client, dtype=np.float64,
                               **{k: v for k, v in opts.items() if k not in ("steps", "eval_every")}) as tr:
        assert len(tr.shards) == 1
        hist = tr.run(6, eval_every=0)
    # one shard runs the Trainer's own call on the worker: the same numbers exactly
    assert hist.loss == ref.loss
    for name, p in ref.model.parameters().items():
        np.testing.assert_array_equal(hist.model.parameters()[name], p, err_msg=name)


def test_train_takes_the_local_options():
    """rd.train forwards every option of training.train (to Trainer and Trainer.run)."""
    local = set(inspect.signature(training.train).parameters) - {"model", "text"}
    init = set(inspect.signature(training.Trainer).parameters)
    run = set(inspect.signature(training.Trainer.run).parameters) - {"self"}
    mine = set(inspect.signature(rd.train).parameters) - {"model", "text", "client", "options"}
    assert mine == run
    assert local <= init | run


def test_resume_continues_like_one_process(client, tmp_path):
    opts = {k: v for k, v in TRAIN.items() if k not in ("steps", "eval_every")}
    ref = training.Trainer(None, TEXT, dtype=np.float64, **opts)
    ref.run(7, final_eval=False)
    ref.save(tmp_path / "ck.npz")
    ref.run(5, final_eval=False)
    ck = load_checkpoint(tmp_path / "ck.npz")
    with rd.DistributedTrainer.resume(ck, TEXT, client=client, **opts) as tr:
        tr.run(5, final_eval=False)
    for name, p in ref.model.parameters().items():
        assert_close(tr.model.parameters()[name], p, TRAIN_RTOL[np.dtype(np.float64)], name)
    assert_close(tr.h, ref.h, TRAIN_RTOL[np.dtype(np.float64)], "h")


def test_traffic_is_parameters_out_and_gradients_back(client):
    opts = {k: v for k, v in TRAIN.items() if k not in ("steps", "eval_every")}
    with rd.DistributedTrainer(None, TEXT, client=client, dtype=np.float64, **opts) as tr:
        sent0 = tr.traffic["sent"]  # the shards, once
        assert sent0 == tr.streams.nbytes
        tr.run(3, eval_every=0, final_eval=False)
        n_params = sum(p.size for p in tr.model.parameters().values())
        h_bytes = tr.batch * tr.model.hidden_size * 8
        assert tr.traffic["passes"] == 3
        assert tr.traffic["sent"] - sent0 == 3 * n_params * 8
        assert tr.traffic["received"] == 3 * (n_params * 8 + h_bytes + 16)


# -- faults -------------------------------------------------------------------------


def test_worker_killed_during_training(client, local_run, cluster_run):
    pids = client.run(os.getpid)
    killed = {}
    trainers = []

    def kill_at_step_7(info):
        trainers.append(info.trainer)
        if info.step == 7:
            address = info.trainer.shards[1][2]
            killed[address] = pids[address]
            os.kill(pids[address], signal.SIGKILL)
        return False

    try:
        hist = rd.train(None, TEXT, client=client, dtype=np.float64, callback=kill_at_step_7, **TRAIN)
    finally:
        client.wait_for_workers(2, timeout=60)  # the nanny restarts it for the tests after this one
    assert killed
    (address,) = killed
    assert address not in [w for _, _, w in trainers[-1].shards]
    assert address not in client.nthreads()
    # the undisturbed distributed run, bit for bit, and the one-process run to rounding
    for name, p in cluster_run.model.parameters().items():
        np.testing.assert_array_equal(hist.model.parameters()[name], p, err_msg=name)
    assert hist.loss == cluster_run.loss
    assert_same_run(hist, local_run, TRAIN_RTOL[np.dtype(np.float64)])


def test_worker_retired_during_training(cluster_run):
    """A worker that leaves gracefully strands the tasks pinned to it: noticed, recovered."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=30)
        retired = []

        def retire_at_step_5(info):
            if info.step == 5:
                retired.append(info.trainer.shards[1][2])
                c.retire_workers(retired, close_workers=True)
            return False

        hist = rd.train(None, TEXT, client=c, dtype=np.float64, callback=retire_at_step_5, **TRAIN)
        assert retired and retired[0] not in c.nthreads()
    for name, p in cluster_run.model.parameters().items():
        np.testing.assert_array_equal(hist.model.parameters()[name], p, err_msg=name)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_names_the_address():
    address = f"tcp://127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    with pytest.raises(rd.ClusterUnreachableError, match=address):
        with rd.client_from_args(None, address, timeout=1.0):
            pass
    assert time.perf_counter() - t0 < 10
    assert issubclass(rd.ClusterUnreachableError, OSError)


def test_client_from_args_choices():
    with rd.client_from_args(None, None) as c:
        assert c is None
    with pytest.raises(ValueError, match="not both"):
        with rd.client_from_args(2, "tcp://127.0.0.1:1"):
            pass
    with pytest.raises(ValueError, match="workers"):
        with rd.client_from_args(0, None):
            pass


def test_client_from_args_local_cluster_trains_a_loadable_model(tmp_path):
    opts = {k: v for k, v in TRAIN.items() if k not in ("steps", "eval_every")}
    ref = training.Trainer(None, TEXT, **opts)  # float32, as the CLI
    ref.run(3, eval_every=0, final_eval=False)
    with rd.client_from_args(1, None) as c:
        assert len(c.nthreads()) == 1
        with rd.DistributedTrainer(None, TEXT, client=c, **opts) as tr:
            tr.run(3, eval_every=0, final_eval=False)
            tr.save(tmp_path / "m.npz")
    # one worker, one shard: the single-process run bit for bit, even in float32
    assert tr.history.loss == ref.history.loss
    m = load(tmp_path / "m.npz")
    assert m.vocab == tr.vocab
    for name, p in ref.model.parameters().items():
        np.testing.assert_array_equal(m.parameters()[name], p)


# -- packaging and the command line --------------------------------------------------


def _run(code_or_args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env,
                          timeout=120, **kw)


def test_importing_rnn_ext_does_not_import_dask():
    code = ("import sys, rnn_ext, rnn_ext.training, rnn_ext.text, rnn_ext.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]; "
            "assert not bad, bad")
    r = _run(["-c", code])
    assert r.returncode == 0, r.stderr


def test_without_dask_the_import_error_says_what_to_install():
    code = ("import sys; sys.modules['distributed'] = None\n"
            "try:\n    import rnn_ext.distributed\n"
            "except ImportError as exc:\n    assert \"pip install 'rnn-ext[dask]'\" in str(exc), exc\n"
            "else:\n    raise SystemExit('imported without dask')")
    r = _run(["-c", code])
    assert r.returncode == 0, r.stderr + r.stdout


def test_cli_trains_on_local_workers(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "model.npz"
    r = _run(["-m", "rnn_ext", "train", str(corpus), "--workers", "2", "--steps", "4", "--hidden", "16",
              "--batch", "4", "--seq-len", "8", "--eval-every", "0", "--out", str(out), "--quiet"],
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = load(out)
    assert m.vocab is not None and m.hidden_size == 16


def test_cli_unreachable_scheduler_exits_2(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    address = f"tcp://127.0.0.1:{_free_port()}"
    r = _run(["-m", "rnn_ext", "train", str(corpus), "--scheduler", address, "--steps", "2", "--quiet",
              "--out", str(tmp_path / "m.npz")], cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0], r.stderr
    assert not (tmp_path / "m.npz").exists()


# -- stacked and bidirectional models ------------------------------------------------------

STACKED = [
    # (kind, B, dtype, layers, bidirectional, options)
    ("ids", 4, np.float64, 2, False, {}),
    ("float", 5, np.float64, 2, True, {"lengths": True, "h0": True, "reduction": "mean"}),
    ("ids", 3, np.float64, 3, True, {"batch_first": True, "h0": True, "nonlinearity": "relu"}),
    ("float", 0, np.float64, 2, False, {"h0": True}),  # unbatched
    ("ids", 1, np.float64, 2, True, {"h0": True}),  # one shard: exact
    ("float", 4, np.float32, 2, False, {"lengths": True, "bias": False}),
]


def make_stacked_case(kind, B, dtype, layers, bi, opts, T=6, seed=0):
    rng = np.random.default_rng(seed)
    model = rnn_ext.RNN(D, H, K, num_layers=layers, bidirectional=bi, dtype=dtype, seed=seed,
                        bias=opts.get("bias", True), nonlinearity=opts.get("nonlinearity", "tanh"),
                        batch_first=opts.get("batch_first", False))
    Ld = layers * (2 if bi else 1)
    b = max(B, 1)
    x = rng.integers(0, D, size=(T, b)) if kind == "ids" else rng.normal(size=(T, b, D))
    y = rng.integers(0, K, size=(T, b))
    kw = {"reduction": opts.get("reduction", "sum")}
    if opts.get("lengths"):
        kw["lengths"] = rng.integers(1, T + 1, size=b)
    if opts.get("h0"):
        kw["h0"] = rng.normal(size=(Ld, b, H)) * 0.5
    if B == 0:
        x, y = x[:, 0], y[:, 0]
        if "h0" in kw:
            kw["h0"] = kw["h0"][:, 0]
    elif opts.get("batch_first"):
        x, y = np.swapaxes(x, 0, 1), np.swapaxes(y, 0, 1)
    return model, x, y, kw


@pytest.mark.parametrize("kind,B,dtype,layers,bi,opts", STACKED, ids=[
    f"{k}-B{b}-{np.dtype(d).name}-L{n}{'-bi' if bi else ''}-{'-'.join(sorted(o)) or 'plain'}"
    for k, b, d, n, bi, o in STACKED])
def test_stacked_loss_and_grad_matches_one_process(client, kind, B, dtype, layers, bi, opts):
    model, x, y, kw = make_stacked_case(kind, B, dtype, layers, bi, opts)
    loss, g = model.loss_and_grad(x, y, **kw)
    dloss, dg = rd.loss_and_grad(model, x, y, client=client, **kw)
    assert list(dg.parameters()) == list(g.parameters()) == list(model.parameters())
    arrays = [(n, getattr(dg, n), getattr(g, n)) for n in ("h0", "x", "h_last", "h_n", "flat")]
    arrays += [(n, a, g.parameters()[n]) for n, a in dg.parameters().items()]
    assert dg.h_n.shape == g.h_n.shape and dg.h0.shape == g.h0.shape
    if B <= 1:  # one shard: the worker makes the local call itself
        assert dloss == loss
        for name, a, b in arrays:
            assert (a is None and b is None) or np.array_equal(a, b), name
        return
    rtol = RTOL[np.dtype(dtype)]
    assert abs(dloss - loss) <= rtol * max(abs(loss), 1e-300), (dloss, loss)
    for name, a, b in arrays:
        assert_close(a, b, rtol, name)


def test_dropout_one_shard_exact_and_several_reproducible(client):
    _, x, y, _ = make_stacked_case("ids", 4, np.float64, 3, False, {})
    model = rnn_ext.RNN(D, H, K, num_layers=3, dropout=0.4, dtype=np.float64, seed=0)
    loss, g = model.loss_and_grad(x[:, :1], y[:, :1], train=True, seed=11)
    dloss, dg = rd.loss_and_grad(model, x[:, :1], y[:, :1], train=True, seed=11, client=client)
    assert dloss == loss
    np.testing.assert_array_equal(dg.flat, g.flat)
    a = rd.loss_and_grad(model, x, y, train=True, seed=11, client=client)
    b = rd.loss_and_grad(model, x, y, train=True, seed=11, client=client)
    plain = rd.loss_and_grad(model, x, y, client=client)
    assert a[0] == b[0] and a[0] != plain[0]
    np.testing.assert_array_equal(a[1].flat, b[1].flat)


STACKED_TRAIN = dict(TRAIN, num_layers=2, steps=12, eval_every=6)


@pytest.fixture(scope="module")
def stacked_local_run():
    return training.train(None, TEXT, dtype=np.float64, **STACKED_TRAIN)


def test_stacked_training_matches_one_process(client, stacked_local_run):
    with rd.DistributedTrainer(None, TEXT, client=client, dtype=np.float64,
                               **{k: v for k, v in STACKED_TRAIN.items()
                                  if k not in ("steps", "eval_every")}) as tr:
        assert len(tr.shards) == 2
        hist = tr.run(STACKED_TRAIN["steps"], eval_every=STACKED_TRAIN["eval_every"])
        assert tr.h.shape == (2, STACKED_TRAIN["batch"], STACKED_TRAIN["hidden"])
    assert hist.model.num_layers == 2
    assert_same_run(hist, stacked_local_run, TRAIN_RTOL[np.dtype(np.float64)])


def test_stacked_training_with_dropout_on_one_shard_is_the_local_run(client):
    opts = dict(STACKED_TRAIN, batch=1, steps=5, eval_every=0, dropout=0.3)
    ref = training.train(None, TEXT, dtype=np.float64, **opts)
    hist = rd.train(None, TEXT, client=client, dtype=np.float64, **opts)
    assert hist.loss == ref.loss
    np.testing.assert_array_equal(hist.model.flat, ref.model.flat)


def test_stacked_resume_continues_like_one_process(client, tmp_path):
    opts = {k: v for k, v in STACKED_TRAIN.items() if k not in ("steps", "eval_every")}
    ref = training.Trainer(None, TEXT, dtype=np.float64, **opts)
    ref.run(4, final_eval=False)
    ref.save(tmp_path / "ck.npz")
    ref.run(3, final_eval=False)
    with rd.DistributedTrainer.resume(load_checkpoint(tmp_path / "ck.npz"), TEXT, client=client,
                                      **opts) as tr:
        tr.run(3, final_eval=False)
    rtol = TRAIN_RTOL[np.dtype(np.float64)]
    assert_close(tr.model.flat, ref.model.flat, rtol, "flat")
    assert_close(tr.h, ref.h, rtol, "h")


def test_distributed_training_refuses_bidirectional(client):
    v = rnn_ext.text.Vocab.from_text(TEXT)
    with pytest.raises(ValueError, match="bidirectional"):
        rd.DistributedTrainer(rnn_ext.RNN(len(v), 4, len(v), bidirectional=True), TEXT, client=client)
