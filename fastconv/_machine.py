"""What machine this is, for reports and for keying measurements."""

from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
