"""The ``rnn-ext`` command (also ``python -m rnn_ext``).

    rnn-ext train [TEXTFILE] [--hidden 128 --layers 1 --dropout 0 --seq-len 25 --batch 32
                  --steps 2000 --optimizer adam --lr 2e-3 --clip 5 --out model.npz --seed 0
                  --plot loss.png]
    rnn-ext sample MODEL [--length 500 --temperature 0.8 --prime "The " --seed 1]
    rnn-ext export MODEL OUT.onnx [--opset 17 --input ids|floats --no-head --float32]

Without TEXTFILE, ``train`` uses CPython's documentation topics
(``pydoc_data.topics``).  Bad input (a missing, empty or binary file, a text
too short for one chunk, a damaged model file, a non-positive size or rate,
an output path that cannot be written, a size that cannot fit in memory)
prints one line to stderr and exits with status 2, before any training.

Exit status: 0 done; 2 bad input; 1 training diverged (nothing is written)
or the machine ran out of memory; 130 after SIGINT (Ctrl-C) and 143 after
SIGTERM.  During training the first SIGINT or SIGTERM stops at the next
point between steps (a step is never cut in half), saves the model there
and exits 130 or 143; signals during the save act once the file is complete.
"""

import argparse
import contextlib
import math
import signal
import sys
import threading
import time

from ._memory import check_fits
from ._signals import SIGNALS
from ._threads import threads

__all__ = ["main", "build_parser"]

PROG = "rnn-ext"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _int_at_least(low, expected, must):
    """An argparse type: an int >= low (also written 1e6); `expected` and `must` word its errors."""

    def parse(s):
        try:
            v = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                f = math.nan
            if not (math.isfinite(f) and f.is_integer()):
                raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}") from None
            v = int(f)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be {must}, got {s}")
        return v

    return parse


_positive_int = _int_at_least(1, "a positive integer", "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer >= 0", ">= 0")


def _real(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {s}")
    return v


def _positive_real(s):
    v = _real(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
    return v


def _nonnegative_real(s):
    v = _real(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def _fraction(s):
    v = _real(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def add_train_arguments(p):
    """The ``train`` subcommand's options (one place, so extensions can add theirs)."""
    p.add_argument("textfile", nargs="?", help="UTF-8 text to learn (default: CPython's pydoc topics)")
    model = p.add_argument_group("model")
    model.add_argument("--hidden", type=_positive_int, default=128, help="hidden size (default 128)")
    model.add_argument("--layers", type=_positive_int, default=1, help="stacked recurrent layers (default 1)")
    model.add_argument("--dropout", type=_fraction, default=0.0,
                       help="dropout between layers in training, in [0, 1); needs --layers >= 2 (default 0)")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="parameter dtype (default float32)")
    model.add_argument("--seed", type=_nonnegative_int, default=0, help="initialization seed (default 0)")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--seq-len", type=_positive_int, default=25,
                     help="characters per truncated-BPTT chunk (default 25)")
    opt.add_argument("--batch", type=_positive_int, default=32, help="parallel streams (default 32)")
    opt.add_argument("--steps", type=_positive_int, default=2000, help="optimizer steps (default 2000)")
    opt.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"), default="adam",
                     help="default adam")
    opt.add_argument("--lr", type=_positive_real, default=None,
                     help="learning rate (default 2e-3 for adam, 0.1 for adagrad; sgd needs one)")
    opt.add_argument("--clip", type=_nonnegative_real, default=5.0,
                     help="clamp gradient entries to [-CLIP, CLIP]; 0 turns it off (default 5)")
    opt.add_argument("--clip-norm", type=_positive_real, default=None,
                     help="also rescale gradients to at most this joint L2 norm")
    out = p.add_argument_group("evaluation and output")
    out.add_argument("--val-fraction", type=_fraction, default=0.1,
                     help="share of the text, from its end, held out for validation (default 0.1)")
    out.add_argument("--eval-every", type=_nonnegative_int, default=200,
                     help="validate every N steps; 0: only at the end (default 200)")
    out.add_argument("--sample-every", type=_nonnegative_int, default=500,
                     help="print a short sample every N steps; 0: never (default 500)")
    out.add_argument("--out", default="model.npz", help="model file to write (default model.npz)")
    out.add_argument("--plot", metavar="PNG", default=None,
                     help="write the loss curves here (needs matplotlib: pip install 'rnn-ext[plot]')")
    out.add_argument("--quiet", action="store_true", help="no progress bar and no samples")
    out.add_argument("--threads", type=_positive_int, default=None,
                     help="BLAS threads for the kernel (default: chosen per pass)")
    scale = p.add_argument_group("scaling out (needs Dask: pip install 'rnn-ext[dask]')")
    where = scale.add_mutually_exclusive_group()
    where.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                       help="train data-parallel on a local Dask cluster of N worker processes "
                            "(one thread each)")
    where.add_argument("--scheduler", metavar="ADDR", default=None,
                       help="train data-parallel on the Dask cluster whose scheduler is at ADDR, "
                            "e.g. tcp://host:8786")


