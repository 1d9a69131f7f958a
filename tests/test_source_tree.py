"""``import rnn_ext`` from a source tree without the compiled core says what is wrong.

After ``pip install .``, Python started in the checkout finds the source tree's
``rnn_ext`` first, which has no compiled ``_kernels``; Python's own message
then blames a circular import.  The package says what is happening and what
to do instead, as NumPy does.
"""

import importlib.machinery
import os
import shutil
import subprocess
import sys

import pytest

import rnn_ext

PACKAGE = os.path.dirname(os.path.abspath(rnn_ext.__file__))


def source_copy(tmp_path, core=None):
    """The package's .py files in tmp_path/rnn_ext, with ``core`` as the compiled module's bytes."""
    dest = tmp_path / "rnn_ext"
    dest.mkdir()
    for name in os.listdir(PACKAGE):
        if name.endswith(".py"):
            shutil.copy(os.path.join(PACKAGE, name), dest / name)
    if core is not None:
        (dest / ("_kernels" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(core)
    return tmp_path


# An editable install (`pip install -e .`, the README's test command) maps the
# name rnn_ext to the checkout with a finder ahead of sys.path; the situation
# under test is a regular install, so the child drops that finder first.
IMPORT = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
          "if '__editable__' not in getattr(f, '__module__', '')]; import rnn_ext")


def import_in(cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", IMPORT], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_source_tree_without_the_core(tmp_path):
    r = import_in(source_copy(tmp_path))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: rnn_ext's compiled core (_kernels) is not built in")
    assert "source tree" in last and "another directory" in last and "pip install -e" in last
    assert "circular import" not in r.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="a damaged shared library may not load as an ImportError")
def test_damaged_core(tmp_path):
    r = import_in(source_copy(tmp_path, core=b"not a shared library"))
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert "failed to import" in last and "rebuild it" in last, r.stderr
