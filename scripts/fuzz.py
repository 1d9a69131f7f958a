#!/usr/bin/env python3
"""Long fuzz run of rnn_ext's public API: the property tests' cases, by the hundred thousand.

Every case of ``tests/test_properties.py`` (a model, parameter assignments,
and forward / loss / grad_V / loss_and_grad on a batch with hostile twists),
plus hostile constructor arguments, is run and held to the same rule: results
that match the NumPy reference, or ValueError/TypeError with a message.

Batches of cases run in child processes, so a crash (segfault, abort, heap
corruption) or a hang kills only the child: the parent sees it, reads the
case the child was running when it died (the child writes each case to a
state file before running it) and reports it with a pickle to replay::

    python scripts/fuzz.py                       # >= 100 000 calls, 2 workers
    python scripts/fuzz.py --calls 2000000 --workers 2
    python scripts/fuzz.py --replay fuzz-out/crash-....pkl
    python scripts/fuzz.py --self-test           # proves a crash is caught

Prints the calls made, crashes, hangs and unexpected outcomes (each kind once,
with its count and a reproducer); exits 1 if there were any.  Not part of the
test suite: it runs for minutes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import random
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_properties():
    """tests/test_properties.py, imported by path (the tests are not a package).

    rnn_ext itself comes from this checkout (built in place), as in the children."""
    import importlib.util

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    spec = importlib.util.spec_from_file_location("rnn_ext_test_properties",
                                                  ROOT / "tests" / "test_properties.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------
# the child: run `n` cases drawn with hypothesis from `seed`

def child(seed: int, n: int, state: Path, problems_out: Path, crash_at: int | None) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    tp = load_properties()
    stats = tp.Stats()
    counter = {"cases": 0}
    found = open(problems_out, "a")

    def save_state(kind, case):
        tmp = state.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pickle.dump({"kind": kind, "case": case, "calls": stats.calls}, f)
        os.replace(tmp, state)

    @settings(max_examples=n, derandomize=False, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @hseed(seed)
    @given(which=st.integers(0, 9), case=tp.cases(), ctor=tp.constructor_args())
    def run(which, case, ctor):
        counter["cases"] += 1
        if which == 0:
            save_state("constructor", ctor)
            problems = tp.check_constructor(*ctor, stats=stats)
            text = repr(ctor)
        else:
            save_state("case", case)
            problems = tp.check_case(case, stats)
            text = tp.describe(case)
        if crash_at is not None and counter["cases"] == crash_at:
            import ctypes

            ctypes.string_at(0)  # a deliberate segfault, for --self-test
        for p in problems:
            # one line per problem; the key (numbers blanked) groups repeats of one kind
            key = re.sub(r"[-+]?\d[\d.e+-]*", "#", p)[:100]
            found.write(json.dumps({"key": key, "problem": p, "case": text,
                                    "pickle": pickle.dumps((which, case if which else ctor)).hex()})
                        + "\n")
        found.flush()

    run()
    found.close()
    print(json.dumps({"calls": stats.calls, "cases": counter["cases"], "refused": stats.refused,
                      "returned": stats.returned}))


# ---------------------------------------------------------------------------
# the parent

def run_batch(seed: int, n: int, out: Path, timeout: float, crash_at: int | None) -> dict:
    state = out / f"state-{seed}.pkl"
    problems = out / f"problems-{seed}.jsonl"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--seed", str(seed),
           "--cases", str(n), "--state", str(state), "--problems", str(problems)]
    if crash_at is not None:
        cmd += ["--crash-at", str(crash_at)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, stdout, stderr = "timeout", exc.stdout or "", exc.stderr or ""
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    result = {"seed": seed, "rc": rc, "seconds": time.monotonic() - t0, "problems": []}
    if problems.exists():
        result["problems"] = [json.loads(line) for line in problems.read_text().splitlines() if line]
        problems.unlink()
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if rc == 0 and last.startswith("{"):
        result.update(json.loads(last))
        state.unlink(missing_ok=True)
        return result
    # the child died (or hung): what was it running?
    result["died"] = "hang" if rc == "timeout" else "crash"
    result["stderr"] = stderr[-3000:]
    if state.exists():
        saved = pickle.loads(state.read_bytes())
        result["calls"] = saved["calls"]
        keep = out / f"{result['died']}-seed{seed}.pkl"
        keep.write_bytes(pickle.dumps((saved["kind"], saved["case"])))
        state.unlink()
        result["reproducer"] = str(keep)
    return result


def replay(path: Path) -> int:
    tp = load_properties()
    kind, case = pickle.loads(path.read_bytes())
    if kind in ("constructor", 0):
        print(repr(case))
        problems = tp.check_constructor(*case)
    else:
        print(tp.describe(case))
        problems = tp.check_case(case)
    print("\n".join(problems) or "no problems")
    return 1 if problems else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=100_000, help="stop after this many calls")
    ap.add_argument("--batch", type=int, default=1000, help="cases per child process")
    ap.add_argument("--workers", type=int, default=2, help="child processes at a time")
    ap.add_argument("--seed", type=int, default=None, help="first batch's seed (default: random)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a batch is a hang")
    ap.add_argument("--out", type=Path, default=Path("fuzz-out"), help="reproducers go here")
    ap.add_argument("--replay", type=Path, help="re-run one saved case in this process")
    ap.add_argument("--self-test", action="store_true",
                    help="make the first child segfault on purpose; exit 0 iff it is caught")
    # the child's side
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--problems", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--crash-at", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.child:
        child(a.seed, a.cases, a.state, a.problems, a.crash_at)
        return 0
    if a.replay:
        return replay(a.replay)

    a.out.mkdir(parents=True, exist_ok=True)
    first = a.seed if a.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"rnn_ext fuzz: target {a.calls} calls, {a.batch} cases per child, "
          f"{a.workers} workers, seeds from {first}; reproducers in {a.out}/", flush=True)

    if a.self_test:
        r = run_batch(first, 50, a.out, a.timeout, crash_at=7)
        ok = r.get("died") == "crash" and "reproducer" in r
        print(f"self-test: child exit {r['rc']}, seen as {r.get('died')}, "
              f"reproducer {r.get('reproducer')}: {'OK' if ok else 'FAILED'}")
        return 0 if ok else 1

    totals = collections.Counter()
    died: list[dict] = []
    kinds: dict[str, dict] = {}
    t0 = time.monotonic()
    seed = first
    with ThreadPoolExecutor(a.workers) as pool:
        running = set()
        while totals["calls"] < a.calls or running:
            while totals["calls"] < a.calls and len(running) < a.workers:
                running.add(pool.submit(run_batch, seed, a.batch, a.out, a.timeout, None))
                seed += 1
            done = next(iter(running))
            for f in list(running):
                if f.done():
                    done = f
                    break
            r = done.result()
            running.remove(done)
            for k in ("calls", "cases", "refused", "returned"):
                totals[k] += r.get(k, 0)
            totals["batches"] += 1
            if "died" in r:
                died.append(r)
                totals[r["died"] + "es" if r["died"] == "crash" else "hangs"] += 1
            for p in r["problems"]:
                k = kinds.setdefault(p["key"], {"count": 0, "example": p})
                k["count"] += 1
            totals["problems"] += len(r["problems"])
            status = f" {r['died'].upper()}" if "died" in r else ""
            if r["problems"]:
                status += f", {len(r['problems'])} problems"
            print(f"[{time.monotonic() - t0:7.0f}s] seed {r['seed']}: {r.get('calls', 0)} calls "
                  f"in {r['seconds']:.0f}s{status}; total {totals['calls']} calls", flush=True)

    elapsed = time.monotonic() - t0
    print("\n==== rnn_ext fuzz summary ====")
    print(f"calls: {totals['calls']}  (cases {totals['cases']}, refused with ValueError/TypeError "
          f"{totals['refused']}, returned {totals['returned']}) in {elapsed:.0f}s, "
          f"{totals['batches']} child processes")
    print(f"crashes: {totals['crashes']}  hangs: {totals['hangs']}  "
          f"unexpected outcomes: {totals['problems']} ({len(kinds)} kinds)")
    for r in died:
        print(f"\n-- {r['died']} in batch seed {r['seed']} (exit {r['rc']}); "
              f"replay: python scripts/fuzz.py --replay {r.get('reproducer')}")
        print(r.get("stderr", "")[-1500:])
    for key, k in sorted(kinds.items(), key=lambda kv: -kv[1]["count"]):
        ex = k["example"]
        path = a.out / f"problem-{abs(hash(key)) % 10**8}.pkl"
        path.write_bytes(bytes.fromhex(ex["pickle"]))
        print(f"\n-- {k['count']}x {key}\n{ex['problem']}\n{ex['case']}\n"
              f"replay: python scripts/fuzz.py --replay {path}")
    return 1 if (died or kinds) else 0


if __name__ == "__main__":
    sys.exit(main())
