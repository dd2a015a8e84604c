"""f2m_attention: y[b,hc,p] = x[b,hc,p] + sum_m softmax_m(s <x[b,hc,p], k[b,m,hc]>) v[b,m,hc].

The Former->Mobile bridge's attention core with its residual: every position of the feature
map x queries the M tokens' keys k and values v; heads split the C channels into contiguous
groups of ch = C / heads, and s = ch^-1/2. The op is
``torch.ops.mf_kernels.f2m_attention(x, k, v, heads)`` (schema in csrc/library.cpp, CPU kernel
in csrc/cpu/f2m_attention.cpp). This file gives it a fake implementation and autograd, and the
typed entry point that routes through the backends.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mobileformer import functional as reference

from .. import _extension, backends
from ._checks import check_f2m_attention, output_memory_format

OP = "mf_kernels::f2m_attention"


def f2m_attention(x: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Cross-attention from the positions of a feature map to M tokens, plus the residual.

    Args:
        x: [B, C, H, W] feature map, the queries (fp32, fp64, fp16 or bf16; any strides).
        k: [B, M, C] keys, same dtype and device as x.
        v: [B, M, C] values, the shape of k.
        heads: number of heads; must divide C.
    Returns:
        [B, C, H, W], channels_last when x is channels_last: x plus, per head and position,
        the softmax-weighted (over the M tokens) sum of v.
    """
    check_f2m_attention(x, k, v, heads)
    return backends.implementation("f2m_attention", x.device, x.dtype)(x, k, v, heads)


backends.register("f2m_attention", "reference", lambda: reference.f2m_attention)

if _extension.LOADED:
    backends.register("f2m_attention", "cpu", lambda: torch.ops.mf_kernels.f2m_attention)
    if _extension.WITH_CUDA:
        backends.register("f2m_attention", "cuda", lambda: torch.ops.mf_kernels.f2m_attention)

    @torch.library.register_fake(OP)
    def _(x, k, v, heads):
        check_f2m_attention(x, k, v, heads)
        return torch.empty(x.shape, dtype=x.dtype, device=x.device,
                           memory_format=output_memory_format(x))

    @torch.library.register_fake("mf_kernels::f2m_attention_backward")
    def _(grad_y, x, k, v, heads):
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                             memory_format=output_memory_format(x))
        return (grad_x, torch.empty(k.shape, dtype=k.dtype, device=k.device),
                torch.empty(v.shape, dtype=v.dtype, device=v.device))

    def _setup_context(ctx, inputs, output):
        x, k, v, heads = inputs
        ctx.heads = heads
        # The backward recomputes the per-position softmax from x and k: no B x heads x P x M
        # tensor is kept, and the output is not needed.
        ctx.save_for_backward(x, k, v)

    def _backward(ctx, grad_y):
        x, k, v = ctx.saved_tensors
        grad_x, grad_k, grad_v = torch.ops.mf_kernels.f2m_attention_backward(
            grad_y, x, k, v, ctx.heads)
        needs = ctx.needs_input_grad
        return (grad_x if needs[0] else None, grad_k if needs[1] else None,
                grad_v if needs[2] else None, None)

    torch.library.register_autograd(OP, _backward, setup_context=_setup_context)
