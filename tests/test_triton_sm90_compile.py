"""The Triton kernels compile for an H100/H200 (sm_90) without spilling, checked without a GPU.

The interpreter that runs the Triton backend of the op suites on the CPU accepts programs the
compiler rejects, and says nothing of registers; tools/triton_sm90_compile.py --quick compiles
every distinct launch the host code makes for bf16, channels_last, batch 128 at the widest and
the narrowest call site of each op with M = 3, 6 and 100 tokens, down to cubin, and fails on a
compile error or a register spill (the full table: tools/resource_table.py). It runs in a
subprocess because this process imported the kernels under TRITON_INTERPRET=1.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_compile_for_sm90_without_spills():
    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "triton_sm90_compile.py"),
                             "--quick", "--no-spills", "--quiet"], capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "0 failed, 0 spill" in result.stdout, result.stdout[-2000:]
