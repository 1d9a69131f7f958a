"""Peak memory of one fwd+bwd call: rnn_ext against PyTorch (and hoisted NumPy).

    python benchmarks/memory.py            # the bench.py grid, one thread
    python benchmarks/memory.py --quick
    python benchmarks/memory.py --T 100 --B 32 --DK 256 --H 1024

Method.  Each (implementation, case) runs in a fresh child process, so no
allocator state or library buffer carries over between them.  The child sets
up the model and its input (parameters, ids, and PyTorch's one-hot input
tensor are not counted), makes one warm-up call (one-time costs: lazy library
initialisation, BLAS buffers, PyTorch's kernel caches), drops its result and
all gradients, then on Linux resets the kernel's peak-RSS counter (writing 5
to /proc/self/clear_refs resets VmHWM) and reads VmRSS as the baseline.  The
measured number is VmHWM - baseline after one more fwd+bwd call whose result
is still alive: the extra resident memory the call needed at its peak,
including the gradients it returns.  glibc's malloc is told to serve every
allocation of 4 KiB or more by mmap and to trim freed memory at once
(MALLOC_MMAP_THRESHOLD_=4096, MALLOC_TRIM_THRESHOLD_=0, MALLOC_TOP_PAD_=0), so
freed arrays go back to the system and memory kept from the warm-up call
cannot hide the second call's needs; the same rule applies to every
implementation.  Allocations under 4 KiB (PyTorch's per-step tensors at B = 1,
small H) can still reuse resident heap pages, so below about 1 MiB the
numbers are at the resolution of pages and allocator reuse and can even fall
under "floor".  Where /proc/self/clear_refs cannot be written (macOS,
Windows) the first-call method is used instead: the growth of ru_maxrss over
a first call in a fresh child, one-time costs included (marked "first").

Alongside, tracemalloc's peak for the same call: the NumPy arrays it
allocates (NumPy reports its data buffers to tracemalloc; PyTorch does not,
so that column is empty for it).  "floor" is what BPTT laid out as in
DESIGN.md §3 needs: float32 hidden states (T+1)·B·H, the probabilities
T·B·K, one (T, B, H) buffer of deltas, and the gradients.
"""

import argparse
import csv
import datetime
import gc
import json
import os
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ("rnn_ext", "numpy", "torch")
MiB = 1024.0 * 1024.0


def int_list(text):
    return [int(v) for v in text.split(",") if v]


