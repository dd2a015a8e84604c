"""What machine and software a benchmark ran on, for the record and the report.

Timings mean little without the machine, its load and the exact code, so every record carries
them. Nothing here touches CUDA unless asked to (``device == "cuda"``).
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from typing import Dict, Optional

import torch

from . import isa, runtimes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> Dict[str, object]:
    """The commit of the checkout mf_kernels was imported from, and whether it had edits."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _package_version(name: str) -> Optional[str]:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


def backend_choice(device: str) -> Dict[str, object]:
    """Which backend each op runs on ``device`` under the current selection, per dtype
    (what ``mf_kernels.ops`` dispatches to: ``backends.backend_for``)."""
    import mf_kernels
    from mf_kernels import backends

    choice: Dict[str, object] = {"selected": mf_kernels.get_backend()}
    for op in backends.OPS:
        per_dtype: Dict[str, str] = {}
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16),
                            ("bf16", torch.bfloat16), ("fp64", torch.float64)):
            try:
                per_dtype[name] = backends.backend_for(op, torch.device(device), dtype)
            except backends.BackendUnavailableError as error:  # a forced backend that cannot
                per_dtype[name] = f"unavailable: {error}"      # take this dtype: say why
        choice[op] = per_dtype
    return choice


def describe(device: str, threads: int) -> Dict[str, object]:
    """The environment block of a benchmark record."""
    import mf_kernels

    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    env: Dict[str, object] = {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "load_average_at_start": load_average(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _package_version("torchvision"),
        "mf_kernels": mf_kernels.__version__,
        "git": git_commit(),
        "torch_cuda_build": torch.version.cuda,
        "backends": backend_choice(device),
        "device": device,
        "cpu_isa": isa.kernels_isa(),  # which instruction-set path the C++ CPU kernels take
        "runtimes": runtimes.versions(),  # ONNX Runtime, OpenVINO and the exporter's packages
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def one_line(env: Dict[str, object]) -> str:
    """The machine note printed above the table."""
    git = env.get("git") or {}
    commit = str(git.get("commit", "unknown"))[:10] + (" (dirty)" if git.get("dirty") else "")
    machine = env["gpu"] if env.get("device") == "cuda" else env["cpu"]
    cpu_isa = env.get("cpu_isa") or {}
    kernels = cpu_isa.get("kernels", "unknown") + (
        "" if "cpu_isa()" in str(cpu_isa.get("source")) else " (estimated)")
    installed = [f"{name} {version}" for name, version in (env.get("runtimes") or {}).items()
                 if version and name in ("onnxruntime", "openvino")]
    return (f"{machine} | {env['logical_cpus']} logical CPUs ({env['cpus_usable']} usable), "
            f"load {env['load_average_at_start']} | {env['threads']} thread(s) | "
            f"python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, "
            f"mf_kernels {env['mf_kernels']} @ {commit}, C++ CPU kernels: {kernels}"
            + (" | " + ", ".join(installed) if installed else ""))


__all__ = ["describe", "one_line", "cpu_model", "git_commit", "load_average", "backend_choice"]
