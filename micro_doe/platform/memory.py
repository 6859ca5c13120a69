"""How much memory there is, and refusing work that would not fit (before it starts)."""

from __future__ import annotations

import os

from micro_doe.errors import InputError


class InsufficientMemoryError(InputError):
    """Work whose estimated memory exceeds what the machine has available; the message names
    the option or field and gives the estimate."""


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable on Linux; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(needed: float, option: str, fraction: float = 0.8) -> None:
    """Refuse work whose estimated memory exceeds ``fraction`` of what is available now."""
    available = available_memory()
    if needed > fraction * available:
        raise InsufficientMemoryError(
            f"{option}: needs about {format_bytes(needed)} of memory; this machine has {format_bytes(available)} available"
        )


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"
