#!/usr/bin/env bash
# The instruction-set paths of the weight-stationary recurrence (src/wsr*.c):
#   1. a fresh install in its own venv; tests/test_wsr.py once per path this
#      machine supports, each forced with RNN_EXT_SIMD (portable always), and
#      an unknown RNN_EXT_SIMD ignored (the automatic path stands);
#   2. the C kernels and their C check (tests/c/wsr_check.c) cross-compiled
#      for aarch64 (-Wall -Wextra -Werror, static) and run under qemu-aarch64:
#      the NEON and portable paths against a naive float64 reference;
#   3. the C kernels compiled for Windows with x86_64-w64-mingw32-gcc
#      (-Wall -Wextra -Werror; Win32 threads) and the check linked;
#   4. clang: the C check built with -Wall -Wextra -Werror and run natively,
#      and the whole compiled core built with CC=clang in its own venv (the
#      module checked to be clang's), the recurrence's tests run against it;
#   5. tests/c/div_const_check.c: Adam's division by its bias correction
#      with fused multiply-adds (src/_flat_loops.h) against the division, for
#      every float32 significand, natively (FMA instructions, and the library
#      fmaf of the baseline target), under qemu-aarch64, and compiled for
#      Windows.
# Missing cross tools and clang are installed first with apt-get (needs root).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

