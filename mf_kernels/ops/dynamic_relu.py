"""dynamic_relu: y[b,c,h,w] = max_k (slope[b,c,k] * x[b,c,h,w] + intercept[b,c,k]).

The op is ``torch.ops.mf_kernels.dynamic_relu(x, slope, intercept)`` (schema in
csrc/library.cpp, CPU kernel in csrc/cpu/dynamic_relu.cpp). This file gives it a fake
implementation and autograd, and the typed entry point that routes through the backends.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mobileformer import functional as reference

from .. import _extension, backends
from ._checks import check_dynamic_relu, output_memory_format

OP = "mf_kernels::dynamic_relu"


def dynamic_relu(x: Tensor, slope: Tensor, intercept: Optional[Tensor] = None) -> Tensor:
    """Dynamic ReLU with K >= 1 pieces; the authors' form is K = 2 without intercepts.

    Args:
        x: [B, C, H, W] feature map (fp32, fp64, fp16 or bf16; any strides).
        slope: [B, C, K] slopes, same dtype and device as x.
        intercept: optional [B, C, K] intercepts.
    Returns:
        [B, C, H, W], channels_last when x is channels_last. Ties between pieces split the
        gradient evenly (as ``torch.maximum``).
    """
    check_dynamic_relu(x, slope, intercept)
    return backends.implementation("dynamic_relu", x.device, x.dtype)(x, slope, intercept)


backends.register("dynamic_relu", "reference", lambda: reference.dynamic_relu)

if _extension.LOADED:
    backends.register("dynamic_relu", "cpu", lambda: torch.ops.mf_kernels.dynamic_relu)
    if _extension.WITH_CUDA:
        backends.register("dynamic_relu", "cuda", lambda: torch.ops.mf_kernels.dynamic_relu)

    @torch.library.register_fake(OP)
    def _(x, slope, intercept):
        check_dynamic_relu(x, slope, intercept)
        return torch.empty(x.shape, dtype=x.dtype, device=x.device,
                           memory_format=output_memory_format(x))

    @torch.library.register_fake("mf_kernels::dynamic_relu_backward")
    def _(grad_y, x, slope, intercept):
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                             memory_format=output_memory_format(x))
        return grad_x, torch.empty_like(slope, memory_format=torch.contiguous_format), \
            torch.empty_like(slope, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        x, slope, intercept = inputs
        ctx.has_intercept = intercept is not None
        ctx.save_for_backward(x, slope, intercept)

    def _backward(ctx, grad_y):
        x, slope, intercept = ctx.saved_tensors
        grad_x, grad_slope, grad_intercept = torch.ops.mf_kernels.dynamic_relu_backward(
            grad_y, x, slope, intercept)
        needs = ctx.needs_input_grad
        return (grad_x if needs[0] else None, grad_slope if needs[1] else None,
                grad_intercept if ctx.has_intercept and needs[2] else None)

    torch.library.register_autograd(OP, _backward, setup_context=_setup_context)
