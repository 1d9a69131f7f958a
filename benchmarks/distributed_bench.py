"""Training steps per second on a Dask LocalCluster against the single-process trainer.

    python benchmarks/distributed_bench.py                  # B=64, H=512, T=50, 1 and 2 workers
    python benchmarks/distributed_bench.py --workers 1 2 4 --steps 40 --json out.json

Character-level training on the default corpus (CPython's pydoc topics),
float32, Adam, as ``rnn-ext train`` does.  For each configuration the same
model (same seed) takes ``--warmup`` untimed steps and then ``--steps``
timed ones; the time per step is ``History.seconds / steps`` (training steps
only, no evaluation).

Measured per step:

- single process, the BLAS at its automatic thread count (what ``rnn-ext
  train`` does on this machine) and pinned to one thread (what each Dask
  worker gets: the nanny sets OPENBLAS_NUM_THREADS=1);
- single process, one thread, on a batch of B / n: the kernel work of one
  of n workers, so the ideal n-worker step;
- n workers: steps per second, the overhead against the ideal, the bytes
  the client sent (parameters) and received (summed gradients + the shards'
  hidden states), counted by ``DistributedTrainer.traffic``, and the bytes
  the workers sent (Dask's ``transfer_outgoing_bytes_total``: to the client
  and to each other; the tree sum and the parameter copies are the part that
  goes worker to worker).

The final parameters of each distributed run are compared with the
single-process run's (max relative difference, float32).
"""

import argparse
import json
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rnn_ext  # noqa: E402
from rnn_ext.text import Vocab, default_corpus  # noqa: E402
from rnn_ext.training import Trainer  # noqa: E402


def options(args, batch=None):
    return {"hidden": args.hidden, "seq_len": args.seq_len, "batch": batch or args.batch, "seed": 0,
            "dtype": np.float32}


def step_times(trainer, steps):
    """Seconds of each of ``steps`` training steps (History.seconds, step by step)."""
    hist = trainer.history
    times = []
    for _ in range(steps):
        s0 = hist.seconds
        trainer.run(1, eval_every=0, final_eval=False)
        times.append(hist.seconds - s0)
    return times


def timed(trainer, args):
    """Median seconds per step after the warm-up (the machine is shared: medians, not means)."""
    trainer.run(args.warmup, eval_every=0, final_eval=False)
    return float(np.median(step_times(trainer, args.steps)))


def single(text, args, threads=None, batch=None):
    tr = Trainer(None, text, **options(args, batch))
    if threads is None:
        return timed(tr, args), tr
    with rnn_ext.threads(threads):
        return timed(tr, args), tr


def rel_diff(a, b):
    return max(float(np.max(np.abs(a.parameters()[n].astype(np.float64) - p)) / np.max(np.abs(p)))
               for n, p in b.parameters().items())


def distributed_run(text, args, n, reference):
    from distributed import Client, LocalCluster

    import rnn_ext.distributed as rd

    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(n, timeout=60)
        with rd.DistributedTrainer(None, text, client=client, **options(args)) as tr:
            tr.run(args.warmup, eval_every=0, final_eval=False)

            def outgoing(dask_worker):
                return dask_worker.transfer_outgoing_bytes_total

            out0 = sum(client.run(outgoing).values())
            t0 = dict(tr.traffic)
            times = step_times(tr, args.steps)
            steps = len(times)
            per_step = float(np.median(times))
            out1 = sum(client.run(outgoing).values())
            sent = (tr.traffic["sent"] - t0["sent"]) / steps
            received = (tr.traffic["received"] - t0["received"]) / steps
            return {
                "workers": n,
                "shards": len(tr.shards),
                "s_per_step": per_step,
                "mean_s_per_step": float(np.mean(times)),
                "steps_per_s": 1.0 / per_step,
                "client_sent_bytes_per_step": sent,
                "client_received_bytes_per_step": received,
                "workers_sent_bytes_per_step": (out1 - out0) / steps,
                "worker_to_worker_bytes_per_step": (out1 - out0) / steps - received,
                "max_rel_param_diff_vs_single": rel_diff(tr.model, reference.model),
            }


