"""m2f_attention: out[b,m,hc] = sum_p softmax_p(s <q[b,m,hc], x[b,hc,p]>) x[b,hc,p].

The Mobile->Former bridge's attention core: the M tokens' queries read the H*W positions of the
feature map x, which is both key and value; heads split the C channels into contiguous groups
of ch = C / heads, and s = ch^-1/2. The op is ``torch.ops.mf_kernels.m2f_attention(x, q, heads)``
(schema in csrc/library.cpp, CPU kernel in csrc/cpu/m2f_attention.cpp). This file gives it a
fake implementation and autograd, and the typed entry point that routes through the backends.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mobileformer import functional as reference

from .. import _extension, backends
from ._checks import check_m2f_attention, output_memory_format

OP = "mf_kernels::m2f_attention"


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

    @torch.library.register_fake(OP)
    def _(x, q, heads):
        check_m2f_attention(x, q, heads)
        return torch.empty(q.shape, dtype=x.dtype, device=x.device)

    @torch.library.register_fake("mf_kernels::m2f_attention_backward")
    def _(grad_out, x, q, out, heads):
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                             memory_format=output_memory_format(x))
        return grad_x, torch.empty(q.shape, dtype=q.dtype, device=q.device)

    def _setup_context(ctx, inputs, output):
        x, q, heads = inputs
        ctx.heads = heads
        # The backward recomputes the softmax statistics from x and q and takes the row sums
        # sum_c grad_out * out from the output: nothing of size M x H*W is kept.
        ctx.save_for_backward(x, q, output)

    def _backward(ctx, grad_out):
        x, q, out = ctx.saved_tensors
        grad_x, grad_q = torch.ops.mf_kernels.m2f_attention_backward(grad_out, x, q, out, ctx.heads)
        needs = ctx.needs_input_grad
        return grad_x if needs[0] else None, grad_q if needs[1] else None, None

    torch.library.register_autograd(OP, _backward, setup_context=_setup_context)
