"""Build the compiled core of rnn_ext.

Compiler directives live here and nowhere else.  ``RNN_EXT_DEBUG=1`` at build
time turns on bounds and wraparound checks and ``-O0 -g``, so the same test
suite can run against a checked build.  ``RNN_EXT_SANITIZE=1`` adds
``-fsanitize=address,undefined,float-cast-overflow`` (GCC/Clang only).
"""

import os
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("RNN_EXT_DEBUG", "0") == "1"
SANITIZE = os.environ.get("RNN_EXT_SANITIZE", "0") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "nonecheck": False,
    "embedsignature": True,
}

if sys.platform == "win32":
    compile_args = ["/O2"] if not DEBUG else ["/Od", "/Zi"]
    link_args: list[str] = []
else:
    # -fno-trapping-math lets GCC vectorise the elementwise loops; no
    # -march=native: wheels must run on any CPU of their architecture.
    # -g0 undoes the -g in Python's own flags: a release wheel carries no
    # debug information (a quarter of the size).
    compile_args = ["-O3", "-g0", "-fno-trapping-math"] if not DEBUG else ["-O0", "-g"]
    link_args = []
    if SANITIZE:
        sanitizers = "-fsanitize=address,undefined,float-cast-overflow"
        compile_args += [sanitizers, "-fno-omit-frame-pointer"]
        link_args += [sanitizers]

# The weight-stationary recurrence (src/wsr.h): plain C, one unit per
# instruction set, each compiled for the baseline target (the SIMD kernels
# carry per-function target attributes and are picked at run time).  Every
# extension that calls it compiles these sources in.
WSR_SOURCES = [
    "src/wsr.c",
    "src/wsr_portable.c",
    "src/wsr_avx2.c",
    "src/wsr_avx512.c",
    "src/wsr_neon.c",
]
# its persistent worker threads
wsr_link_args = [] if sys.platform == "win32" else ["-pthread"]

# model.step's entry point (src/_kernels.pyx, step_pass) checks its ndarray
# arguments through NumPy's C API: microseconds matter there.
NUMPY_INCLUDE = np.get_include()
NUMPY_MACROS = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]

extensions = [
    Extension(
        "rnn_ext._kernels",
        ["src/_kernels.pyx", *WSR_SOURCES],
        include_dirs=["src", NUMPY_INCLUDE],
        depends=["src/wsr.h", "src/wsr_internal.h", "src/_recurrence.pxd", "src/_output.pxd",
                 "src/_pgemm.pxd", "src/_pcols.pxd",
                 "src/_elementwise.pxd", "src/_blas.pxd", "src/_fastmath.h"],
        define_macros=[("RNN_EXT_DEBUG", "1" if DEBUG else "0"), *NUMPY_MACROS],
        extra_compile_args=compile_args + wsr_link_args,
        extra_link_args=link_args + wsr_link_args,
    ),
    # Optimizer steps and clipping over flat buffers, their arrays checked
    # through NumPy's C API.  No errno from sqrt
    # (its arguments are sums of squares), so the loops vectorise; no
    # contracted multiply-adds, so every instruction-set clone rounds alike
    # (src/_flat.h: the one explicit FMA is correctly rounded).
    Extension(
        "rnn_ext._flat",
        ["src/_flat.pyx"],
        depends=["src/_flat.h", "src/_flat_loops.h"],
        include_dirs=["src", NUMPY_INCLUDE],
        define_macros=NUMPY_MACROS,
        extra_compile_args=compile_args
        + ([] if sys.platform == "win32" else ["-fno-math-errno", "-ffp-contract=off"]),
        extra_link_args=link_args,
    ),
    # The sampling loop of rnn_ext.text.sample.  The same flags as _kernels,
    # so the recurrence it shares (stack_step, and its float32 tanh clones)
    # rounds exactly as model.step's does.
    Extension(
        "rnn_ext._sample",
        ["src/_sample.pyx"],
        include_dirs=["src"],
        depends=["src/_recurrence.pxd", "src/_pgemm.pxd", "src/_elementwise.pxd",
                 "src/_blas.pxd", "src/_fastmath.h", "src/wsr.h"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    ),
    Extension(
        "rnn_ext._wsr",
        ["src/_wsr.pyx", *WSR_SOURCES],
        include_dirs=["src"],
        depends=["src/wsr.h", "src/wsr_internal.h", "src/_blas.pxd", "src/_fastmath.h"],
        extra_compile_args=compile_args + wsr_link_args,
        extra_link_args=link_args + wsr_link_args,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        include_path=["src"],
    ),
)
