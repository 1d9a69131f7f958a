"""Truncated-BPTT training: the loop against a hand-written one, determinism, validation, hooks."""

import math

import numpy as np
import pytest

from rnn_ext import RNN
from rnn_ext.clip import clip_grad_value
from rnn_ext.optim import SGD, Adam
from rnn_ext.text import Vocab, batchify
from rnn_ext.training import History, StepInfo, Trainer, evaluate, train

TEXT = ("the cat sat on the mat. the dog sat on the log. " * 12) + "a cat and a dog.\n" * 6
SMALL = dict(hidden=12, seq_len=6, batch=3, seed=1)


def params(model):
    return {k: p.copy() for k, p in model.parameters().items()}


def test_loss_falls_and_model_gets_vocab():
    hist = train(None, TEXT, steps=150, lr=2e-2, eval_every=50, **SMALL)
    assert isinstance(hist, History)
    assert len(hist.loss) == len(hist.smooth_loss) == 150
    assert hist.model.vocab == Vocab.from_text(TEXT)
    assert hist.model.hidden_size == 12 and hist.model.dtype == np.float32
    assert np.mean(hist.loss[-20:]) < 0.6 * np.mean(hist.loss[:5])
    assert hist.val_steps == [50, 100, 150]
    assert hist.val_loss[-1] < hist.val_loss[0]
    assert hist.train_loss is not None and hist.train_loss < hist.loss[0]
    assert hist.step == 150 and 0 < hist.chars <= 150 * 3 * 6
    assert hist.chars_per_sec > 0 and hist.seconds > 0
    # First loss is near uniform guessing: log2(K) bits per character.
    assert hist.loss[0] == pytest.approx(math.log2(len(hist.vocab)), rel=0.15)


def test_same_seed_is_bit_identical():
    a = train(None, TEXT, steps=40, **SMALL)
    b = train(None, TEXT, steps=40, **SMALL)
    assert a.loss == b.loss and a.val_loss == b.val_loss and a.train_loss == b.train_loss
    for k, p in a.model.parameters().items():
        np.testing.assert_array_equal(p, b.model.parameters()[k])
    c = train(None, TEXT, steps=40, **dict(SMALL, seed=2))
    assert c.loss != a.loss


def test_loop_matches_hand_written_truncated_bptt():
    """Carry h_last from chunk to chunk; start each pass over the text from zeros."""
    seq_len, batch = 7, 4
    tr = Trainer(None, TEXT, hidden=10, seq_len=seq_len, batch=batch, lr=1e-2, clip=0.05,
                 val_fraction=0.1, seed=3, dtype=np.float64)
    n_steps = tr.chunks_per_pass + 3  # crosses a pass boundary
    ref = RNN(tr.model.input_size, 10, tr.model.output_size, dtype=np.float64, seed=3)
    for k, p in tr.model.parameters().items():
        np.testing.assert_array_equal(p, ref.parameters()[k])
    opt = Adam(ref, lr=1e-2)
    ids = Vocab.from_text(TEXT).encode(TEXT)
    streams = batchify(ids[: len(ids) - int(len(ids) * 0.1)], batch)
    chunks = [(streams[i : i + seq_len], streams[i + 1 : i + 1 + seq_len])
              for i in range(0, streams.shape[0] - 1, seq_len)]
    chunks = [(x[: len(y)], y) for x, y in chunks]
    assert len(chunks) == tr.chunks_per_pass
    h = None
    losses = []
    for step in range(n_steps):
        x, y = chunks[step % len(chunks)]
        if step % len(chunks) == 0:
            h = None
        loss, g = ref.loss_and_grad(x, y, h0=h, reduction="mean")
        clip_grad_value(g, 0.05)
        opt.step(g)
        h = g.h_last
        losses.append(loss / math.log(2))
    hist = tr.run(n_steps, eval_every=None, final_eval=False)
    np.testing.assert_allclose(hist.loss, losses, rtol=1e-12)
    for k, p in tr.model.parameters().items():
        np.testing.assert_array_equal(p, ref.parameters()[k])
    np.testing.assert_array_equal(tr.h, h)


def test_validation_loss_is_the_held_out_tail():
    tr = Trainer(None, TEXT, val_fraction=0.2, dtype=np.float64, **SMALL)
    n_val = int(len(TEXT) * 0.2)
    assert tr.vocab.decode(tr.val_ids) == TEXT[-n_val:]
    assert tr.vocab.decode(tr.train_ids) == TEXT[:-n_val]
    val = tr.evaluate("val")
    ids = tr.val_ids
    expect = tr.model.loss(ids[:-1], ids[1:], reduction="mean") / math.log(2)
    assert val == pytest.approx(expect, rel=1e-10)


