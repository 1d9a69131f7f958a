"""Python threads running rnn_ext side by side: N threads against 1, BLAS at one thread.

    python benchmarks/threads_scaling.py                 # 1 and 2 threads, three sizes
    python benchmarks/threads_scaling.py --threads 1,2,4 --seconds 2

rnn_ext's kernel releases the GIL for the whole pass, so N Python threads
each calling loss_and_grad should do about N times the work of one on N free
cores.  With the BLAS held at one thread (rnn_ext.threads(1)) each call runs
on one core and the threads are the only parallelism.  Two layouts:

- separate: each thread has its own model (same parameters) and its own batch;
- shared: all threads call one model.

Each measurement lets every thread run loss_and_grad for --seconds (all start
together at a barrier) and reports calls per second, summed over threads;
--repeat measurements per setting, interleaved, and the median is shown with
the speedup over one thread (ideal: N).  Before timing, every thread's result
is checked to equal a serial call bit for bit.

On a shared machine the other cores may be busy: "cores" is the process's
CPU time over the wall time, i.e. how many cores the threads actually got,
and "per core" the calls per CPU-second.  Equal per-core rates at 1 and N
threads mean the threads do not serialise each other (the GIL is released);
the wall-clock speedup is then as good as the free cores allow.
"""

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np

try:
    import rnn_ext
except ImportError:  # a source tree built in place
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import rnn_ext

CASES = [(25, 1, 65, 128, 65), (25, 32, 65, 256, 65), (100, 32, 256, 1024, 256)]


def make_work(T, B, D, H, K, n, shared):
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, D, (T, B)) for _ in range(n)]
    ys = [rng.integers(0, K, (T, B)) for _ in range(n)]
    first = rnn_ext.RNN(D, H, K, seed=0)
    models = [first] * n if shared else [rnn_ext.RNN(D, H, K, seed=0) for _ in range(n)]
    return models, xs, ys


def check_bit_identical(models, xs, ys):
    """Every thread's result, computed concurrently, equals the serial one exactly."""
    serial = [m.loss_and_grad(x, y) for m, x, y in zip(models, xs, ys)]
    results = [None] * len(models)
    barrier = threading.Barrier(len(models))

    def run(i):
        barrier.wait()
        for _ in range(3):
            results[i] = models[i].loss_and_grad(xs[i], ys[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (loss, g), (loss2, g2) in zip(serial, results):
        if loss != loss2 or any(
            not np.array_equal(a, g2.parameters()[k]) for k, a in g.parameters().items()
        ):
            raise AssertionError("a concurrent result differs from the serial one")


def throughput(models, xs, ys, seconds):
    """Calls per second summed over len(models) threads running for `seconds`,
    and the cores the process had meanwhile (its CPU time over the wall time)."""
    n = len(models)
    counts = [0] * n
    barrier = threading.Barrier(n + 1)
    stop = threading.Event()

    def run(i):
        m, x, y = models[i], xs[i], ys[i]
        barrier.wait()
        done = 0
        while not stop.is_set():
            m.loss_and_grad(x, y)
            done += 1
        counts[i] = done

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    # every thread finishes the call it is in, so count the time to the last join
    wall = time.perf_counter() - start
    return sum(counts) / wall, (time.process_time() - cpu) / wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="Python thread counts")
    parser.add_argument(
        "--seconds", type=float, default=1.5, help="per measurement (longer for slow calls)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    counts = sorted({int(v) for v in args.threads.split(",")})
    print(f"{os.cpu_count()} cores; BLAS at one thread; load average {os.getloadavg()[0]:.2f}")
    print(f"{'T':>4} {'B':>3} {'D=K':>4} {'H':>5} {'models':<9}"
          + "".join(f"{f'{n} thr calls/s':>16}{'cores':>6}{'per core':>9}" for n in counts)
          + "".join(f"{f'{n} vs 1':>9}" for n in counts if n > 1))
    with rnn_ext.threads(1):
        for case in CASES:
            for shared in (False, True):
                work = {n: make_work(*case, n, shared) for n in counts}
                for n in counts:
                    if n > 1:
                        check_bit_identical(*work[n])
                    throughput(*work[n], min(0.2, args.seconds))  # warm-up
                # long enough for at least 12 calls per thread
                models, xs, ys = work[counts[0]]
                start = time.perf_counter()
                models[0].loss_and_grad(xs[0], ys[0])
                seconds = max(args.seconds, 12 * (time.perf_counter() - start))
                rates = {n: [] for n in counts}
                cores = {n: [] for n in counts}
                for _ in range(args.repeat):
                    for n in counts:
                        rate, used = throughput(*work[n], seconds)
                        rates[n].append(rate)
                        cores[n].append(used)
                med = {n: statistics.median(r) for n, r in rates.items()}
                used = {n: statistics.median(c) for n, c in cores.items()}
                T, B, D, H, _ = case
                print(f"{T:>4} {B:>3} {D:>4} {H:>5} {'shared' if shared else 'separate':<9}"
                      + "".join(f"{med[n]:>16.1f}{used[n]:>6.2f}{med[n] / used[n]:>9.1f}"
                                for n in counts)
                      + "".join(f"{med[n] / med[1]:>8.2f}x" for n in counts if n > 1 and 1 in med),
                      flush=True)


if __name__ == "__main__":
    main()
