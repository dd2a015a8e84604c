"""The reference math of the three ops that mf_kernels fuses, in plain PyTorch.

These functions are the single definition that every kernel (C++, Triton, CUDA) is tested
against, and the ``"reference"`` backend of :mod:`mf_kernels` calls them directly. They favour
clarity over speed. Softmax runs in fp32 for fp16/bf16 inputs (the op contract), and in the
input's own precision otherwise.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def softmax_fp32(scores: Tensor, dim: int) -> Tensor:
    """Softmax over ``dim``, accumulated in fp32 when ``scores`` is fp16/bf16."""
    if scores.dtype in _LOW_PRECISION:
        return torch.softmax(scores, dim, dtype=torch.float32).to(scores.dtype)
    return torch.softmax(scores, dim)


def dynamic_relu(x: Tensor, slope: Tensor, intercept: Optional[Tensor] = None) -> Tensor:
    """Piecewise-linear dynamic ReLU.

    y[b, c, h, w] = max_k (slope[b, c, k] * x[b, c, h, w] + intercept[b, c, k])

    x: [B, C, H, W]; slope, intercept: [B, C, K]. At ties the gradient is split evenly between
    the tied pieces (``amax`` semantics), which for K = 2 is exactly ``torch.maximum``.
    """
    pieces = x.unsqueeze(2) * slope[..., None, None]
    if intercept is not None:
        pieces = pieces + intercept[..., None, None]
    return pieces.amax(dim=2)


def m2f_attention(x: Tensor, q: Tensor, heads: int) -> Tensor:
    """Mobile->Former cross-attention core: tokens read the feature map.

    out[b, m, head channels] = sum_p softmax_p(s * <q[b, m, hc], x[b, hc, p]>) * x[b, hc, p]

    with s = (C // heads) ** -0.5; x: [B, C, H, W] is both key and value, q: [B, M, C].
    Returns [B, M, C].
    """
    B, C, H, W = x.shape
    M = q.shape[1]
    ch = C // heads
    xh = x.reshape(B, heads, ch, H * W)                   # keys and values, per head
    qh = q.reshape(B, M, heads, ch).transpose(1, 2)       # [B, heads, M, ch]
    scores = (qh @ xh) * ch ** -0.5                       # [B, heads, M, P]
    attn = softmax_fp32(scores, -1)                       # over the H*W positions
    out = attn @ xh.transpose(-1, -2)                     # [B, heads, M, ch]
    return out.transpose(1, 2).reshape(B, M, C)


def f2m_attention(x: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Former->Mobile cross-attention core with the residual: the feature map reads the tokens.

    y[b, hc, p] = x[b, hc, p] + sum_m softmax_m(s * <x[b, hc, p], k[b, m, hc]>) * v[b, m, hc]

    with s = (C // heads) ** -0.5; x: [B, C, H, W] is the query, k, v: [B, M, C].
    Returns [B, C, H, W].
    """
    B, C, H, W = x.shape
    M = k.shape[1]
    ch = C // heads
    xh = x.reshape(B, heads, ch, H * W)                    # queries, [B, heads, ch, P]
    kh = k.reshape(B, M, heads, ch).transpose(1, 2)       # [B, heads, M, ch]
    vh = v.reshape(B, M, heads, ch).permute(0, 2, 3, 1)   # [B, heads, ch, M]
    # Scores laid out [B, heads, M, P] with the softmax over the tokens (dim -2). Besides
    # saving two transposes, this keeps torch.compile working: torch 2.14's inductor rewrites
    # the [P, M]-layout form into scaled_dot_product_attention and then fails to compile it
    # ("Attempting to broadcast a dimension of length 6").
    attn = softmax_fp32((kh @ xh) * ch ** -0.5, -2)
    update = (vh @ attn).reshape(B, C, H, W)
    return x + update
