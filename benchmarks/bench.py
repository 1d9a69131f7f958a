"""rnn_ext against hoisted NumPy, PyTorch and the BLAS limit, side by side.

    python benchmarks/bench.py                 # the full grid, 1 and 2 threads
    python benchmarks/bench.py --quick         # a small subset, a minute or two
    python benchmarks/bench.py --T 100 --B 32 --DK 256 --H 1024 --threads 1

For every case (T, B, D=K, H; float32, integer ids in and out) and thread
count, each implementation runs each operation: rnn_ext's forward, grad_V and
loss_and_grad; the same computed by the hoisted NumPy peer (hoisted_numpy.py)
and by PyTorch (torch_peer.py, when torch is installed).  Implementations,
operations and thread counts are interleaved: one timed block of each in
turn, repeated; each block loops the call enough times to last --min-time,
and the reported time per call is the median over --repeat blocks after a
warm-up.  Before timing, the NumPy and
PyTorch results are checked against rnn_ext's once per case.  The sgemm rate
of rnn_ext's BLAS (roofline.py, the limit) is measured once per round and
thread count, just before that thread count's blocks, and at the start and
end of the run.  The machine's speed drifts between rounds, so the ratios
(vs numpy, vs torch, the roofline column and two threads over one) are
medians of per-round ratios, each of timings taken side by side in one
round.  A table goes to the screen, CSV and JSON to benchmarks/results/.
See benchmarks/README.md for the columns.
"""

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
from threadpoolctl import ThreadpoolController

HERE = os.path.dirname(os.path.abspath(__file__))
try:
    import rnn_ext
except ImportError:  # run from a source tree that was built in place
    sys.path.insert(0, os.path.dirname(HERE))
    import rnn_ext
import hoisted_numpy
import roofline

from rnn_ext import _threads

try:
    import torch
    from torch_peer import TorchPeer
except ImportError:
    torch = None

OPS = ("forward", "grad_V", "loss_and_grad")
IMPLS = ("rnn_ext", "numpy", "torch")
# Relative tolerance (max |a-b| / max |b|) of a peer's float32 results against rnn_ext's.
RTOL = 1e-4


def flops(op, T, B, D, H, K):
    """Arithmetic of one call: forward 2·T·B·(D·H + H·H + H·K), fwd+bwd three times that."""
    fwd = 2.0 * T * B * (D * H + H * H + H * K)
    if op == "forward":
        return fwd
    if op == "grad_V":
        return fwd + 2.0 * T * B * H * K  # plus the dV GEMM
    return 3.0 * fwd


