"""Check what the sdist and the wheel contain.

usage: python .ci/check_dist.py DIST_DIR

The wheel ships the importable package only: Python sources, the compiled
module, ``py.typed`` and the ``.pyi`` stub; never Cython or C sources,
annotation HTML or tests.  The sdist ships what a build needs: the ``.pyx``
and ``.pxd`` sources, setup.py, pyproject.toml, the README and the tests;
never built artefacts (extension modules, generated C, HTML, caches).
"""

import fnmatch
import pathlib
import sys
import tarfile
import zipfile

WHEEL_FORBIDDEN = ["*.c", "*.cpp", "*.h", "*.pyx", "*.pxd", "*.pxi", "*.html",
                   "tests/*", "*/tests/*", "test_*.py", "*/test_*.py", "conftest.py",
                   "*/conftest.py", "src/*"]
WHEEL_REQUIRED = ["rnn_ext/__init__.py", "rnn_ext/_version.py", "rnn_ext/py.typed",
                  "rnn_ext/_kernels.pyi", "rnn_ext/_kernels.*.so|rnn_ext/_kernels.*.pyd",
                  "rnn_ext/_flat.pyi", "rnn_ext/_flat.*.so|rnn_ext/_flat.*.pyd",
                  "rnn_ext/_sample.pyi", "rnn_ext/_sample.*.so|rnn_ext/_sample.*.pyd"]
SDIST_FORBIDDEN = ["*.so", "*.pyd", "*.o", "*.html", "src/_kernels.c", "src/_flat.c", "src/_sample.c",
                   "*/__pycache__/*", "*.pyc", ".venv*", "build/*", "dist/*", "wheelhouse/*", ".git/*",
                   ".pytest_cache/*", ".hypothesis/*", ".mypy_cache/*", ".ruff_cache/*"]
SDIST_REQUIRED = ["pyproject.toml", "setup.py", "README.md", "PKG-INFO",
                  "src/_kernels.pyx", "src/_blas.pxd", "rnn_ext/__init__.py",
                  "rnn_ext/py.typed", "rnn_ext/_kernels.pyi", "tests/test_*.py",
                  "src/_flat.pyx", "src/_flat.h", "src/_flat_loops.h", "rnn_ext/_flat.pyi",
                  "src/_sample.pyx", "rnn_ext/_sample.pyi"]


def matches(name: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in pattern.split("|"))


def check(kind: str, names: list[str], required: list[str], forbidden: list[str]) -> list[str]:
    errors = [f"{kind}: missing {p}" for p in required if not any(matches(n, p) for n in names)]
    errors += [f"{kind}: must not contain {n} (rule {p})"
               for n in names for p in forbidden if matches(n, p)]
    return errors


def main(dist: pathlib.Path) -> int:
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}")
        return 1
    with zipfile.ZipFile(wheels[0]) as zf:
        wheel_names = [n for n in zf.namelist() if ".dist-info/" not in n]
    with tarfile.open(sdists[0]) as tf:
        # drop the leading "rnn_ext-X.Y.Z/" directory
        sdist_names = [m.name.split("/", 1)[1] for m in tf.getmembers()
                       if m.isfile() and "/" in m.name]
    errors = check("wheel", wheel_names, WHEEL_REQUIRED, WHEEL_FORBIDDEN)
    errors += check("sdist", sdist_names, SDIST_REQUIRED, SDIST_FORBIDDEN)
    for kind, path, names in (("wheel", wheels[0], wheel_names), ("sdist", sdists[0], sdist_names)):
        print(f"{kind} {path.name}: {path.stat().st_size / 1024:.0f} KiB, {len(names)} files")
        for n in sorted(names):
            print(f"    {n}")
    for e in errors:
        print(e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1])))
