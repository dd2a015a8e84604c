"""Shared pieces of the CUDA kernel tests (tests/test_cuda_*.py).

Nothing here touches CUDA at import or collection: tests call ``require_cuda()`` (through a
fixture), which skips when no GPU is visible or the extension has no CUDA kernels.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable, List, Optional, Sequence, Tuple

import pytest
import torch
from torch import Tensor

import numerics
from mf_kernels import _extension

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")
    if not _extension.LOADED:
        pytest.skip(f"the extension is not loaded: {_extension.LOAD_ERROR}")
    if not _extension.WITH_CUDA:
        pytest.skip("the extension was built without CUDA kernels (CPU-only build)")
    return torch.device("cuda")


def require_module(name: str, why: str):
    """Imports ``name`` or skips, saying which module is missing and what it is for."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        pytest.skip(f"{name} is not importable ({error}); {why}")


def require_triton(op: str):
    """The Triton implementation of ``op`` (mf_kernels.triton.<op>.<op>), or a skip."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET=1: compare the compiled Triton kernels (run with TRITON_INTERPRET=0)")
    module = require_module(f"mf_kernels.triton.{op}", "the Triton kernels land from another branch")
    return getattr(module, op)


def reference(fn: Callable[..., Tensor], inputs: Sequence[Optional[Tensor]], grad_output: Tensor,
              dtype: torch.dtype, high: torch.dtype) -> Tuple[Tuple[Tensor, List[Tensor]],
                                                              Tuple[Tensor, List[Tensor]]]:
    """(output, gradients) of ``fn`` on copies of ``inputs`` cast to ``high`` and to ``dtype``.

    Gradients are returned for the non-None inputs, in order.
    """
    results = {}
    for d in dict.fromkeys((high, dtype)):
        leaves = [None if t is None else t.detach().to(d).requires_grad_(True) for t in inputs]
        out = fn(*leaves)
        grads = numerics.grads(out, [t for t in leaves if t is not None], grad_output.to(d))
        results[d] = (out.detach(), [g.detach() for g in grads])
    return results[high], results[dtype]


def assert_matches(actual: Tensor, expected_high: Tensor, expected_low: Tensor, name: str) -> None:
    """fp32: tight against the high-precision reference; fp16/bf16: the 2x rule."""
    if actual.dtype in numerics.LOW_PRECISION:
        numerics.assert_within_2x(actual, expected_low, expected_high, name)
    else:
        numerics.assert_tight(actual, expected_high.to(actual.dtype), name)


def assert_agree(a: Tensor, b: Tensor, expected_high: Tensor, expected_low: Tensor, name: str) -> None:
    """Two kernels agree: tightly in fp32; in fp16/bf16 within the sum of what the 2x rule lets
    each of them differ from the high-precision reference (4x the reference's own error)."""
    assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    if a.dtype in numerics.LOW_PRECISION:
        if a.numel() == 0:
            return
        diff = (a.double() - b.double()).abs().max().item()
        reference_err = (expected_low.double() - expected_high.double()).abs().max().item()
        assert diff <= 4 * reference_err + 2e-6, (
            f"{name}: the kernels differ by {diff:.3g}, more than 4x the reference's own "
            f"low-precision error {reference_err:.3g}")
    else:
        numerics.assert_tight(a, b, name)


def assert_layout(t: Tensor, x: Tensor, name: str) -> None:
    """The output layout rule: channels_last iff x is channels_last and not also contiguous."""
    from mf_kernels.ops._checks import output_memory_format

    fmt = output_memory_format(x)
    assert t.is_contiguous(memory_format=fmt), f"{name}: strides {t.stride()} are not {fmt}"
