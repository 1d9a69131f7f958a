"""The float32 fused multiply-add peak of one core, measured: the machine's limit.

    python benchmarks/fma_peak.py            # AVX-512 if the CPU has it, else AVX2+FMA
    python benchmarks/fma_peak.py --isa avx2

OpenBLAS's sgemm rate (benchmarks/roofline.py) is the limit the other
benchmarks quote, but on a CPU with AVX-512 an OpenBLAS build that picks an
AVX2 kernel (scipy's wheels on AMD Zen) stays well below what the core can
do.  This compiles a loop of independent vector FMAs (12 accumulators, no
memory traffic) with the system C compiler, runs it on one thread for about
half a second, five times, and prints the best GFLOP/s: no real kernel can
exceed it.  x86-64 with GCC or Clang only.
"""

import argparse
import os
import subprocess
import sys
import tempfile

SOURCE = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#if ISA == 512
typedef __m512 V;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define LANES 16
static float hsum(V v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 V;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
#define LANES 8
static float hsum(V v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
#endif
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char** argv) {
    long iters = 20000000;
    V a = SET1(0.999999f), b = SET1(1e-7f);
    V c[12];
    for (int i = 0; i < 12; i++) c[i] = SET1((float)i);
    double best = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        for (long n = 0; n < iters; n++) {
            for (int i = 0; i < 12; i++) c[i] = FMA(c[i], a, b);
        }
        double dt = now() - t0;
        double gf = 2.0 * LANES * 12 * iters / dt / 1e9;
        if (gf > best) best = gf;
    }
    V s = c[0];
    for (int i = 1; i < 12; i++) s = ADD(s, c[i]);
    printf("%.1f %g\n", best, (double)hsum(s));
    return 0;
}
"""


def measure(isa):
    flags = ["-O3", "-funroll-loops", "-mavx512f"] if isa == "avx512" else ["-O3", "-funroll-loops", "-mavx2", "-mfma"]
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma")
        with open(src, "w") as f:
            f.write(SOURCE)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, *flags, f"-DISA={512 if isa == 'avx512' else 256}", src, "-o", exe],
                       check=True)
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", choices=("avx512", "avx2"), default=None)
    args = ap.parse_args(argv)
    isa = args.isa
    if isa is None:
        flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
        isa = "avx512" if " avx512f" in flags else "avx2"
    gf = measure(isa)
    print(f"float32 FMA peak, one thread, {isa}: {gf:.1f} GFLOP/s")
    return gf


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
