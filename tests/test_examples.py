"""The examples in docs/examples/ run on their small budget and beat a trivial baseline.

Each script runs in a subprocess (as a user runs it), importing the same
rnn_ext as this test process: the checkout's in-place build or the installed
package.  The data sets ship inside scikit-learn and statsmodels (the
``examples`` extra), so nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rnn_ext

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def run_example(name: str) -> str:
    """stdout of ``python docs/examples/<name> --budget small``; fails on a non-zero exit."""
    env = dict(os.environ)
    where = str(Path(rnn_ext.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (where, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--budget", "small"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def metric(pattern: str, out: str) -> tuple[float, ...]:
    found = re.search(pattern, out)
    assert found is not None, f"no line matching {pattern!r} in the output:\n{out}"
    return tuple(float(v) for v in found.groups())


def test_digits_classification_beats_chance():
    pytest.importorskip("sklearn")
    out = run_example("digits_classification.py")
    accuracy, chance = metric(r"test accuracy ([0-9.]+) \(chance ([0-9.]+)\)", out)
    # ten balanced classes: chance (the commonest test class) is about 0.10;
    # the small budget reaches about 0.94
    assert chance < 0.15, out
    assert accuracy > 0.8, out


def test_timeseries_regression_beats_naive_forecast():
    pytest.importorskip("statsmodels")
    out = run_example("timeseries_regression.py")
    model, naive, ratio = metric(
        r"test RMSE ([0-9.]+)\s+naive last-value RMSE ([0-9.]+)\s+ratio ([0-9.]+)", out)
    # the small budget gives about 18.8 against the naive 31.75 (ratio 0.59)
    assert ratio == pytest.approx(model / naive, abs=1e-3), out
    assert model < 0.8 * naive, out
