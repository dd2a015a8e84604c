"""Which CPU instruction-set path mf_kernels' C++ kernels take here, for the bench record.

The extension is built without ``-march`` flags and picks its inner kernels at run time
(``csrc/cpu/attention_common.h``: ``use_avx2()``), so a timing means little without saying
which path ran. The extension is the authority: once it exposes
``torch.ops.mf_kernels.cpu_isa()``, :func:`kernels_isa` reports what it says. Until then the
choice is re-derived here from the CPU's flags with the same rule as the C++ code
(:func:`_estimate_from_cpu`), and the record says that it is an estimate.
"""
from __future__ import annotations

import os
import platform
from typing import Dict, List, Set

import torch

# Flags worth reporting: what the dispatch looks at, and what a faster path could use.
_X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq",
              "avx512_vnni", "avx512_bf16", "amx_tile")
_ARM_FLAGS = ("asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm")


def _cpu_flags() -> Set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("flags", "features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports() -> List[str]:
    """The reported flags this CPU has, in a fixed order."""
    flags = _cpu_flags()
    return [flag for flag in _X86_FLAGS + _ARM_FLAGS if flag in flags]


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _estimate_from_cpu() -> str:
    """The rule of ``use_avx2()`` in csrc/cpu/attention_common.h: the AVX2 build of the inner
    kernels on x86 CPUs with AVX2 and FMA, unless ``ATEN_CPU_CAPABILITY=default`` asks for the
    baseline; the baseline (SSE2 on x86-64, NEON on aarch64) everywhere else."""
    if not _is_x86() or os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        return "baseline"
    flags = _cpu_flags()
    return "avx2" if {"avx2", "fma"} <= flags else "baseline"


def kernels_isa() -> Dict[str, object]:
    """``{"kernels": "avx2" | "baseline" | ..., "source": how we know, "cpu_supports": [...],
    "torch_cpu_capability": ATen's own choice}``."""
    from mf_kernels import _extension

    if not _extension.LOADED:
        path, source = "none", "the C++ extension is not loaded: ops run the reference"
    elif hasattr(torch.ops.mf_kernels, "cpu_isa"):  # the one place to trust the extension
        path, source = str(torch.ops.mf_kernels.cpu_isa()), "torch.ops.mf_kernels.cpu_isa()"
    else:
        path, source = _estimate_from_cpu(), ("estimated from the CPU flags with the rule of "
                                              "csrc/cpu/attention_common.h (the extension "
                                              "has no cpu_isa op yet)")
    return {"kernels": path, "source": source, "cpu_supports": cpu_supports(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


__all__ = ["kernels_isa", "cpu_supports"]
