"""The numerics every kernel is judged by: tolerances, the low-precision 2x rule, input layouts.

One home for them: ``mf-kernels check`` and the test suite (``tests/numerics.py`` re-exports
this module) apply exactly these rules.

* fp64 and fp32 (``tight``): max |actual - expected| <= tol * max(max |expected|, 1), with
  tol = 1e-10 (fp64) or 2e-5 (fp32). fp32 results of reductions over up to 224*224 terms
  differ from PyTorch's own summation order by ~1e-6 of the largest value.
* fp16 and bf16 (``within_2x``, flash-attention's rule): compute the reference in fp32 (on
  the same fp16/bf16 inputs, upcast) and again in the test dtype; the kernel's error against
  the fp32 reference must be at most twice the reference's own low-precision error (plus
  1e-6, which only matters when the reference happens to be exact in low precision).

A NaN or infinity anywhere fails either rule (the error is then NaN, and NaN <= x is false).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

TIGHT = {torch.float64: 1e-10, torch.float32: 2e-5}
LOW_PRECISION = (torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "channels_last", "sliced")
TWO_X_FLOOR = 1e-6


class Verdict(NamedTuple):
    """The error of one tensor against its reference, and what the rule allows."""

    error: float
    allowed: float

    @property
    def ok(self) -> bool:
        return self.error <= self.allowed  # False for NaN

    @property
    def ratio(self) -> float:
        """error / allowed: below 1 passes. NaN stays NaN (a failure)."""
        return self.error / self.allowed if self.allowed > 0 else float("inf")


def _max_abs_diff(a: Tensor, b: Tensor) -> float:
    """max |a - b|, computed in the wider of the two dtypes (exact enough for an error)."""
    if a.numel() == 0:
        return 0.0
    wide = torch.promote_types(a.dtype, b.dtype)
    return (a.to(wide) - b.to(wide)).abs().max().item()


def tight(actual: Tensor, expected: Tensor) -> Verdict:
    """fp32/fp64: the error against ``expected`` (same dtype; compute it in a higher precision
    and cast down where you can) and the allowed error."""
    tol = TIGHT[expected.dtype]
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    return Verdict(_max_abs_diff(actual, expected), tol * scale)


def within_2x(actual: Tensor, reference_low: Tensor, reference_fp32: Tensor) -> Verdict:
    """fp16/bf16: the kernel's error against the fp32 reference, and twice the reference's own
    error in the low precision (``reference_low``: the reference run in the kernel's dtype)."""
    reference_error = _max_abs_diff(reference_low, reference_fp32)
    return Verdict(_max_abs_diff(actual, reference_fp32), 2 * reference_error + TWO_X_FLOOR)


def _check_like(actual: Tensor, expected: Tensor, dtype: torch.dtype, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{name}: dtype {actual.dtype} != {dtype}"


def assert_tight(actual: Tensor, expected: Tensor, name: str = "output") -> None:
    _check_like(actual, expected, expected.dtype, name)
    verdict = tight(actual, expected)
    assert verdict.ok, (f"{name}: max error {verdict.error:.3g} exceeds {verdict.allowed:.3g} "
                        f"({TIGHT[expected.dtype]:g} x max(|expected|, 1)) in {expected.dtype}")


def assert_within_2x(actual: Tensor, reference_low: Tensor, reference_fp32: Tensor,
                     name: str = "output") -> None:
    """flash-attention's rule for fp16/bf16 results."""
    _check_like(actual, reference_fp32, reference_low.dtype, name)
    verdict = within_2x(actual, reference_low, reference_fp32)
    assert verdict.ok, (
        f"{name}: kernel error {verdict.error:.3g} exceeds twice the reference's own "
        f"low-precision error ({verdict.allowed:.3g} allowed)")


def make_feature_map(shape: Sequence[int], dtype: torch.dtype, layout: str = "contiguous",
                     device="cpu", scale: float = 1.0, generator=None) -> Tensor:
    """A random [B, C, H, W] map in the given layout.

    ``sliced`` is a non-contiguous view: every other channel of a map twice as wide, offset by
    one, so that neither NCHW nor channels_last strides apply.
    """
    B, C, H, W = shape

    def randn(*size):
        return torch.randn(*size, generator=generator, device=device) * scale

    if layout == "contiguous":
        return randn(B, C, H, W).to(dtype)
    if layout == "channels_last":
        return randn(B, C, H, W).to(dtype).to(memory_format=torch.channels_last)
    if layout == "sliced":
        return randn(B, 2 * C + 1, H, W + 1).to(dtype)[:, 1::2, :, 1:]
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


__all__ = ["TIGHT", "LOW_PRECISION", "LAYOUTS", "Verdict", "tight", "within_2x",
           "assert_tight", "assert_within_2x", "make_feature_map", "leaf", "grads"]