def fixed_cost(text, n):
    """Median seconds per step of a tiny model (H=8, T=2, one stream per worker): Dask's own cost."""
    from distributed import Client, LocalCluster

    import rnn_ext.distributed as rd

    tiny = {"hidden": 8, "seq_len": 2, "batch": n, "seed": 0, "dtype": np.float32}
    t_local = float(np.median(step_times(Trainer(None, text, **tiny), 30)))
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(n, timeout=60)
        with rd.DistributedTrainer(None, text, client=client, **tiny) as tr:
            tr.run(3, eval_every=0, final_eval=False)
            return float(np.median(step_times(tr, 30))) - t_local


def once(text, args):
    res = {"single": {}, "distributed": {}}
    t_auto, ref = single(text, args)
    t_one, ref1 = single(text, args, threads=1)
    res["single"] = {"auto_threads_s_per_step": t_auto, "one_thread_s_per_step": t_one,
                     "one_thread_vs_auto_max_rel_param_diff": rel_diff(ref1.model, ref.model)}
    for n in args.workers:
        t_ideal, _ = single(text, args, threads=1, batch=-(-args.batch // n))
        r = distributed_run(text, args, n, ref)
        r["ideal_s_per_step"] = t_ideal
        r["fixed_cost_s_per_step"] = fixed_cost(text, n)
        res["distributed"][n] = r
    return res


def best(runs, *path):
    """The smallest value at runs[i][path...] over the repeats."""
    values = []
    for r in runs:
        for key in path:
            r = r[key]
        values.append(r)
    return min(values)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=1,
                   help="run everything this many times and report each time's best (the least disturbed)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    text = default_corpus()
    print(f"rnn_ext {rnn_ext.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
          f"B={args.batch} H={args.hidden} T={args.seq_len}, float32, "
          f"{len(Vocab.from_text(text))} characters in the vocabulary; "
          f"{args.warmup} warm-up + {args.steps} timed steps, best of {args.repeat}")
    runs = [once(text, args) for _ in range(args.repeat)]
    t_auto = best(runs, "single", "auto_threads_s_per_step")
    t_one = best(runs, "single", "one_thread_s_per_step")
    print(f"single process, auto BLAS threads : {t_auto * 1e3:7.1f} ms/step  {1 / t_auto:6.2f} steps/s")
    print(f"single process, 1 BLAS thread     : {t_one * 1e3:7.1f} ms/step  {1 / t_one:6.2f} steps/s")
    summary = {"single": {"auto_threads_s_per_step": t_auto, "one_thread_s_per_step": t_one}, "workers": {}}
    for n in args.workers:
        r = runs[0]["distributed"][n]
        t = best(runs, "distributed", n, "s_per_step")
        ideal = best(runs, "distributed", n, "ideal_s_per_step")
        fixed = best(runs, "distributed", n, "fixed_cost_s_per_step")
        summary["workers"][n] = {"s_per_step": t, "steps_per_s": 1 / t, "ideal_s_per_step": ideal,
                                 "overhead_vs_ideal_s": t - ideal, "overhead_vs_single_auto_s": t - t_auto,
                                 "fixed_cost_s": fixed, **{k: v for k, v in r.items() if "bytes" in k}}
        print(f"{n} worker{'s' if n > 1 else ' '} ({r['shards']} shards)        : "
              f"{t * 1e3:7.1f} ms/step  {1 / t:6.2f} steps/s; "
              f"ideal (1 thread, B={-(-args.batch // n)}) {ideal * 1e3:.1f} ms, "
              f"overhead {(t - ideal) * 1e3:+.1f} ms/step; vs single process (auto) {(t - t_auto) * 1e3:+.1f} ms/step; "
              f"fixed cost (tiny model) {fixed * 1e3:.1f} ms/step")
        print(f"    bytes/step: client sent {r['client_sent_bytes_per_step'] / 1e6:.3f} MB, "
              f"received {r['client_received_bytes_per_step'] / 1e6:.3f} MB; workers sent "
              f"{r['workers_sent_bytes_per_step'] / 1e6:.3f} MB "
              f"(to each other {r['worker_to_worker_bytes_per_step'] / 1e6:.3f} MB); "
              f"params vs single process: max rel diff {r['max_rel_param_diff_vs_single']:.2g}")
    if len(args.workers) > 1:
        base = summary["workers"][args.workers[0]]["s_per_step"]
        for n in args.workers[1:]:
            print(f"speed-up {n} workers vs {args.workers[0]}: {base / summary['workers'][n]['s_per_step']:.2f}x; "
                  f"vs single process (auto) {t_auto / summary['workers'][n]['s_per_step']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "summary": summary, "runs": runs}, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