def add_sample_arguments(p):
    p.add_argument("model", help="a model file written by 'rnn-ext train'")
    p.add_argument("--length", type=_nonnegative_int, default=500, help="characters to generate (default 500)")
    p.add_argument("--temperature", type=_nonnegative_real, default=0.8,
                   help="sampling temperature; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=_positive_int, default=None, help="sample among the K likeliest characters")
    p.add_argument("--prime", default="", help="text to start from (printed before the sample)")
    p.add_argument("--seed", type=_nonnegative_int, default=None, help="the same seed prints the same text")


def build_parser():
    from . import __version__

    parser = _Parser(prog=PROG, description="Train a character-level Elman RNN on a text, and sample from it.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,sample,export}", parser_class=_Parser)
    add_train_arguments(sub.add_parser(
        "train", help="train a model on a text file", description="Train a character-level RNN with "
        "truncated BPTT; losses are in bits per character."))
    add_sample_arguments(sub.add_parser("sample", help="generate text from a trained model"))
    add_export_arguments(sub.add_parser(
        "export", help="write a model as an ONNX graph", description="Write a model file as an "
        "ONNX graph for ONNX Runtime (needs pip install 'rnn-ext[onnx]'); see docs/onnx.md."))
    return parser


def _read_text(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not data:
        raise CLIError(f"{path} is empty")
    if b"\0" in data:
        raise CLIError(f"{path} looks like a binary file (it contains NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CLIError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    return text.replace("\r\n", "\n")


def _default_text():
    from .text import default_corpus

    try:
        return default_corpus()
    except ImportError:
        raise CLIError("no TEXTFILE given and this Python lacks the default corpus (pydoc_data.topics); "
                       "pass a text file: rnn-ext train FILE") from None


def _plot(history, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = range(1, len(history.loss) + 1)
    ax.plot(steps, history.loss, color="C0", alpha=0.25, lw=0.8, label="training (per step)")
    ax.plot(steps, history.smooth_loss, color="C0", label="training (smoothed)")
    if history.val_steps:
        ax.plot(history.val_steps, history.val_loss, "o-", color="C1", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (bits per character)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trainer_options(args):
    """The ``train`` options as keyword arguments of :class:`rnn_ext.training.Trainer`."""
    import numpy as np

    if args.dropout and args.layers == 1:
        raise CLIError(f"--dropout {args.dropout:g} acts between layers: it needs --layers 2 or more")

    return dict(hidden=args.hidden, seq_len=args.seq_len, batch=args.batch, optimizer=args.optimizer,
                lr=args.lr, clip=args.clip or None, clip_norm=args.clip_norm,
                val_fraction=args.val_fraction, seed=args.seed, dtype=np.dtype(args.dtype),
                num_layers=args.layers, dropout=args.dropout)


def make_trainer(args, text):
    """The trainer ``rnn-ext train`` runs (one place to choose another, e.g. a distributed one)."""
    if args.workers is not None or args.scheduler is not None:
        try:
            from . import distributed as rd
        except ImportError:
            raise CLIError("--workers and --scheduler need Dask: pip install 'rnn-ext[dask]'") from None
        try:
            return rd.trainer_from_args(args.workers, args.scheduler, text, **trainer_options(args))
        except rd.ClusterUnreachableError as exc:
            raise CLIError(str(exc)) from None

    from .training import Trainer

    return Trainer(None, text, **trainer_options(args))


class _Interrupts:
    """SIGINT and SIGTERM while a command runs.

    The first one is remembered (its exit status is 128 + its number) and,
    unless the command is already finishing, unwinds the work with
    KeyboardInterrupt.  It cannot cut a training step or a save in half:
    those hold both signals back until they are done (rnn_ext._signals).
    Later signals are only counted, so the model is still saved.  A signal
    ignored when the command started stays ignored.
    """

    def __init__(self):
        self.signum = None
        self.finishing = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                old = signal.getsignal(s)
                if old is None or old == signal.SIG_IGN:
                    continue
                self._old[s] = old
                signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            if not self.finishing:
                raise KeyboardInterrupt

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum is not None else "SIGINT"

    @property
    def status(self):
        return 128 + (self.signum if self.signum is not None else signal.SIGINT)


def _check_output(path, option):
    from .io import check_writable

    try:
        check_writable(path)
    except OSError as exc:
        raise CLIError(f"{option} {path}: cannot write there ({exc.strerror})") from None


def _cmd_train(args, stop):
    if args.optimizer == "sgd" and args.lr is None:
        raise CLIError("--optimizer sgd needs --lr")
    _check_output(args.out, "--out")
    plot = args.plot
    if plot is not None:
        # a path that cannot be written is an error whether or not the plot can be drawn
        _check_output(plot, "--plot")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"{PROG}: --plot needs matplotlib: pip install 'rnn-ext[plot]' (training without a plot)",
                  file=sys.stderr)
            plot = None

    text = _read_text(args.textfile) if args.textfile else _default_text()
    source = args.textfile or "pydoc_data.topics"
    t_start = time.perf_counter()
    with contextlib.nullcontext() if args.threads is None else threads(args.threads):
        trainer = make_trainer(args, text)
        try:
            return _run_trainer(trainer, args, source, len(text), plot, t_start, stop)
        finally:
            if hasattr(trainer, "close"):  # a distributed trainer: its cluster
                trainer.close()


def _run_trainer(trainer, args, source, n_chars, plot, t_start, stop):
    from tqdm import tqdm

    from .text import sample

    m = trainer.model
    if not args.quiet:
        print(f"{source}: {n_chars:,} characters, {len(trainer.vocab)} distinct; "
              f"{len(trainer.train_ids):,} for training, {len(trainer.val_ids):,} held out")
        threads = f", {args.threads} BLAS threads" if args.threads is not None else ""
        print(f"model: hidden {m.hidden_size}, {m.dtype.name}, "
              f"{sum(p.size for p in m.parameters().values()):,} parameters; "
              f"{args.optimizer} lr {trainer.optimizer.lr:g}, seq-len {args.seq_len}, batch {args.batch}"
              f"{threads}", flush=True)

    bar = tqdm(total=args.steps, unit="step", disable=args.quiet, dynamic_ncols=True, mininterval=0.25,
               file=sys.stderr)
    last_val = [None]

    def callback(info):
        if info.val_loss is not None:
            last_val[0] = info.val_loss
        postfix = f"loss {info.smooth_loss:.3f} bpc"
        if last_val[0] is not None:
            postfix += f", val {last_val[0]:.3f}"
        bar.set_postfix_str(f"{postfix}, {info.chars_per_sec:,.0f} chars/s", refresh=False)
        bar.update(1)
        if not args.quiet and args.sample_every and info.step % args.sample_every == 0:
            s = sample(m, trainer.vocab, length=200, temperature=0.8, seed=args.seed + info.step)
            bar.write(f"--- sample after {info.step} steps ---\n{s}\n---")
        return False

    diverged = None
    try:
        try:
            trainer.run(args.steps, callback=callback, eval_every=args.eval_every or None)
            # from here on a signal only sets the exit status: the model is saved
            stop.finishing = True
        except FloatingPointError as exc:
            stop.finishing = True
            diverged = exc
    except KeyboardInterrupt:  # the first SIGINT/SIGTERM; the trainer is between two steps
        stop.finishing = True
    finally:
        bar.close()
    hist = trainer.history

    if diverged is not None:
        print(f"{PROG}: error: {diverged}; {args.out} was not written", file=sys.stderr)
        return 1
    if stop.signum is not None and hist.train_loss is None:
        print(f"interrupted ({stop.name}) after {trainer.step} steps", file=sys.stderr)
    else:
        print(f"after {trainer.step} steps: train loss {hist.train_loss:.3f} bits/char, "
              f"validation loss {hist.val_loss[-1]:.3f} bits/char" if hist.val_loss else
              f"after {trainer.step} steps: train loss {hist.train_loss:.3f} bits/char (no validation text)")
    print(f"{hist.seconds:.1f} s in training steps ({hist.chars_per_sec:,.0f} chars/s), "
          f"{time.perf_counter() - t_start:.1f} s in all")
    trainer.save(args.out)
    print(f"saved {args.out}", flush=True)
    if plot is not None and hist.loss and stop.signum != signal.SIGTERM:  # SIGTERM: leave now
        _plot(hist, plot)
        print(f"saved {plot}")
    return 0 if stop.signum is None else stop.status


def _cmd_sample(args, stop):
    from .io import load
    from .text import _sample_bytes, sample

    check_fits(_sample_bytes(args.length), f"--length {args.length}: the sample")
    try:
        model = load(args.model)
    except OSError as exc:
        raise CLIError(f"cannot read {args.model}: {exc.strerror or exc}") from None
    if model.vocab is None:
        raise CLIError(f"{args.model} holds no vocabulary (it was not trained on text)")
    text = sample(model, model.vocab, prime=args.prime, length=args.length, temperature=args.temperature,
                  top_k=args.top_k, seed=args.seed)
    sys.stdout.write(args.prime + text + "\n")
    return 0


def add_export_arguments(p):
    p.add_argument("model", help="a model file written by 'rnn-ext train' or RNN.save")
    p.add_argument("out", help="the ONNX file to write (atomically)")
    p.add_argument("--opset", type=_positive_int, default=None, help="ONNX opset (default 17)")
    p.add_argument("--input", choices=("ids", "floats"), default=None,
                   help="x holds int64 ids or floats (default: ids for a model trained on text)")
    p.add_argument("--no-head", action="store_true",
                   help="output the hidden states ('output') instead of the probabilities")
    p.add_argument("--no-h0", action="store_true", help="no h0 input (the state starts at zero)")
    p.add_argument("--no-lengths", action="store_true",
                   help="no lengths input (every sequence runs all T steps)")
    p.add_argument("--float32", action="store_true",
                   help="write a float64 model as a float32 graph (ONNX Runtime's RNN is float32 only)")


def _cmd_export(args):
    import os

    import numpy as np

    from .io import load

    try:
        import onnx

        from . import onnx as rnn_onnx
    except ImportError:
        raise CLIError("export needs onnx: pip install 'rnn-ext[onnx]'") from None
    try:
        model = load(args.model)
    except OSError as exc:
        raise CLIError(f"cannot read {args.model}: {exc.strerror or exc}") from None
    rnn_onnx.export(model, args.out, opset=args.opset or rnn_onnx.DEFAULT_OPSET, input=args.input,
                    head=False if args.no_head else None, h0=not args.no_h0,
                    lengths=not args.no_lengths, dtype=np.float32 if args.float32 else None)
    graph = onnx.load(args.out).graph

    def describe(values):
        return ", ".join(
            f"{v.name} {onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)} "
            f"({', '.join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)})"
            for v in values)

    print(f"saved {args.out} ({os.path.getsize(args.out):,} bytes): inputs {describe(graph.input)}; "
          f"outputs {describe(graph.output)}")
    return 0


def main(argv=None):
    """Run the command line; returns the exit status."""
    with _Interrupts() as stop:
        try:
            return _main(argv, stop)
        except KeyboardInterrupt:  # a signal before training started (or while sampling)
            print(f"{PROG}: interrupted ({stop.name})", file=sys.stderr)
            return stop.status


def _main(argv, stop):
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        if args.command == "export":
            return _cmd_export(args)
        run = _cmd_train if args.command == "train" else _cmd_sample
        return run(args, stop)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except (CLIError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        name = f" {exc.filename}:" if exc.filename else ""
        print(f"{PROG}: error:{name} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        print(f"{PROG}: error: out of memory ({exc})", file=sys.stderr)
        return 1