def import_rnn_ext():
    try:
        import rnn_ext
    except ImportError:  # a source tree built in place
        sys.path.insert(0, os.path.dirname(HERE))
        import rnn_ext
    return rnn_ext


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def reset_peak():
    """Reset VmHWM to the current RSS; False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        status_kib("VmHWM")
        return True
    except OSError:
        return False


def child(impl, T, B, D, H, K):
    """Run in the child process: print one JSON line of measurements."""
    import numpy as np

    rnn_ext = import_rnn_ext()
    from rnn_ext import _threads

    rng = np.random.default_rng(0)
    x = rng.integers(0, D, (T, B))
    y = rng.integers(0, K, (T, B))
    model = rnn_ext.RNN(D, H, K, seed=0)
    params = {k: v.copy() for k, v in model.parameters().items()}
    clear = lambda: None  # noqa: E731
    if impl == "rnn_ext":
        _threads.set_num_threads(1)
        model_call = model.loss_and_grad
        call = lambda: model_call(x, y)  # noqa: E731
    elif impl == "numpy":
        import hoisted_numpy
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        call = lambda: hoisted_numpy.loss_and_grad(params, x, y)  # noqa: E731
    else:
        import torch
        from torch_peer import TorchPeer

        torch.set_num_threads(1)
        peer = TorchPeer(params, x, y)
        call = peer.loss_and_grad
        clear = peer._zero_grad
    if impl != "rnn_ext":
        del model  # only the implementation measured keeps its parameters

    result = call()  # warm-up
    del result
    clear()
    gc.collect()
    if not reset_peak():
        raise SystemExit("cannot reset the peak RSS here: use --first-call")
    base = status_kib("VmRSS")
    result = call()
    peak = status_kib("VmHWM") - base
    del result
    clear()
    gc.collect()

    import tracemalloc

    tracemalloc.start()
    result = call()  # kept alive while the peak is read, as above
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    print(json.dumps({"impl": impl, "peak_bytes": peak * 1024, "traced_bytes": traced_peak, "method": "hwm"}))


def child_first_call(impl, T, B, D, H, K):
    """Fallback without /proc: growth of ru_maxrss over a first call (one-time costs included)."""
    import numpy as np

    rnn_ext = import_rnn_ext()
    rng = np.random.default_rng(0)
    x = rng.integers(0, D, (T, B))
    y = rng.integers(0, K, (T, B))
    model = rnn_ext.RNN(D, H, K, seed=0)
    if impl == "rnn_ext":
        call = lambda: model.loss_and_grad(x, y)  # noqa: E731
    elif impl == "numpy":
        import hoisted_numpy

        params = model.parameters()
        call = lambda: hoisted_numpy.loss_and_grad(params, x, y)  # noqa: E731
    else:
        from torch_peer import TorchPeer

        call = TorchPeer(model.parameters(), x, y).loss_and_grad
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = call()
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * scale
    del result
    print(json.dumps({"impl": impl, "peak_bytes": peak, "traced_bytes": None, "method": "first"}))


def floor_bytes(T, B, D, H, K):
    params = H * D + H * H + K * H + H + K
    return 4 * ((T + 1) * B * H + T * B * K + T * B * H + params)


def measure(impl, case, first_call=False):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0", MALLOC_TOP_PAD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, *map(str, case)]
    if first_call:
        cmd.append("--first-call")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} {case}: child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--T", type=int_list, default=[25, 100])
    parser.add_argument("--B", type=int_list, default=[1, 32])
    parser.add_argument("--DK", type=int_list, default=[65, 256])
    parser.add_argument("--H", type=int_list, default=[64, 128, 256, 1024])
    parser.add_argument("--impl", default=",".join(IMPLS))
    parser.add_argument("--first-call", action="store_true", help="the fallback method everywhere")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--child", nargs=6, metavar=("IMPL", "T", "B", "D", "H", "K"))
    args = parser.parse_args(argv)
    if args.child:
        impl, *shape = args.child
        (child_first_call if args.first_call else child)(impl, *map(int, shape))
        return
    if args.quick:
        args.T, args.B, args.DK, args.H = [25, 100], [1, 32], [65, 256], [128, 1024]
    impls = [i for i in args.impl.split(",") if i]
    if not args.first_call and not reset_peak():
        print("cannot reset the peak RSS here (no /proc/self/clear_refs): first-call method")
        args.first_call = True
    try:
        import torch  # noqa: F401
    except ImportError:
        if "torch" in impls:
            print("torch is not installed: no PyTorch column (pip install torch==2.13.0)")
            impls.remove("torch")
    cases = [(T, B, DK, H, DK) for T in args.T for B in args.B for DK in args.DK for H in args.H]
    header = (
        f"{'T':>4} {'B':>3} {'D=K':>4} {'H':>5} {'floor MiB':>9} "
        + "".join(f"{name + ' MiB':>12}" for name in impls)
        + f"{'rnn_ext/torch':>14} {'np-arrays rnn_ext':>18} {'np-arrays numpy':>16}"
    )
    print("peak extra resident memory of one fwd+bwd call (one thread); see the docstring for the method")
    print(header)
    rows = []
    for case in cases:
        res = {impl: measure(impl, case, args.first_call) for impl in impls}
        row = dict(zip("TBDHK", case), floor_bytes=floor_bytes(*case))
        for impl, r in res.items():
            row[f"{impl}_peak_bytes"] = r["peak_bytes"]
            row[f"{impl}_traced_bytes"] = r["traced_bytes"]
            row["method"] = r["method"]
        if "torch" in res and "rnn_ext" in res:
            row["rnn_ext_over_torch"] = res["rnn_ext"]["peak_bytes"] / max(res["torch"]["peak_bytes"], 1)
        rows.append(row)

        def traced(name, res=res):
            if name in res and res[name]["traced_bytes"] is not None:
                return f"{res[name]['traced_bytes'] / MiB:.2f}"
            return "-"

        ratio = row.get("rnn_ext_over_torch")
        print(
            f"{case[0]:>4} {case[1]:>3} {case[2]:>4} {case[3]:>5} {row['floor_bytes'] / MiB:>9.2f} "
            + "".join(f"{res[name]['peak_bytes'] / MiB:>12.2f}" for name in impls)
            + f"{'-' if ratio is None else format(ratio, '.2f'):>14} {traced('rnn_ext'):>18} {traced('numpy'):>16}",
            flush=True,
        )
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "memory-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(base + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for r in rows for k in r}))
        writer.writeheader()
        writer.writerows(rows)
    print(f"-> {base}.csv, {base}.json")


if __name__ == "__main__":
    main()
