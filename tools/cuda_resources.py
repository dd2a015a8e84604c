"""Registers, spills and shared memory of every CUDA kernel of csrc/cuda, from ptxas, no GPU.

Each ``csrc/cuda/*.cu`` is compiled device-only (``nvcc -cubin``) for one architecture with the
flags of the real build: torch's own nvcc flags, the project's (``extra_compile_args["nvcc"]``
of setup.py, read from its source), the build's defines, and ``-Xptxas -v``. ptxas then reports,
per kernel (every template instantiation: each dtype, vector width, ...), its registers, stack
frame, spill stores and loads, static shared memory and barriers. The kernels of mf_kernels use
dynamic shared memory only (sized by the host code, at most 48 KB per block), which ptxas
cannot see; it is listed as "dynamic".

Results are cached under build/resource_table/, keyed on the command and the contents of every
file under csrc/ that a kernel may include, so a rerun without source changes is instant.

    python tools/cuda_resources.py [--arch sm_90] [--std c++20]
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "build", "resource_table")
DEFINES = ["-DMF_KERNELS_WITH_CUDA", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C"]
TYPE_NAMES = {"c10::BFloat16": "bf16", "c10::Half": "fp16", "float": "fp32", "double": "fp64"}


@dataclasses.dataclass
class KernelUsage:
    source: str          # csrc/cuda/<op>.cu
    kernel: str          # demangled name with template arguments, namespaces dropped
    registers: int
    stack: int           # bytes of stack frame
    spill_stores: int    # bytes
    spill_loads: int     # bytes
    shared: int          # bytes of static shared memory
    barriers: int


def project_nvcc_flags(setup_py: str = os.path.join(ROOT, "setup.py")) -> List[str]:
    """The list literal given as ``extra_compile_args={"nvcc": [...]}`` in setup.py."""
    with open(setup_py) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "nvcc":
                    return list(ast.literal_eval(value))
    raise RuntimeError(f"{setup_py}: no extra_compile_args['nvcc'] list found")


def nvcc_path() -> Optional[str]:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    nvcc = os.path.join(home, "bin", "nvcc")
    return nvcc if os.path.exists(nvcc) else shutil.which("nvcc")


def nvcc_command(source: str, arch: str, std: str, output: str) -> List[str]:
    from torch.utils import cpp_extension

    nvcc = nvcc_path()
    cuda_home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    includes = [f"-I{p}" for p in cpp_extension.include_paths(device_type="cpu")]
    includes.append(f"-I{os.path.join(cuda_home, 'include')}")
    number = arch.split("_")[1]
    return ([nvcc, "-cubin", *includes, *DEFINES, *cpp_extension.COMMON_NVCC_FLAGS,
             *project_nvcc_flags(), f"-gencode=arch=compute_{number},code={arch}", f"-std={std}",
             "-Xptxas", "-v", source, "-o", output])


def _cache_key(command: Sequence[str]) -> str:
    digest = hashlib.sha256(" ".join(command[:-2]).encode())
    files = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*"), recursive=True))
    for path in files:
        if os.path.isfile(path):
            digest.update(path.encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:20]


def ptxas_report(source: str, arch: str = "sm_90", std: str = "c++20",
                 use_cache: bool = True) -> str:
    """ptxas's -v report (stderr of nvcc) for one .cu file; raises on a compile error."""
    with tempfile.TemporaryDirectory() as tmp:
        command = nvcc_command(source, arch, std, os.path.join(tmp, "out.cubin"))
        cached = os.path.join(CACHE, f"{os.path.basename(source)}-{arch}-{_cache_key(command)}.txt")
        if use_cache and os.path.exists(cached):
            with open(cached) as f:
                return f.read()
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source}:\n{result.stderr[-4000:]}")
    os.makedirs(CACHE, exist_ok=True)
    with open(cached, "w") as f:
        f.write(result.stderr)
    return result.stderr


def _demangle(names: Sequence[str]) -> Dict[str, str]:
    if not names:
        return {}
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}
    return dict(zip(names, out))


def short_name(demangled: str) -> str:
    """``void ns::(anonymous namespace)::k<c10::Half, 8, true>(args)`` -> ``k<fp16, 8, true>``."""
    name = re.sub(r"^void ", "", demangled)
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list (the first '(' outside <>)
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0 and not name[i:].startswith("(anonymous"):
            cut = i
            break
    name = name[:cut].replace("(anonymous namespace)::", "")
    name = re.sub(r"\bmf_kernels::cuda_kernels::", "", name)
    name = re.sub(r"at::OpMathType<([^<>]*)>::type", r"\1", name)
    for full, short in TYPE_NAMES.items():
        name = re.sub(rf"(?<![\w:]){re.escape(full)}(?![\w:])", short, name)
    return name


def parse_report(report: str, source: str) -> List[KernelUsage]:
    """KernelUsage per entry function in a ptxas -v report."""
    rows, mangled = [], []
    current = None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = {"name": m.group(1)}
            mangled.append(current)
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m:
            current.update(stack=int(m.group(1)), stores=int(m.group(2)), loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            s = re.search(r"(\d+) bytes smem", line)
            current["barriers"] = int(b.group(1)) if b else 0
            current["shared"] = int(s.group(1)) if s else 0
    names = _demangle([k["name"] for k in mangled])
    for k in mangled:
        rows.append(KernelUsage(os.path.relpath(source, ROOT), short_name(names[k["name"]]),
                                k.get("registers", -1), k.get("stack", 0), k.get("stores", 0),
                                k.get("loads", 0), k.get("shared", 0), k.get("barriers", 0)))
    return sorted(rows, key=lambda r: r.kernel)


def collect(arch: str = "sm_90", std: str = "c++20", jobs: int = 3,
            use_cache: bool = True) -> List[KernelUsage]:
    """Every kernel of every csrc/cuda/*.cu, compiled in parallel (``jobs`` nvcc at a time)."""
    if nvcc_path() is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        reports = list(pool.map(lambda s: ptxas_report(s, arch, std, use_cache), sources))
    return [row for source, report in zip(sources, reports) for row in parse_report(report, source)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--std", default="c++20")
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    rows = collect(args.arch, args.std, args.jobs, not args.no_cache)
    for r in rows:
        print(f"{r.source:28s} {r.kernel:60s} {r.registers:4d} regs  {r.spill_stores:5d} B spill "
              f"st  {r.spill_loads:5d} B spill ld  {r.stack:5d} B stack")
    return 1 if any(r.spill_stores or r.spill_loads for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