@pytest.mark.parametrize("streams, chunk", [(1, 5), (1, None), (4, 3), (4, None)])
def test_evaluate_chunking_does_not_change_the_loss(streams, chunk):
    v = Vocab.from_text(TEXT)
    m = RNN(len(v), 8, len(v), seed=0, dtype=np.float64)
    ids = v.encode(TEXT)
    data = batchify(ids, streams)
    expect = m.loss(data[:-1], data[1:], reduction="mean") / math.log(2)
    assert evaluate(m, ids, streams=streams, chunk=chunk) == pytest.approx(expect, rel=1e-10)


def test_no_validation_split():
    hist = train(None, TEXT, steps=5, val_fraction=0.0, **SMALL)
    assert hist.val_loss == [] and hist.train_loss is not None


def test_callback_sees_every_step_and_can_stop():
    seen = []

    def cb(info):
        assert isinstance(info, StepInfo)
        seen.append((info.step, info.val_loss is not None))
        return info.step == 7

    hist = train(None, TEXT, steps=20, callback=cb, eval_every=3, final_eval=False, **SMALL)
    assert [s for s, _ in seen] == list(range(1, 8))
    assert [s for s, v in seen if v] == [3, 6]
    assert len(hist.loss) == 7 and hist.step == 7


def test_continues_training_a_given_model_with_its_vocab():
    first = train(None, TEXT, steps=10, **SMALL)
    m = first.model
    again = train(m, "the cat", steps=0, val_fraction=0.0, batch=1, seq_len=2, final_eval=False)
    assert again.model is m and again.vocab == first.vocab
    with pytest.raises(ValueError, match="'X'"):
        train(m, "the cat X", steps=1, val_fraction=0.0, batch=1, seq_len=2)
    other = RNN(3, 4, 3)
    with pytest.raises(ValueError, match="distinct characters"):
        train(other, TEXT, steps=1, **dict(SMALL, hidden=4))


def test_optimizer_choices():
    for opt, lr in [("adam", None), ("adagrad", None), ("sgd", 0.5), ("Adam", 1e-3)]:
        hist = train(None, TEXT, steps=3, optimizer=opt, lr=lr, final_eval=False, **SMALL)
        assert len(hist.loss) == 3
    tr = Trainer(None, TEXT, **SMALL)
    sgd = SGD(tr.model, lr=0.1)
    tr2 = Trainer(tr.model, TEXT, optimizer=sgd, **SMALL)
    assert tr2.optimizer is sgd
    with pytest.raises(ValueError, match="different model"):
        Trainer(None, TEXT, optimizer=sgd, **SMALL)


def test_sum_reduction_and_clip_norm():
    hist = train(None, TEXT, steps=30, reduction="sum", optimizer="adagrad", lr=0.1, clip=5.0,
                 clip_norm=1.0, final_eval=False, **SMALL)
    assert hist.loss[-1] < hist.loss[0]
    assert hist.loss[0] == pytest.approx(math.log2(len(hist.vocab)), rel=0.15)  # still per character


def test_divergence_is_reported(monkeypatch):
    tr = Trainer(None, TEXT, **SMALL)
    real = tr.model.loss_and_grad

    def nan_at_step_3(*args, **kw):
        loss, g = real(*args, **kw)
        return (float("nan") if tr.step == 2 else loss), g

    monkeypatch.setattr(tr.model, "loss_and_grad", nan_at_step_3)
    with pytest.raises(FloatingPointError, match="diverged at step 3"):
        tr.run(5)
    assert tr.step == 2


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(seq_len=0), "seq_len"),
        (dict(batch=-1), "batch"),
        (dict(hidden=0), "hidden"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction=-0.1), "val_fraction"),
        (dict(lr=0.0), "lr"),
        (dict(clip=-1.0), "clip"),
        (dict(optimizer="lbfgs"), "lbfgs"),
        (dict(optimizer="sgd"), "SGD needs"),
        (dict(reduction="none"), "reduction"),
        (dict(batch=40, seq_len=25), "too short"),
    ],
)
def test_bad_arguments(kw, match):
    args = dict(SMALL, **kw)
    with pytest.raises(ValueError, match=match):
        Trainer(None, TEXT, **args)


