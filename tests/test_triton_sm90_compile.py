"""The Triton kernels compile for an H100 (sm_90), checked without a GPU.

The interpreter that runs the other Triton tests on the CPU accepts programs the compiler
rejects; tools/triton_sm90_compile.py compiles every distinct launch of the ops (bf16, two
shapes, M = 1, 6, 100, the m2f split path) down to cubin. It runs in a subprocess because
this process imported the kernels under TRITON_INTERPRET=1.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    env = dict(os.environ, TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "triton_sm90_compile.py"),
                             "--quick"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "0 failed" in result.stdout
