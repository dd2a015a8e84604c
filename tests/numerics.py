"""Shared numerics for the tests: tolerances, the low-precision 2x rule, and input layouts.

Tolerances have one home, here:
* fp64 and fp32 are compared tightly with ``assert_tight``.
* fp16 and bf16 follow flash-attention's rule (``assert_within_2x``): compute the reference in
  fp32 and again in the test dtype; the kernel's error against the fp32 reference must be at
  most twice the reference's own low-precision error.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# (rtol, atol) relative to the largest magnitude of the expected tensor. fp32 results of
# reductions over up to 224*224 terms differ from PyTorch's own summation order by ~1e-6.
TIGHT = {torch.float64: 1e-10, torch.float32: 2e-5}
LOW_PRECISION = (torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "sliced")


def assert_tight(actual: Tensor, expected: Tensor, name: str = "output") -> None:
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    tol = TIGHT[expected.dtype]
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale, msg=lambda m: f"{name}: {m}")


def assert_within_2x(actual: Tensor, reference_low: Tensor, reference_fp32: Tensor,
                     name: str = "output") -> None:
    """flash-attention's rule for fp16/bf16 results."""
    assert actual.shape == reference_fp32.shape, f"{name}: shape {actual.shape}"
    assert actual.dtype == reference_low.dtype, f"{name}: dtype {actual.dtype}"
    if actual.numel() == 0:
        return
    kernel_err = (actual.double() - reference_fp32.double()).abs().max().item()
    reference_err = (reference_low.double() - reference_fp32.double()).abs().max().item()
    # The 1e-6 floor only matters when the reference happens to be exact in low precision.
    assert kernel_err <= 2 * reference_err + 1e-6, (
        f"{name}: kernel error {kernel_err:.3g} exceeds twice the reference's own "
        f"low-precision error {reference_err:.3g}")


def make_feature_map(shape: Sequence[int], dtype: torch.dtype, layout: str = "contiguous",
                     device: str = "cpu", scale: float = 1.0) -> Tensor:
    """A random [B, C, H, W] map in the given layout.

    ``sliced`` is a non-contiguous view: every other channel of a map twice as wide, offset by
    one, so that neither NCHW nor channels_last strides apply.
    """
    B, C, H, W = shape
    if layout == "contiguous":
        return (torch.randn(B, C, H, W, device=device) * scale).to(dtype)
    if layout == "channels_last":
        return (torch.randn(B, C, H, W, device=device) * scale).to(dtype).to(
            memory_format=torch.channels_last)
    if layout == "sliced":
        wide = (torch.randn(B, 2 * C + 1, H, W + 1, device=device) * scale).to(dtype)
        return wide[:, 1::2, :, 1:]
    raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


def leaf(t: Tensor) -> Tensor:
    """A detached copy that requires grad, keeping ``t``'s strides."""
    return t.detach().clone(memory_format=torch.preserve_format).requires_grad_(True) \
        if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last) \
        else t.detach().requires_grad_(True)


def grads(outputs: Tensor, inputs: Sequence[Tensor], grad_output: Tensor):
    """Gradients of ``outputs`` w.r.t. ``inputs`` (None-free: unused inputs get zeros)."""
    result = torch.autograd.grad(outputs, inputs, grad_output, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, result)]
