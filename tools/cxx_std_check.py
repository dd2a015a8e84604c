"""Compile every C++ translation unit of the extension as C++17 and as C++20, syntax only.

torch chooses the standard of an extension's build: C++17 up to torch 2.12, C++20 from 2.13 on
(whose headers refuse anything older). The GPU machine has torch 2.11 (C++17), this project's
CI torch 2.14 (C++20), so the code must be both. The real build already compiles everything as
C++20 against the installed torch; this tool adds the other standard, against the headers of
the torch the GPU machine has (taken from its wheel on PyPI, cached), which also catches a use
of a torch C++ API newer than that torch.

    python tools/cxx_std_check.py                              # installed torch, C++17 and C++20
    python tools/cxx_std_check.py --torch-version 2.11.0       # torch 2.11's headers (cached)
    python tools/cxx_std_check.py --torch-include DIR --std c++17

Syntax only (``-fsyntax-only``): seconds per file, no objects. The CUDA files (csrc/cuda/*.cu)
are not covered: nvcc has no syntax-only mode, and compiling them takes minutes; the GPU
machine's build compiles them as its torch asks. Exit status 1 when any compile fails.
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("MF_KERNELS_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                         "mf_kernels"))


def translation_units() -> List[str]:
    """Every .cpp under csrc/: what setup.py compiles (tests/test_device_script.py holds the
    two lists equal)."""
    return sorted(os.path.relpath(p, ROOT)
                  for p in glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True))


def installed_torch_include() -> str:
    import torch

    return os.path.join(os.path.dirname(torch.__file__), "include")


def wheel_headers(version: str) -> str:
    """torch/include of torch ``version``'s x86-64 Linux wheel, downloaded once and cached."""
    target = os.path.join(CACHE, f"torch-{version}-include")
    include = os.path.join(target, "torch", "include")
    if os.path.isdir(include):
        return include
    with tempfile.TemporaryDirectory() as download:
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--platform", "manylinux_2_28_x86_64", "--python-version", py,
                   "-d", download, f"torch=={version}"]
        print(f"fetching torch {version}'s headers: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        (wheel,) = glob.glob(os.path.join(download, "torch-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m.startswith("torch/include/")]
            archive.extractall(target + ".partial", members)
    os.replace(target + ".partial", target)
    return include


def flags(std: str, include: str) -> List[str]:
    return [f"-std={std}", "-fsyntax-only", "-fopenmp",
            f"-I{include}", f"-I{os.path.join(include, 'torch', 'csrc', 'api', 'include')}",
            f"-I{sysconfig.get_paths()['include']}", f"-I{os.path.join(ROOT, 'csrc')}",
            "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]


def compile_one(compiler: str, std: str, include: str, unit: str) -> Tuple[str, str, bool, float, str]:
    started = time.perf_counter()
    done = subprocess.run([compiler, *flags(std, include), os.path.join(ROOT, unit)],
                          capture_output=True, text=True)
    return unit, std, done.returncode == 0, time.perf_counter() - started, done.stderr


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--torch-version", help="use this torch's headers (from its wheel)")
    source.add_argument("--torch-include", help="a torch/include folder")
    parser.add_argument("--std", default="c++17,c++20", help="comma-separated (default both)")
    parser.add_argument("--only", default=None, metavar="SUBSTRING",
                        help="only the files whose path contains this")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--compiler", default=os.environ.get("CXX", "c++"))
    args = parser.parse_args(argv)
    include = (wheel_headers(args.torch_version) if args.torch_version
               else args.torch_include or installed_torch_include())
    stds = [s.strip() for s in args.std.split(",") if s.strip()]
    jobs = [(std, unit) for std in stds for unit in translation_units()
            if not args.only or args.only in unit]
    print(f"{len(jobs)} compiles ({', '.join(stds)}; torch headers {include}; "
          f"{args.jobs} at a time)", flush=True)
    started = time.perf_counter()
    failed = 0
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(compile_one, args.compiler, std, include, unit)
                   for std, unit in jobs]
        for future in as_completed(futures):  # each reported as it finishes
            unit, std, ok, seconds, stderr = future.result()
            print(f"  {'ok    ' if ok else 'FAILED'} {std:<6} {unit} ({seconds:.1f} s)", flush=True)
            if not ok:
                failed += 1
                print("\n".join("      " + line for line in stderr.splitlines()[:40]))
    print(f"cxx_std_check: {len(jobs) - failed} ok, {failed} failed, "
          f"{time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
