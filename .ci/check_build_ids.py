"""Check that cibuildwheel would build exactly the intended wheels.

usage: python .ci/check_build_ids.py PROJECT_DIR   (cibuildwheel on PATH)

Each wheels.yml runner builds its native architecture (archs = auto64 in
[tool.cibuildwheel]); here every architecture of a platform is listed at once
with --archs and compared with the intended set: CPython 3.11-3.14 on
manylinux and musllinux x86_64/aarch64, macOS x86_64/arm64, Windows AMD64.
"""

import subprocess
import sys

PYTHONS = ["cp311", "cp312", "cp313", "cp314"]
INTENDED = {
    ("linux", "x86_64,aarch64"): ["manylinux_x86_64", "manylinux_aarch64",
                                  "musllinux_x86_64", "musllinux_aarch64"],
    ("macos", "x86_64,arm64"): ["macosx_x86_64", "macosx_arm64"],
    ("windows", "AMD64"): ["win_amd64"],
}


def identifiers(project: str, platform: str, archs: str) -> list[str]:
    out = subprocess.run(
        ["cibuildwheel", "--print-build-identifiers", "--platform", platform,
         "--archs", archs, project],
        check=True, capture_output=True, text=True,
    ).stdout
    return out.split()


def main(project: str) -> int:
    failed = False
    for (platform, archs), tags in INTENDED.items():
        got = identifiers(project, platform, archs)
        want = [f"{py}-{tag}" for py in PYTHONS for tag in tags]
        print(f"{platform} ({archs}): {len(got)} builds")
        print("    " + " ".join(got))
        if sorted(got) != sorted(want):
            failed = True
            print(f"    missing: {sorted(set(want) - set(got))}")
            print(f"    unexpected: {sorted(set(got) - set(want))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
