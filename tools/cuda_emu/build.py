"""Builds the CPU emulation of the CUDA kernels (emu.h) and registers mf_emu::* ops.

    python tools/cuda_emu/build.py      # builds (cached under build/cuda_emu) and loads
    python tools/cuda_emu/check.py      # compares every op with mobileformer.functional
"""
import os

import torch
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OPS = ("dynamic_relu", "m2f_attention", "f2m_attention")


def load(verbose=False):
    build_dir = os.path.join(ROOT, "build", "cuda_emu")
    os.makedirs(build_dir, exist_ok=True)
    cpp_extension.load(
        name="mf_emu", sources=[os.path.join(HERE, f"emu_{op}.cpp") for op in OPS],
        extra_cflags=["-O1", "-ffp-contract=off", "-std=c++20", "-Wno-unknown-pragmas"],
        build_directory=build_dir, is_python_module=False, verbose=verbose)
    return torch.ops.mf_emu


if __name__ == "__main__":
    load(verbose=True)
    print("loaded:", [op for op in dir(torch.ops.mf_emu) if not op.startswith("_")])