need=()
command -v aarch64-linux-gnu-gcc > /dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v qemu-aarch64 > /dev/null || need+=(qemu-user)
command -v x86_64-w64-mingw32-gcc > /dev/null || need+=(gcc-mingw-w64-x86-64)
command -v clang > /dev/null || need+=(clang)
if (( ${#need[@]} )); then
    log "apt-get install ${need[*]}"
    (( $(id -u) == 0 )) || die "missing ${need[*]} and not root: install them first"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" > /dev/null
fi

venv="$CI_DIR/simd"
src="$CI_DIR/simd-src"
new_venv "$venv"
source_copy "$src"

log "install (fresh venv, from a clean copy of the sources)"
pip_install "$venv/bin/python" "$src[test]"
assert_installed_import "$venv"
# venv_py VENV ARGS...: VENV's python from an empty folder (the sources off sys.path)
venv_py() { local v="$1"; shift; (cd "$(mktemp -d)" && "$v/bin/python" "$@"); }
# venv_pytest VENV FILES...: pytest on the package installed in VENV
venv_pytest() {
    local v="$1"; shift
    PYTHONPATH="$ROOT/.ci" venv_py "$v" -m pytest -p pytest_installed -p no:cacheprovider -q "$@"
}
run_py() { venv_py "$venv" "$@"; }
recurrence_tests=("$ROOT/tests/test_wsr.py" "$ROOT/tests/test_pool_threads.py"
                  "$ROOT/tests/test_short_path.py" "$ROOT/tests/test_gemm_tn.py")
read -r -a paths <<< "$(run_py -c 'from rnn_ext import _wsr; print(*_wsr.available_paths())')"
auto="$(run_py -c 'from rnn_ext import _wsr; print(_wsr.path())')"
echo "paths supported here: ${paths[*]}; automatic choice: $auto"
[[ " ${paths[*]} " == *" portable "* ]] || die "portable is not among the paths"

for p in "${paths[@]}"; do
    log "tests/test_wsr.py, test_pool_threads.py, test_short_path.py, test_gemm_tn.py with RNN_EXT_SIMD=$p"
    RNN_EXT_SIMD="$p" venv_pytest "$venv" "${recurrence_tests[@]}"
done

log "an unknown or unsupported RNN_EXT_SIMD is ignored"
for bogus in sse9 AVX2 ""; do
    got="$(RNN_EXT_SIMD="$bogus" run_py -c 'from rnn_ext import _wsr; print(_wsr.path())')"
    [[ $got == "$auto" ]] || die "RNN_EXT_SIMD='$bogus' gave path $got, not the automatic $auto"
done
echo "ok: RNN_EXT_SIMD in {sse9, AVX2, ''} -> $auto"

cflags=(-O2 -Wall -Wextra -Werror -I"$ROOT/src")
wsr_c=("$ROOT"/src/wsr*.c)
out="$CI_DIR/simd-cross"
rm -rf "$out"
mkdir -p "$out"

log "aarch64: cross-compile (aarch64-linux-gnu-gcc $(aarch64-linux-gnu-gcc -dumpversion)) and run under qemu-aarch64"
aarch64-linux-gnu-gcc "${cflags[@]}" -static -pthread "$ROOT/tests/c/wsr_check.c" "${wsr_c[@]}" \
    -o "$out/wsr_check-aarch64" -lm
qemu-aarch64 "$out/wsr_check-aarch64" | tee "$out/aarch64.txt"
grep -q "^path neon .* 0 failed" "$out/aarch64.txt" || die "the NEON path was not tested under qemu"

log "Windows: x86_64-w64-mingw32-gcc $(x86_64-w64-mingw32-gcc -dumpversion), -Wall -Wextra -Werror"
for f in "${wsr_c[@]}"; do
    x86_64-w64-mingw32-gcc "${cflags[@]}" -c "$f" -o "$out/$(basename "$f" .c).obj"
done
x86_64-w64-mingw32-gcc "${cflags[@]}" "$ROOT/tests/c/wsr_check.c" "$out"/*.obj \
    -o "$out/wsr_check.exe"
echo "compiled warning-free: ${wsr_c[*]##*/}; linked wsr_check.exe"

log "clang $(clang -dumpversion): the C check built with -Wall -Wextra -Werror and run natively"
clang "${cflags[@]}" -O3 -pthread "$ROOT/tests/c/wsr_check.c" "${wsr_c[@]}" -o "$out/wsr_check-clang" -lm
"$out/wsr_check-clang"

log "clang: the compiled core built with CC=clang (fresh venv), the recurrence's tests against it"
clang_venv="$CI_DIR/simd-clang"
new_venv "$clang_venv"
CC=clang pip_install "$clang_venv/bin/python" --no-cache-dir "$src[test]"
assert_installed_import "$clang_venv"
kernels_so="$(venv_py "$clang_venv" -c 'import rnn_ext._kernels as k; print(k.__file__)')"
# gcc's own objects (crtbegin) carry its name either way; clang's name is in
# the comment only when clang compiled the module's sources
readelf -p .comment "$kernels_so" | grep -q "clang version" || die "$kernels_so was not built by clang"
echo "built by: $(readelf -p .comment "$kernels_so" | grep -o 'clang version [0-9.]*' | head -1)"
venv_pytest "$clang_venv" "${recurrence_tests[@]}" "$ROOT/tests/test_kernel_vs_oracle.py" \
    "$ROOT/tests/test_fastmath.py"

flat_flags=(-O3 -Wall -Wextra -Werror -Wno-unused-function -fno-math-errno -fno-trapping-math
            -ffp-contract=off -I"$ROOT/src")
log "Adam's fused division (tests/c/div_const_check.c): native, aarch64 under qemu, Windows"
if [[ $(uname -m) == x86_64 ]]; then
    gcc "${flat_flags[@]}" -march=x86-64-v3 "$ROOT/tests/c/div_const_check.c" -o "$out/div_const-v3" -lm
    "$out/div_const-v3" 100 50
    gcc "${flat_flags[@]}" "$ROOT/tests/c/div_const_check.c" -o "$out/div_const-base" -lm
    "$out/div_const-base" 3 3
else
    gcc "${flat_flags[@]}" "$ROOT/tests/c/div_const_check.c" -o "$out/div_const" -lm
    "$out/div_const" 100 50
fi
aarch64-linux-gnu-gcc "${flat_flags[@]}" -static "$ROOT/tests/c/div_const_check.c" \
    -o "$out/div_const-aarch64" -lm
qemu-aarch64 "$out/div_const-aarch64" 2 2
x86_64-w64-mingw32-gcc "${flat_flags[@]}" "$ROOT/tests/c/div_const_check.c" -o "$out/div_const.exe"
echo "compiled warning-free for Windows: div_const.exe"
