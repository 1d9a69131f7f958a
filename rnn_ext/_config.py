"""``rnn_ext.show_config()``: what this installation of rnn_ext is made of.

Versions of rnn_ext and of what it runs on, the build of the compiled core,
and the BLAS its kernel calls.  The kernel reaches BLAS through
``scipy.linalg.cython_blas``, so the BLAS in use is scipy's, which is not
always numpy's (the wheels of the two each carry their own OpenBLAS); the
report names scipy's and says how many threads it runs.  Paste the output
into bug reports.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import IO, Any, Literal

__all__ = ["show_config"]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _compiled() -> dict[str, Any]:
    """The compiled core's build, or why it could not be imported."""
    try:
        from . import _kernels
    except ImportError as exc:
        return {"importable": False, "error": str(exc)}
    debug = bool(getattr(_kernels, "DEBUG", False))
    return {
        "importable": True,
        "module": _kernels.__file__,
        "build": "debug (bounds and wraparound checks on, -O0 -g)" if debug else "release",
        "debug": debug,
        "sanitizers": bool(getattr(_kernels, "SANITIZE", False)),
        "simd clones": bool(getattr(_kernels, "SIMD_CLONES", False)),
        "dtypes": ["float32", "float64"],
        "blas": "scipy.linalg.cython_blas",
        "gil": "released for each whole pass",
    }


def _recurrence() -> dict[str, Any]:
    """The instruction-set path of the float32 weight-stationary recurrence (src/wsr.h)."""
    try:
        from . import _wsr
    except ImportError as exc:
        return {"importable": False, "error": str(exc)}
    info: dict[str, Any] = {"importable": True, "path": _wsr.path(),
                            "available": list(_wsr.available_paths())}
    forced = os.environ.get("RNN_EXT_SIMD")
    if forced is not None:
        info["RNN_EXT_SIMD"] = forced
    return info


def _blas() -> dict[str, Any]:
    """scipy's build-time BLAS, and the loaded BLAS libraries the kernel calls."""
    info: dict[str, Any] = {}
    try:
        import scipy

        build = scipy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["scipy build"] = f"{build.get('name', '?')} {build.get('version', '?')}"
    except Exception as exc:  # older or unusual scipy builds have no such record
        info["scipy build"] = f"unknown ({type(exc).__name__})"
    try:
        from ._threads import blas_info

        libs = blas_info()
    except ImportError:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library)
        from threadpoolctl import threadpool_info

        libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    info["libraries"] = [
        {k: lib.get(k) for k in ("internal_api", "version", "architecture",
                                 "threading_layer", "num_threads", "filepath")}
        for lib in libs
    ]
    try:
        from ._threads import get_num_threads

        n = get_num_threads()
        info["rnn_ext threads"] = "automatic" if n is None else n
    except ImportError:
        pass
    return info


def _collect() -> dict[str, Any]:
    import rnn_ext

    return {
        "rnn_ext": {
            "version": rnn_ext.__version__,
            "location": os.path.dirname(os.path.abspath(rnn_ext.__file__ or "")),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": f"{platform.system()} {platform.machine()}",
            "executable": sys.executable,
        },
        "dependencies": {name: _version(name) for name in
                         ("numpy", "scipy", "threadpoolctl", "tqdm")},
        "compiled": _compiled(),
        "recurrence": _recurrence(),
        "blas": _blas(),
    }


def show_config(file: IO[str] | None = None, *,
                mode: Literal["stdout", "dicts"] = "stdout") -> dict[str, Any] | None:
    """Print rnn_ext's versions, its compiled core's build and the BLAS in use.

    Parameters
    ----------
    file : text stream, optional
        Where to print; ``sys.stdout`` by default.
    mode : {"stdout", "dicts"}
        ``"dicts"`` returns the same information as a nested dict instead of
        printing it (as ``numpy.show_config`` does).

    Returns
    -------
    dict or None
        The information, with ``mode="dicts"``; None otherwise.

    Examples
    --------
    >>> import rnn_ext
    >>> rnn_ext.show_config()                        # doctest: +SKIP
    rnn_ext 0.1.0
    ...
    """
    info = _collect()
    if mode == "dicts":
        return info
    if mode != "stdout":
        raise ValueError(f'mode must be "stdout" or "dicts", got {mode!r}')
    out = sys.stdout if file is None else file
    r, py, comp, blas = info["rnn_ext"], info["python"], info["compiled"], info["blas"]
    lines = [
        f"rnn_ext {r['version']}  ({r['location']})",
        f"python {py['version']}  ({py['implementation']}, {py['platform']})",
        *(f"{name} {v}" for name, v in info["dependencies"].items()),
        "compiled core (rnn_ext._kernels):",
    ]
    if comp["importable"]:
        lines += [
            f"  build: {comp['build']}",
            f"  sanitizers: {'on' if comp['sanitizers'] else 'off'}",
            "  float32 tanh/exp loops: " + ("baseline and x86-64-v3 (AVX2, FMA) clones, "
                                             "picked at load" if comp["simd clones"]
                                             else "baseline instruction set only"),
            f"  dtypes: {', '.join(comp['dtypes'])};  BLAS via {comp['blas']};"
            f"  GIL {comp['gil']}",
            f"  module: {comp['module']}",
        ]
    else:
        lines.append(f"  NOT IMPORTABLE: {comp['error']}")
    rec = info["recurrence"]
    if rec["importable"]:
        forced = rec.get("RNN_EXT_SIMD")
        note = ("" if forced is None else f"; RNN_EXT_SIMD={forced!r}"
                + ("" if forced == rec["path"] else " ignored (unknown or unsupported here)"))
        lines.append(f"  float32 recurrence path: {rec['path']} "
                     f"(available: {', '.join(rec['available'])}{note})")
    else:
        lines.append(f"  float32 recurrence (rnn_ext._wsr) NOT IMPORTABLE: {rec['error']}")
    lines.append(f"BLAS (scipy's, which the kernel calls; scipy built with {blas['scipy build']}):")
    if not blas["libraries"]:
        lines.append("  no BLAS library detected by threadpoolctl (e.g. macOS Accelerate)")
    for lib in blas["libraries"]:
        lines.append(
            f"  {lib['internal_api']} {lib['version']}, {lib['architecture']}, "
            f"{lib['threading_layer']}, {lib['num_threads']} threads: {lib['filepath']}"
        )
    if "rnn_ext threads" in blas:
        lines.append(f"  rnn_ext thread setting: {blas['rnn_ext threads']}")
    print("\n".join(lines), file=out)
    return None
