"""Peak memory of a CPU run, from the kernel's own accounting (Linux).

torch's CPU allocator keeps no peak statistics, so we read the process's resident-set
high-water mark: writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS, and
VmHWM after the run, less the RSS at the reset, is the extra memory the run touched at its
peak (activations, gradients, optimizer state).

glibc raises its mmap threshold after large blocks are freed and then keeps freed memory
resident, so a later row would start from an inflated RSS and read a small peak. start()
therefore pins the threshold at 128 KiB (mallopt; every large tensor is then mmap-ed and
returned on free) and trims the heap before taking the baseline.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_MMAP_THRESHOLD_BYTES = 128 * 1024


def _release_freed_memory() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure may then be an underestimate
        pass


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
        _release_freed_memory()
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