def int_list(text):
    return [int(v) for v in text.split(",") if v]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small subset, fewer repeats")
    parser.add_argument("--threads", type=int_list, default=[1, 2], help="thread counts, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=5, help="timed blocks per call (median)")
    parser.add_argument("--min-time", type=float, default=0.03, help="seconds per timed block")
    parser.add_argument("--T", type=int_list, default=[25, 100])
    parser.add_argument("--B", type=int_list, default=[1, 32])
    parser.add_argument("--DK", type=int_list, default=[65, 256], help="input = output size")
    parser.add_argument("--H", type=int_list, default=[64, 128, 256, 1024])
    parser.add_argument("--impl", default=",".join(IMPLS), help="subset of " + ",".join(IMPLS))
    parser.add_argument("--ops", default=",".join(OPS), help="subset of " + ",".join(OPS))
    parser.add_argument(
        "--forced",
        action="store_true",
        help="pin rnn_ext's BLAS to the thread count (default above 1 thread: "
        "rnn_ext's automatic per-call choice, the BLAS at its default count)",
    )
    parser.add_argument("--roofline-size", type=int, default=2048)
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds to sleep between implementations so the previous one's "
        "spinning BLAS threads go idle (default 0.1 above one thread, else 0)",
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--tag", default="", help="added to the output file names")
    parser.add_argument(
        "--markdown", metavar="JSON", help="print a saved run as Markdown tables, run nothing"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        return args
    if args.quick:
        args.T, args.B, args.DK, args.H = [25], [1, 32], [65], [128, 1024]
        args.repeat = min(args.repeat, 3)
        args.roofline_size = min(args.roofline_size, 1024)
    args.impl = [i for i in args.impl.split(",") if i]
    args.ops = [o for o in args.ops.split(",") if o]
    if torch is None and "torch" in args.impl:
        print("torch is not installed: no PyTorch column (pip install torch==2.13.0)")
        args.impl.remove("torch")
    for name in args.impl:
        if name not in IMPLS:
            parser.error(f"--impl: unknown {name!r}, expected some of {IMPLS}")
    for name in args.ops:
        if name not in OPS:
            parser.error(f"--ops: unknown {name!r}, expected some of {OPS}")
    return args


class NumpyBlas:
    """Thread limits for NumPy's own BLAS (a separate copy from scipy's in wheels)."""

    def __init__(self):
        blas = ThreadpoolController().select(user_api="blas")
        kernel = {i["filepath"] for i in _threads.blas_info()}
        others = [lib.filepath for lib in blas.lib_controllers if lib.filepath not in kernel]
        self.controller = blas.select(filepath=others) if others else blas

    def limit(self, n):
        return self.controller.limit(limits=n)


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(b).max(), 1e-30)
    return float(np.abs(a - b).max() / scale)


def check_peer(name, loss, grads, ref_loss, ref_grads):
    """Largest relative error of a peer's loss and gradients against rnn_ext's."""
    errs = {"loss": abs(loss - ref_loss) / max(abs(ref_loss), 1e-30)}
    for key, value in grads.items():
        if torch is not None and isinstance(value, torch.Tensor):
            value = value.detach().numpy()
        errs[key] = rel_err(value, getattr(ref_grads, key))
    worst = max(errs.values())
    if worst > RTOL:
        print(f"  !! {name} differs from rnn_ext: {errs}")
    return worst


class Case:
    """One (T, B, D, H, K) case: an rnn_ext model, the same parameters in the peers."""

    def __init__(self, T, B, D, H, K, impls, seed=0):
        self.T, self.B, self.D, self.H, self.K = T, B, D, H, K
        rng = np.random.default_rng(seed)
        self.x = rng.integers(0, D, (T, B))
        self.y = rng.integers(0, K, (T, B))
        self.model = rnn_ext.RNN(D, H, K, seed=seed)
        self.params = {k: v.copy() for k, v in self.model.parameters().items()}
        self.torch = TorchPeer(self.params, self.x, self.y) if "torch" in impls else None
        self.verified = {}

    @property
    def shape(self):
        return dict(T=self.T, B=self.B, D=self.D, H=self.H, K=self.K)

    def verify(self, impls):
        loss, grads = self.model.loss_and_grad(self.x, self.y)
        if "numpy" in impls:
            l_np, g_np = hoisted_numpy.loss_and_grad(self.params, self.x, self.y)
            g_np.pop("h0")
            self.verified["numpy"] = check_peer("numpy", l_np, g_np, loss, grads)
        if "torch" in impls:
            l_t, g_t = self.torch.loss_and_grad()
            self.verified["torch"] = check_peer("torch", l_t, g_t, loss, grads)

    def call(self, impl, op):
        """A zero-argument function doing one call of `op` by `impl`."""
        x, y = self.x, self.y
        if impl == "rnn_ext":
            m = self.model
            return {
                "forward": lambda: m.forward(x),
                "grad_V": lambda: m.grad_V(x, y),
                "loss_and_grad": lambda: m.loss_and_grad(x, y),
            }[op]
        if impl == "numpy":
            p = self.params
            return {
                "forward": lambda: hoisted_numpy.forward(p, x),
                "grad_V": lambda: hoisted_numpy.grad_V(p, x, y),
                "loss_and_grad": lambda: hoisted_numpy.loss_and_grad(p, x, y),
            }[op]
        return getattr(self.torch, op)


def time_block(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def thread_context(impl, n, args, numpy_blas):
    if impl == "rnn_ext":
        return _threads.threads(n if (n == 1 or args.forced) else None)
    if impl == "numpy":
        return numpy_blas.limit(n)
    torch.set_num_threads(n)
    return _threads._NO_CHANGE


def run_case(case, args, numpy_blas):
    """{(threads, impl, op): [seconds per call, one per round]}, the calls per
    block, and {threads: [sgemm GFLOP/s, one per round]} for one case.

    Every thread count, implementation and operation takes its turn once per
    round, each thread count after its own sgemm, so slow drifts of a shared
    machine hit them all alike.
    """
    keys = [(n, impl, op) for n in args.threads for op in args.ops for impl in args.impl]
    limits = {n: [] for n in args.threads}  # sgemm GFLOP/s, one per round
    calls = {}
    for key in keys:  # warm-up, and how many calls fill --min-time
        n, impl, op = key
        fn = case.call(impl, op)
        with thread_context(impl, n, args, numpy_blas):
            once = time_block(fn, 1)
            once = min(once, time_block(fn, 1))
        calls[key] = max(1, int(args.min_time / max(once, 1e-7)))
    times = {key: [] for key in keys}
    for _ in range(args.repeat):
        for key in keys:
            n, impl, op = key
            if len(limits[n]) < len(times[key]) + 1:
                limits[n].append(roofline.sgemm_gflops(args.roofline_size, n, repeat=1)[0])
            settle = args.settle if args.settle is not None else (0.1 if n > 1 else 0.0)
            if settle:
                time.sleep(settle)
            fn = case.call(impl, op)
            with thread_context(impl, n, args, numpy_blas):
                times[key].append(time_block(fn, calls[key]))
    return times, calls, limits


def paired(num, den):
    """Median of num[r] / den[r] over the rounds r (None if either is missing)."""
    if not num or not den:
        return None
    return statistics.median(a / b for a, b in zip(num, den))


def measure_roofline(n, args):
    median, best = roofline.sgemm_gflops(args.roofline_size, n, repeat=max(3, args.repeat))
    return {"median": median, "best": best}


def fmt_ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_x(ratio):
    return "-" if ratio is None else f"{ratio:.2f}x"


HEADER = (
    f"{'thr':>3} {'T':>4} {'B':>3} {'D=K':>4} {'H':>5} {'op':<13} "
    f"{'rnn_ext ms':>10} {'numpy ms':>9} {'torch ms':>9} {'GFLOP/s':>8} "
    f"{'vs numpy':>8} {'vs torch':>8} {'roofline':>8}"
)


def table_line(row):
    roof = row["roofline_frac"]
    return (
        f"{row['threads']:>3} {row['T']:>4} {row['B']:>3} {row['D']:>4} {row['H']:>5} "
        f"{row['op']:<13} {fmt_ms(row['rnn_ext_s']):>10} {fmt_ms(row['numpy_s']):>9} "
        f"{fmt_ms(row['torch_s']):>9} "
        f"{'-' if row['rnn_ext_gflops'] is None else format(row['rnn_ext_gflops'], '.1f'):>8} "
        f"{fmt_x(row['vs_numpy']):>8} {fmt_x(row['vs_torch']):>8} "
        f"{'-' if roof is None else format(100 * roof, '.0f') + '%':>8}"
    )


def machine_info():
    return {
        "cpu": roofline.cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": __import__("scipy").__version__,
        "torch": None if torch is None else torch.__version__,
        "rnn_ext": getattr(rnn_ext, "__version__", "?"),
        "rnn_ext_path": os.path.dirname(rnn_ext.__file__),
        "kernel_blas": roofline.blas_description(),
        "env": {k: os.environ[k] for k in os.environ if "BLAS" in k or k.startswith("OMP_")},
    }


# The performance targets: (label, threads, case filter, column, minimum ratio).
TARGETS = [
    ("B=1, H<=256: vs PyTorch", 1, lambda r: r["B"] == 1 and r["H"] <= 256, "vs_torch", 20),
    ("B=1, H<=256: vs hoisted NumPy", 1, lambda r: r["B"] == 1 and r["H"] <= 256, "vs_numpy", 4),
    ("B=1, H=1024: vs PyTorch", 1, lambda r: r["B"] == 1 and r["H"] == 1024, "vs_torch", 8),
    ("B=32, H<=256: vs PyTorch", 1, lambda r: r["B"] == 32 and r["H"] <= 256, "vs_torch", 3),
    ("B=32, H<=256: vs hoisted NumPy", 1, lambda r: r["B"] == 32 and r["H"] <= 256, "vs_numpy", 1.5),
    ("T=100, B=32, D=K=256, H=1024: vs PyTorch", 1, lambda r: (r["T"], r["B"], r["D"], r["H"]) == (100, 32, 256, 1024), "vs_torch", 2),
    ("T=100, B=32, D=K=256, H=1024: vs hoisted NumPy", 1, lambda r: (r["T"], r["B"], r["D"], r["H"]) == (100, 32, 256, 1024), "vs_numpy", 1.15),
    ("T=100, B=32, D=K=256, H=1024: of sgemm", 1, lambda r: (r["T"], r["B"], r["D"], r["H"]) == (100, 32, 256, 1024), "roofline_frac", 0.85),
    ("T=100, B=32, D=K=256, H=1024: vs PyTorch", 2, lambda r: (r["T"], r["B"], r["D"], r["H"]) == (100, 32, 256, 1024), "vs_torch", 1.5),
    ("T=100, B=32, D=K=256, H=1024: 2 threads over 1", 2, lambda r: (r["T"], r["B"], r["D"], r["H"]) == (100, 32, 256, 1024), "speedup", 1.8),
    ("T=100, B=64, D=K=65, H=512: of sgemm", 1, lambda r: (r["T"], r["B"], r["D"], r["H"]) == (100, 64, 65, 512), "roofline_frac", 0.85),
    ("T=100, B=64, D=K=65, H=512: 2 threads over 1", 2, lambda r: (r["T"], r["B"], r["D"], r["H"]) == (100, 64, 65, 512), "speedup", 1.8),
]


def target_lines(rows):
    """Each target of the fwd+bwd (loss_and_grad) rows: worst and best ratio, met or missed."""
    lines = ["| target (fwd+bwd) | threads | needed | measured (worst .. best) | |", "|---|---:|---:|---|---|"]
    for label, n, keep, column, needed in TARGETS:
        vals = [
            r[column] for r in rows
            if str(r["threads"]) == str(n) and r["op"] == "loss_and_grad" and keep(r)
            and r.get(column) is not None
        ]
        if not vals:
            continue
        pct = column == "roofline_frac"
        show = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.2f}x")
        met = "met" if min(vals) >= needed else ("partly" if max(vals) >= needed else "missed")
        lines.append(f"| {label} | {n} | {show(needed)} | {show(min(vals))} .. {show(max(vals))} | {met} |")
        if column == "speedup":
            machine = [r["sgemm_speedup"] for r in rows if str(r["threads"]) == str(n)
                       and r["op"] == "loss_and_grad" and keep(r) and r.get("sgemm_speedup")]
            if machine:
                lines.append(f"| the same rounds' sgemm, 2 threads over 1 | {n} | | "
                             f"{show(min(machine))} .. {show(max(machine))} | |")
    by_case = {}
    for r in rows:
        if r["op"] == "loss_and_grad" and r.get("rnn_ext_s") is not None:
            by_case.setdefault((r["T"], r["B"], r["D"], r["H"]), {})[str(r["threads"])] = r["rnn_ext_s"]
    slow = [
        (t["2"] / t["1"], case) for case, t in by_case.items()
        if "1" in t and "2" in t and _threads._auto_threads(case[0], case[1], case[2], case[3], case[2]) == 1
    ]
    if slow:
        worst, case = max(slow)
        typical = statistics.median(ratio for ratio, _ in slow)
        lines.append(
            f"| 2 threads never slower than 1 where the per-pass rule picks 1 thread | 2 | 1.00x | "
            f"2-thread/1-thread time: median {typical:.2f}x, worst {worst:.2f}x "
            f"(T, B, D, H = {case}) over {len(slow)} cases | {'met' if worst <= 1.0 else 'see note'} |"
        )
    return lines


def markdown(path):
    """A saved run as Markdown: one table per thread count, fwd+bwd first."""
    with open(path) as f:
        run = json.load(f)
    meta, rows = run["meta"], run["rows"]
    print(
        f"{meta['cpu']}, {meta['cores']} cores; numpy {meta['numpy']}, scipy {meta['scipy']}, "
        f"torch {meta['torch']}; rnn_ext's BLAS: {meta['kernel_blas']}\n"
    )
    for n, roof in meta["rooflines"].items():
        print(
            f"**{n} thread(s)**: sgemm {roof['gflops']:.1f} GFLOP/s (start {roof['start']['median']:.1f}, "
            f"end {roof['end']['median']:.1f}). Median ms per call.\n"
        )
        print(
            "| T | B | D=K | H | op | rnn_ext ms | numpy ms | torch ms | GFLOP/s "
            "| vs numpy | vs torch | roofline | load |"
        )
        print("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            if str(row["threads"]) != str(n):
                continue
            roof_frac = row["roofline_frac"]
            gf = row["rnn_ext_gflops"]
            print(
                f"| {row['T']} | {row['B']} | {row['D']} | {row['H']} | {row['op']} | "
                f"{fmt_ms(row['rnn_ext_s'])} | {fmt_ms(row['numpy_s'])} | {fmt_ms(row['torch_s'])} | "
                f"{'-' if gf is None else format(gf, '.1f')} | {fmt_x(row['vs_numpy'])} | "
                f"{fmt_x(row['vs_torch'])} | "
                f"{'-' if roof_frac is None else format(100 * roof_frac, '.0f') + '%'} | "
                f"{row['load']:.1f} |"
            )
        print()
    print("\n".join(target_lines(rows)))


def main(argv=None):
    args = parse_args(argv)
    if args.markdown:
        markdown(args.markdown)
        return
    info = machine_info()
    print(
        f"{info['cpu']}, {info['cores']} cores; Python {info['python']}, numpy {info['numpy']}, "
        f"scipy {info['scipy']}, torch {info['torch']}, rnn_ext {info['rnn_ext']}"
    )
    print(f"rnn_ext's BLAS: {info['kernel_blas']}; load average {os.getloadavg()[0]:.2f}")
    numpy_blas = NumpyBlas()
    cases = [
        (T, B, DK, H, DK) for T in args.T for B in args.B for DK in args.DK for H in args.H
    ]
    started = time.time()
    rooflines = {n: {"start": measure_roofline(n, args)} for n in args.threads}
    for n, roof in rooflines.items():
        print(f"sgemm {args.roofline_size}^3 on {n} thread(s): {roof['start']['median']:.1f} GFLOP/s")
    print("\n" + HEADER)
    rows = []
    for T, B, D, H, K in cases:
        case = Case(T, B, D, H, K, args.impl)
        case.verify(args.impl)
        load = os.getloadavg()[0]
        times, calls, limits = run_case(case, args, numpy_blas)
        for n in args.threads:
            for op in args.ops:
                raw = {impl: times[n, impl, op] for impl in IMPLS if (n, impl, op) in times}
                med = {impl: statistics.median(raw[impl]) if impl in raw else None for impl in IMPLS}
                ours = med["rnn_ext"]
                work = flops(op, T, B, D, H, K) / 1e9
                gflops = None if ours is None else work / ours
                first = args.threads[0]
                row = dict(
                    threads=n, T=T, B=B, D=D, H=H, K=K, op=op,
                    rnn_ext_s=ours, numpy_s=med["numpy"], torch_s=med["torch"],
                    rnn_ext_gflops=gflops,
                    vs_numpy=paired(raw.get("numpy"), raw.get("rnn_ext")),
                    vs_torch=paired(raw.get("torch"), raw.get("rnn_ext")),
                    roofline_frac=None if ours is None
                    else paired([work / t for t in raw["rnn_ext"]], limits[n]),
                    sgemm_gflops=statistics.median(limits[n]),
                    speedup=None if n == first or (first, "rnn_ext", op) not in times
                    else paired(times[first, "rnn_ext", op], raw.get("rnn_ext")),
                    sgemm_speedup=None if n == first else paired(limits[n], limits[first]),
                    numpy_err=case.verified.get("numpy"), torch_err=case.verified.get("torch"),
                    load=load,
                    raw=raw, sgemm_raw=limits[n],
                    calls_per_block={
                        impl: calls[n, impl, op] for impl in IMPLS if (n, impl, op) in calls
                    },
                )
                rows.append(row)
                print(table_line(row), flush=True)
    for n, roof in rooflines.items():
        roof["end"] = measure_roofline(n, args)
        roof["gflops"] = max(roof["start"]["median"], roof["end"]["median"])
        print(
            f"sgemm at {n} thread(s): {roof['start']['median']:.1f} GFLOP/s at the start, "
            f"{roof['end']['median']:.1f} at the end (the roofline column pairs each round "
            f"with that round's sgemm)"
        )
    print_final(rows, rooflines)
    save(rows, rooflines, info, args, time.time() - started)


def print_final(rows, rooflines):
    """The whole table again, the roofline column against each thread count's final sgemm."""
    print("\nmedian ms per call; vs = peer's time / rnn_ext's; roofline = rnn_ext GFLOP/s / sgemm "
          "GFLOP/s; ratios are medians of per-round ratios")
    for n, roof in rooflines.items():
        print(f"\n{n} thread(s), sgemm {roof['gflops']:.1f} GFLOP/s")
        print(HEADER)
        for row in rows:
            if row["threads"] == n:
                print(table_line(row))


def save(rows, rooflines, info, args, seconds):
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(args.out, f"bench-{stamp}{'-' + args.tag if args.tag else ''}")
    meta = dict(info, args={k: v for k, v in vars(args).items()}, seconds=seconds, rooflines=rooflines)
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    fields = [k for k in rows[0] if k not in ("raw", "sgemm_raw", "calls_per_block")] if rows else []
    with open(base + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"\n{len(rows)} rows in {seconds / 60:.1f} min -> {base}.csv, {base}.json")


if __name__ == "__main__":
    main()