def test_text_errors():
    with pytest.raises(ValueError, match="empty"):
        train(None, "", steps=1)
    with pytest.raises(TypeError):
        train(None, b"bytes", steps=1)
    with pytest.raises(ValueError, match="too short"):
        train(None, "abcdefghij", steps=1, batch=1, seq_len=3, val_fraction=0.1)
    with pytest.raises(ValueError, match="steps"):
        train(None, TEXT, steps=-1, **SMALL)


# -- divergence: nothing poisoned, the last good state can be saved -----------------------


def checkpoint_state(tr):
    return (tr.step, {k: p.copy() for k, p in tr.model.parameters().items()},
            {k: np.copy(v) for k, v in tr.optimizer.state_dict().items()},
            None if tr.h is None else tr.h.copy())


def assert_unchanged(tr, before):
    step, params, opt, h = before
    assert tr.step == step
    for k, p in tr.model.parameters().items():
        np.testing.assert_array_equal(p, params[k], err_msg=k)
    after = tr.optimizer.state_dict()
    assert after.keys() == opt.keys()
    for k in opt:
        np.testing.assert_array_equal(np.asarray(after[k]), opt[k], err_msg=k)
    if h is None:
        assert tr.h is None
    else:
        np.testing.assert_array_equal(tr.h, h)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["U", "W", "c"])
def test_nonfinite_gradient_stops_training_and_changes_nothing(tmp_path, monkeypatch, bad, name):
    tr = Trainer(None, TEXT, **SMALL)
    tr.run(4, eval_every=None, final_eval=False)
    before = checkpoint_state(tr)
    real = tr.model.loss_and_grad

    def poisoned(*args, **kw):
        loss, g = real(*args, **kw)
        getattr(g, name).flat[3] = bad
        return loss, g

    monkeypatch.setattr(tr.model, "loss_and_grad", poisoned)
    with pytest.raises(FloatingPointError, match=f"diverged at step 5: the gradient of {name} holds NaN"):
        tr.run(3)
    assert_unchanged(tr, before)
    assert len(tr.history.loss) == 4
    tr.save(tmp_path / "last-good.npz")  # the state before the bad step, which loads
    import rnn_ext.io as rio

    assert rio.load_checkpoint(tmp_path / "last-good.npz").step == 4


def test_overflowing_update_is_reported_and_cannot_be_saved(tmp_path):
    import rnn_ext.io as rio

    tr = Trainer(None, TEXT, optimizer="sgd", lr=1e300, clip=None, **SMALL)
    Trainer(None, TEXT, **SMALL).save(tmp_path / "good.npz")
    good = (tmp_path / "good.npz").read_bytes()
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError,
                                                   match="diverged at step 1: the update made .* overflow"):
        tr.run(2)
    with pytest.raises(ValueError, match=r"cannot save .*good.npz: param/\w+ holds non-finite"):
        tr.save(tmp_path / "good.npz")
    assert (tmp_path / "good.npz").read_bytes() == good  # the last good checkpoint stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npz"]
    rio.load(tmp_path / "good.npz")


def test_training_bytes_counts_the_arrays_of_a_step():
    from rnn_ext.training import training_bytes

    K, H, T, B = 65, 128, 25, 32
    P = H * K + H * H + K * H + H + K
    assert training_bytes(K, H, T, B, np.float32, "adam") == 4 * (5 * P + T * B * (2 * H + K))
    assert training_bytes(K, H, T, B, np.float64, "sgd") == 8 * (4 * P + T * B * (2 * H + K))


def test_hidden_beyond_memory_is_refused_before_allocating():
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r"hidden=1000000: training needs about .* TiB of memory"):
        Trainer(None, TEXT, **dict(SMALL, hidden=10**6))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 * 1024  # KiB
# -- stacked models, dropout, bidirectional refused ------------------------------------

from rnn_ext.training import step_seed  # noqa: E402


