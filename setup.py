"""Builds mf_kernels._C from csrc/: the C++ CPU kernels always, the CUDA kernels when possible.

Decision (printed at build time):
* MF_KERNELS_FORCE_CPU=1            -> CPU-only build.
* torch is a CUDA build and nvcc is found (CUDA_HOME, else /usr/local/cuda) -> CPU + CUDA.
* otherwise                          -> CPU-only build, with the reason.

With no GPU visible and TORCH_CUDA_ARCH_LIST unset, the CUDA kernels are compiled for
DEFAULT_CUDA_ARCHS (A100 and H100, plus PTX for newer parts). No -march=native: the default
build must run on any x86-64 / aarch64 machine.
"""
import glob
import json
import os
import sys

import torch
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    nvcc = os.path.join(home, "bin", "nvcc")
    return (home, nvcc) if os.path.exists(nvcc) else (home, None)


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
# Imported only now: cpp_extension reads CUDA_HOME once, at import.
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402
sources = rel(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
              + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
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
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    define_macros.append(("MF_KERNELS_WITH_CUDA", None))
    extension = CUDAExtension(
        "mf_kernels._C", sources, define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
        extra_link_args=link_flags)
    print(f"[mf_kernels] building CPU + CUDA kernels: {reason}; "
          f"architectures {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')}",
          file=sys.stderr)
else:
    extension = CppExtension("mf_kernels._C", sources, extra_compile_args={"cxx": cxx_flags},
                             extra_link_args=link_flags)
    print(f"[mf_kernels] building CPU kernels only: {reason}", file=sys.stderr)

# What the extension was built against, so that a failed load can say "built for torch X".
with open(os.path.join(ROOT, "mf_kernels", "_build_info.json"), "w") as f:
    json.dump({"torch": torch.__version__, "cuda": torch.version.cuda if with_cuda else None,
               "with_cuda": with_cuda, "reason": reason, "sources": sources,
               "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None}, f)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension})
