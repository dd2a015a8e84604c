"""Builds mf_kernels._C from csrc/: the C++ CPU kernels always, the CUDA kernels when possible.

Decision (printed at build time):
* MF_KERNELS_FORCE_CPU=1            -> CPU-only build.
* torch is a CUDA build and nvcc is found (CUDA_HOME, else /usr/local/cuda) -> CPU + CUDA.
* otherwise                          -> CPU-only build, with the reason.

Architectures: TORCH_CUDA_ARCH_LIST when set; else, when a GPU is visible, only the visible
GPUs' own (e.g. "9.0" on an H100/H200: one device pass per file, the fastest build); else
DEFAULT_CUDA_ARCHS (A100 and H100, plus PTX for newer parts).

Parallel build: ninja (torch's default builder; without it the build is serial and much slower)
with MAX_JOBS compile jobs, by default the number of CPUs this process may use; an explicit
MAX_JOBS is respected. Translation units are independent, so a rebuild after an edit (ninja,
build_ext --inplace) recompiles only what changed. The C++ compiles as C++17 (torch < 2.13) and
C++20 (torch >= 2.13): torch's build chooses, and tools/cxx_std_check.py checks both.
No -march=native: the default build must run on any x86-64 / aarch64 machine.
"""
import glob
import json
import os
import shutil
import sys

import torch
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home:  # /usr/local/cuda, else wherever nvcc is on the PATH
        on_path = shutil.which("nvcc")
        home = "/usr/local/cuda" if os.path.exists("/usr/local/cuda/bin/nvcc") or not on_path \
            else os.path.dirname(os.path.dirname(os.path.realpath(on_path)))
    nvcc = os.path.join(home, "bin", "nvcc")
    return (home, nvcc) if os.path.exists(nvcc) else (home, None)


def usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def local_cuda_archs():
    """The visible GPUs' compute capabilities, e.g. "9.0"; None without a GPU. Only the build
    queries CUDA (never the package at import)."""
    if not torch.cuda.is_available():
        return None
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in caps)


def cuda_decision():
    if os.environ.get("MF_KERNELS_FORCE_CPU", "0") not in ("", "0"):
        return False, "MF_KERNELS_FORCE_CPU is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    home, nvcc = find_nvcc()
    if nvcc is None:
        return False, f"nvcc not found under {home} (set CUDA_HOME)"
    os.environ.setdefault("CUDA_HOME", home)
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc at {nvcc}"


def rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


with_cuda, reason = cuda_decision()
# ninja's parallelism: torch's builder reads MAX_JOBS (an explicit value wins).
os.environ.setdefault("MAX_JOBS", str(usable_cpus()))
# Imported only now: cpp_extension reads CUDA_HOME once, at import.
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402
sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
              + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
              + glob.glob(os.path.join(ROOT, "csrc", "cpu", "frozen", "*.cpp"))
              + glob.glob(os.path.join(ROOT, "csrc", "composite", "*.cpp")))
cxx_flags = ["-O3", "-fvisibility=hidden"]
link_flags = []
# at::parallel_for is a header template: in code compiled without OpenMP it runs the whole range
# on the calling thread (ATen's OpenMP build enables its parallel path only under _OPENMP), so
# the CPU kernels need -fopenmp to use torch's intra-op threads. The OpenMP runtime is torch's
# own (libgomp.so.1, already loaded by libtorch_cpu).
if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")
define_macros = []
if with_cuda:
    sources += rel(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = local_cuda_archs() or DEFAULT_CUDA_ARCHS
    define_macros.append(("MF_KERNELS_WITH_CUDA", None))
    extension = CUDAExtension(
        "mf_kernels._C", sources, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
        extra_link_args=link_flags)
    print(f"[mf_kernels] building CPU + CUDA kernels: {reason}; "
          f"architectures {os.environ['TORCH_CUDA_ARCH_LIST']}", file=sys.stderr)
else:
    extension = CppExtension("mf_kernels._C", sources, extra_compile_args={"cxx": cxx_flags},
                             extra_link_args=link_flags)
    print(f"[mf_kernels] building CPU kernels only: {reason}", file=sys.stderr)
from torch.utils.cpp_extension import is_ninja_available  # noqa: E402
print(f"[mf_kernels] {'ninja' if is_ninja_available() else 'NO ninja (pip install ninja): a serial'}"
      f" build, MAX_JOBS={os.environ['MAX_JOBS']}", file=sys.stderr)
if os.environ.get("MF_KERNELS_BUILD_PLAN", "0") not in ("", "0"):
    sys.exit(0)  # the decisions above only (the device script's dry run): nothing is built

# What the extension was built against, so that a failed load can say "built for torch X".
with open(os.path.join(ROOT, "mf_kernels", "_build_info.json"), "w") as f:
    json.dump({"torch": torch.__version__, "cuda": torch.version.cuda if with_cuda else None,
               "with_cuda": with_cuda, "reason": reason, "sources": sources,
               "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
               "max_jobs": os.environ["MAX_JOBS"]}, f)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
