"""Shared pieces of the Triton tests: where they run, and the forward + gradient comparison.

On the CPU they run through the interpreter (``TRITON_INTERPRET=1``, set by conftest) in fp32.
On a GPU run ``TRITON_INTERPRET=0 python -m pytest tests/test_triton_*.py``: the same tests
then run on CUDA tensors in fp32, fp16 and bf16 (fp16/bf16 by the 2x rule of numerics).
CUDA is queried inside the fixture, never at collection.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence

import pytest
import torch
from torch import Tensor

import numerics

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

DEVICE_DTYPES = [("cpu", torch.float32), ("cuda", torch.float32), ("cuda", torch.float16),
                 ("cuda", torch.bfloat16)]


def _id(param) -> str:
    return f"{param[0]}-{str(param[1]).replace('torch.', '')}"


@pytest.fixture(params=DEVICE_DTYPES, ids=_id)
def device_dtype(request):
    """(device, dtype) of a Triton test: CPU fp32 under the interpreter, CUDA compiled."""
    device, dtype = request.param
    if device == "cpu" and not INTERPRETED:
        pytest.skip("Triton takes CPU tensors only under TRITON_INTERPRET=1")
    if device == "cuda":
        if INTERPRETED:
            pytest.skip("compiled Triton on CUDA tensors: run with TRITON_INTERPRET=0")
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU")
    return device, dtype


@pytest.fixture
def triton_device():
    """The device Triton runs on here: the CPU under the interpreter, else CUDA."""
    if INTERPRETED:
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("compiled Triton needs a CUDA GPU")
    return "cuda"


@pytest.fixture
def interpreted():
    """For tests of the interpreter only (on a GPU the device_dtype tests cover them)."""
    if not INTERPRETED:
        pytest.skip("runs under TRITON_INTERPRET=1 only")


@pytest.fixture
def gpu():
    """A CUDA device for GPU-only tests (compiled Triton)."""
    if INTERPRETED or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and TRITON_INTERPRET=0")
    return "cuda"


def compile_backend(device: str) -> str:
    """Under the interpreter the ops stay opaque in the graph (they cannot be traced into
    interpreted kernels), so the cheap aot_eager backend checks capture and autograd; on a GPU
    inductor traces into the kernels through wrap_triton."""
    return "aot_eager" if device == "cpu" else "inductor"


def run_with_grads(fn: Callable, inputs: Sequence, seed: int = 1) -> List[Tensor]:
    """[output, grad of every tensor input] for a fixed random grad_output."""
    leaves = [numerics.leaf(t) if isinstance(t, Tensor) else t for t in inputs]
    out = fn(*leaves)
    generator = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
    tensors = [t for t in leaves if isinstance(t, Tensor)]
    return [out] + numerics.grads(out, tensors, grad_out)


def assert_matches(kernel_fn: Callable, reference_fn: Callable, inputs: Sequence,
                   names: Sequence[str], check_layout: Optional[Tensor] = None) -> None:
    """The kernel's output and gradients against the reference: tight in fp32, within twice
    the reference's own error in fp16/bf16 (reference recomputed in fp32)."""
    dtype = next(t for t in inputs if isinstance(t, Tensor)).dtype
    got = run_with_grads(kernel_fn, inputs)
    expected = run_with_grads(reference_fn, inputs)
    if check_layout is not None:
        fmt = output_format(check_layout)
        assert got[0].is_contiguous(memory_format=fmt), f"output layout: expected {fmt}"
    if dtype not in numerics.LOW_PRECISION:
        for actual, exp, name in zip(got, expected, names):
            numerics.assert_tight(actual, exp, name)
        return
    upcast = [t.float() if isinstance(t, Tensor) else t for t in inputs]
    expected_fp32 = run_with_grads(reference_fn, upcast)
    for actual, low, exp, name in zip(got, expected, expected_fp32, names):
        numerics.assert_within_2x(actual, low, exp, name)


def output_format(x: Tensor) -> torch.memory_format:
    """The layout rule: channels_last iff x is channels_last and not contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
