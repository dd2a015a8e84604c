"""The Triton kernels compile for an H100/H200 (sm_90) without spilling, checked without a GPU.

The interpreter that runs the Triton backend of the op suites on the CPU accepts programs the
compiler rejects, and says nothing of registers; tools/triton_sm90_compile.py compiles every
distinct launch the host code makes at the call sites of the seven variants (fp32/fp16/bf16,
contiguous and channels_last, batch 1 and 128, M = 3, 6 and 100 tokens; about 450 launches,
under a minute on two cores), down to cubin, and fails on a compile error or a register spill
(the table: tools/resource_table.py). Not --quick: the spills it found were at middle sites, in
fp32 and in one layout, which the quick selection (bf16, channels_last, two sites an op) misses.
It runs in a subprocess because this process imported the kernels under TRITON_INTERPRET=1.
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
                             "--no-spills", "--quiet"], capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    assert "0 failed, 0 spill" in result.stdout, result.stdout[-2000:]
