"""How much memory a request needs against how much the machine has, checked before allocating.

A request far beyond the machine (``hidden=100000``, a sample of 10**12
characters) should fail at once with a ValueError that names the request and
both sizes, not part-way with a MemoryError, or by the kernel's OOM killer.
The check is deliberately loose: it refuses only what cannot fit in the
memory available now, counting just the arrays that must exist together.
"""

from __future__ import annotations

import os

__all__ = ["available_bytes", "format_bytes", "check_fits"]


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (containers), if there is one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError):
        return None


def available_bytes() -> int | None:
    """Memory this process could still allocate, in bytes, or None if unknown.

    Linux: ``MemAvailable`` from /proc/meminfo, lowered to the room left under
    a cgroup v2 limit.  Elsewhere: the physical memory (sysconf), or None.
    """
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if known:
        return min(known)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_fits(needed: float, what: str) -> None:
    """Raise ValueError if ``needed`` bytes exceed the memory available.

    ``what`` names the request, e.g. ``"hidden=100000: training"``; the
    message reads ``"<what> needs about 150.0 GiB ..., but 22.8 GiB are available"``.
    """
    avail = available_bytes()
    if avail is not None and needed > avail:
        raise ValueError(f"{what} needs about {format_bytes(needed)} of memory, "
                         f"but only {format_bytes(avail)} is available")
