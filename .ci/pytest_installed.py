"""pytest plugin: fail the run unless rnn_ext comes from site-packages.

Loaded with ``-p pytest_installed`` (PYTHONPATH=.ci) when the suite runs
against an installed build from outside the source tree, so such a run can
never pass by quietly importing the checkout instead.
"""

import pathlib
import sys
import sysconfig

import pytest


def _where() -> pathlib.Path:
    site = pathlib.Path(sysconfig.get_paths()["platlib"]).resolve()
    if "rnn_ext" not in sys.modules:
        import rnn_ext  # noqa: F401  (before collection can touch sys.path)
    where = pathlib.Path(sys.modules["rnn_ext"].__file__ or "").resolve()
    if site not in where.parents:
        pytest.exit(f"rnn_ext imported from {where}, not from {site}", returncode=3)
    return where


def pytest_report_header(config: pytest.Config) -> str:
    return f"rnn_ext under test: {_where()}"


def pytest_collection_finish(session: pytest.Session) -> None:
    _where()
