"""m2f_attention: out[b,m,hc] = sum_p softmax_p(s <q[b,m,hc], x[b,hc,p]>) x[b,hc,p].

The Mobile->Former bridge's attention core: the M tokens' queries read the H*W positions of the
feature map x, which is both key and value; heads split the C channels into contiguous groups
of ch = C / heads, and s = ch^-1/2. The op is ``torch.ops.mf_kernels.m2f_attention(x, q, heads)``,
the output of ``m2f_attention_with_lse(x, q, heads) -> (out, lse)`` (schemas in
csrc/library.cpp, kernels in csrc/cpu/m2f_attention.cpp and csrc/cuda/m2f_attention.cu), whose
log-sum-exp lse [B, heads, M] the backward takes instead of recomputing the softmax statistics.
This file gives the ops their fake implementations and autograd, and the typed entry point
that routes through the backends.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mobileformer import functional as reference

from .. import _extension, backends
from ._checks import check_m2f_attention, output_memory_format

OP = "mf_kernels::m2f_attention"
WITH_LSE = "mf_kernels::m2f_attention_with_lse"


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The log-sum-exp is kept in the accumulation type: fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def setup_context(ctx, inputs, output):
    """Autograd of an (out, lse) op (this one and the Triton one): keeps x, q, out and lse,
    nothing of size M x H*W; lse has no gradient."""
    x, q, heads = inputs
    out, lse = output
    ctx.heads = heads
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(x, q, out, lse)


def backward_with_lse(ctx, grad_out, grad_lse, backward_op=None):
    x, q, out, lse = ctx.saved_tensors
    op = backward_op or torch.ops.mf_kernels.m2f_attention_backward
    grad_x, grad_q = op(grad_out, x, q, out, lse, ctx.heads)
    needs = ctx.needs_input_grad
    return grad_x if needs[0] else None, grad_q if needs[1] else None, None


def m2f_attention(x: Tensor, q: Tensor, heads: int) -> Tensor:
    """Cross-attention from M tokens to the positions of a feature map.

    Args:
        x: [B, C, H, W] feature map, keys and values (fp32, fp64, fp16 or bf16; any strides).
        q: [B, M, C] queries, same dtype and device as x.
        heads: number of heads; must divide C.
    Returns:
        [B, M, C]: per head, the softmax-weighted (over the H*W positions) sum of x.
    """
    check_m2f_attention(x, q, heads)
    return backends.implementation("m2f_attention", x.device, x.dtype)(x, q, heads)


backends.register("m2f_attention", "reference", lambda: reference.m2f_attention)

if _extension.LOADED:
    backends.register("m2f_attention", "cpu", lambda: torch.ops.mf_kernels.m2f_attention)
    if _extension.WITH_CUDA:
        backends.register("m2f_attention", "cuda", lambda: torch.ops.mf_kernels.m2f_attention)

    # mf_kernels::m2f_attention itself is CompositeImplicitAutograd (csrc/library.cpp): it
    # needs neither a fake implementation nor autograd of its own.
    @torch.library.register_fake(WITH_LSE)
    def _(x, q, heads):
        check_m2f_attention(x, q, heads)
        return (torch.empty(q.shape, dtype=x.dtype, device=x.device),
                torch.empty((x.shape[0], heads, q.shape[1]), dtype=lse_dtype(x.dtype),
                            device=x.device))

    @torch.library.register_fake("mf_kernels::m2f_attention_backward")
    def _(grad_out, x, q, out, lse, heads):
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                             memory_format=output_memory_format(x))
        return grad_x, torch.empty(q.shape, dtype=q.dtype, device=q.device)

    torch.library.register_autograd(WITH_LSE, backward_with_lse, setup_context=setup_context)
