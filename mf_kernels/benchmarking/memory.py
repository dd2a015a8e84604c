"""Peak memory of a CPU run, from the kernel's own accounting (Linux).

torch's CPU allocator keeps no peak statistics, so we read the process's resident-set
high-water mark: writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS, and
VmHWM after the run, less the RSS at the reset, is the extra memory the run touched at its
peak (activations, gradients, optimizer state). Large tensors are mmap-ed and returned to the
system when freed, so the figure is not inflated by allocator caching.
"""
from __future__ import annotations

import sys
from typing import Optional


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class CpuPeakMemory:
    """``start()`` before the run, ``peak_mib()`` after; None where /proc is unavailable."""

    def __init__(self) -> None:
        self.baseline_kib: Optional[int] = None

    def start(self) -> None:
        if not sys.platform.startswith("linux"):
            return
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self.baseline_kib = _status_kib("VmRSS")
        except (OSError, KeyError):
            self.baseline_kib = None

    def peak_mib(self) -> Optional[float]:
        if self.baseline_kib is None:
            return None
        return (_status_kib("VmHWM") - self.baseline_kib) / 1024