def test_stacked_loop_matches_hand_written_truncated_bptt_with_dropout():
    """Every layer's state h_n is carried; step i draws its masks from step_seed(seed, i)."""
    seq_len, batch, seed = 7, 4, 3
    tr = Trainer(None, TEXT, hidden=10, seq_len=seq_len, batch=batch, lr=1e-2, clip=0.05,
                 seed=seed, dtype=np.float64, num_layers=3, dropout=0.25)
    assert (tr.model.num_layers, tr.model.dropout) == (3, 0.25)
    n_steps = tr.chunks_per_pass + 3  # crosses a pass boundary
    ref = RNN(tr.model.input_size, 10, tr.model.output_size, num_layers=3, dropout=0.25,
              dtype=np.float64, seed=seed)
    np.testing.assert_array_equal(tr.model.flat, ref.flat)
    opt = Adam(ref, lr=1e-2)
    ids = Vocab.from_text(TEXT).encode(TEXT)
    streams = batchify(ids[: len(ids) - int(len(ids) * 0.1)], batch)
    chunks = [(streams[i : i + seq_len], streams[i + 1 : i + 1 + seq_len])
              for i in range(0, streams.shape[0] - 1, seq_len)]
    chunks = [(x[: len(y)], y) for x, y in chunks]
    h = None
    losses = []
    for step in range(n_steps):
        x, y = chunks[step % len(chunks)]
        if step % len(chunks) == 0:
            h = None
        loss, g = ref.loss_and_grad(x, y, h0=h, reduction="mean", train=True,
                                    seed=step_seed(seed, step))
        clip_grad_value(g, 0.05)
        opt.step(g)
        h = g.h_n
        losses.append(loss / math.log(2))
    hist = tr.run(n_steps, eval_every=None, final_eval=False)
    np.testing.assert_allclose(hist.loss, losses, rtol=1e-12)
    np.testing.assert_array_equal(tr.model.flat, ref.flat)
    assert tr.h.shape == (3, batch, 10)
    np.testing.assert_array_equal(tr.h, h)


def test_dropout_runs_are_reproducible_and_drop():
    kw = dict(SMALL, num_layers=2, steps=8, final_eval=False, eval_every=None)
    a = train(None, TEXT, dropout=0.4, **kw)
    b = train(None, TEXT, dropout=0.4, **kw)
    plain = train(None, TEXT, dropout=0.0, **kw)
    assert a.loss == b.loss
    np.testing.assert_array_equal(a.model.flat, b.model.flat)
    assert a.loss[0] != plain.loss[0]  # the masks change the first step already
    # evaluation runs without dropout: the model's plain loss
    tr = Trainer(a.model, TEXT, val_fraction=0.2, **dict(SMALL))
    ids = tr.val_ids
    assert tr.evaluate("val") == pytest.approx(
        a.model.loss(ids[:-1], ids[1:], reduction="mean") / math.log(2), rel=1e-5)


def test_step_seed():
    assert step_seed(0, 1) == step_seed(0, 1)
    assert len({step_seed(0, 0), step_seed(0, 1), step_seed(1, 0)}) == 3
    assert isinstance(step_seed(0, 5), int) and step_seed(0, 5) >= 0


@pytest.mark.parametrize("streams, chunk", [(1, 5), (3, 4), (3, None)])
def test_evaluate_carries_every_layer(streams, chunk):
    v = Vocab.from_text(TEXT)
    m = RNN(len(v), 6, len(v), num_layers=3, seed=0, dtype=np.float64)
    ids = v.encode(TEXT)
    data = batchify(ids, streams)
    expect = m.loss(data[:-1], data[1:], reduction="mean") / math.log(2)
    assert evaluate(m, ids, streams=streams, chunk=chunk) == pytest.approx(expect, rel=1e-10)


def test_stacked_model_learns():
    hist = train(None, TEXT, steps=120, lr=2e-2, eval_every=60, num_layers=2, dropout=0.1, **SMALL)
    assert hist.model.num_layers == 2
    assert np.mean(hist.loss[-20:]) < 0.7 * np.mean(hist.loss[:5])
    assert hist.val_loss[-1] < hist.val_loss[0]


def test_bidirectional_models_are_refused():
    v = Vocab.from_text(TEXT)
    bi = RNN(len(v), 6, len(v), bidirectional=True, seed=0)
    with pytest.raises(ValueError, match="bidirectional.*reverse direction would read"):
        Trainer(bi, TEXT, **SMALL)
    with pytest.raises(ValueError, match="bidirectional"):
        evaluate(bi, v.encode(TEXT))


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(num_layers=0), ValueError, "num_layers must be >= 1"),
        (dict(num_layers=2.0), TypeError, "num_layers must be an int"),
        (dict(num_layers=2, dropout=1.0), ValueError, r"dropout must be a finite number >= 0.0 and < 1.0, got 1.0"),
        (dict(num_layers=2, dropout=-0.1), ValueError, "dropout"),
        (dict(dropout=0.5), ValueError, "dropout=0.5 acts between layers and needs num_layers >= 2"),
    ],
)
def test_bad_layer_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        Trainer(None, TEXT, **dict(SMALL, **kw))
