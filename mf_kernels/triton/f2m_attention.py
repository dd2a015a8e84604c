"""Triton Former->Mobile attention with the residual: the feature map reads the M tokens.

    y[b,hc,p] = x[b,hc,p] + sum_m softmax_m(s * <x[b,hc,p], k[b,m,hc]>) * v[b,m,hc]

with s = (C/heads)^-1/2. Every position is a query with its own softmax over the M tokens, so
the forward is one pass over x in and y out: a program owns a [D, BLOCK_P] tile of one head
(D = C/heads channels) and runs an online softmax over the tokens, one token at a time (the
tokens are few, too few for tl.dot, and a token's k and v rows stay in cache).

Backward recomputes the softmax per position (no B x heads x P x M tensor is saved): a first
loop over the tokens gives the row max, sum and delta = sum_m a_m <grad_y, v_m>, a second the
gradients. grad_x is written per tile; grad_k and grad_v (sums over positions) accumulate in
registers over a run of tiles and are written as fp32 partials per run, summed afterwards
(deterministic, no atomics). Scores are in the log2 domain (log2(e) folded into the scale).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ..ops._checks import check_f2m_attention
from ._common import (LOG2E, check_device_and_dtype, empty_feature_map, feature_map_strides, launchable,
                      on_device, opaque_under_interpreter, pow2, softmax_scale, target_programs)

# Elements of one [D, BLOCK_P] tile and warps per program. The backward holds three tiles
# (x, grad_y, grad_x) and the [M, D] accumulators: twice the warps keeps it from spilling.
TILE_ELEMENTS = 2048
FORWARD_WARPS = 4
BACKWARD_WARPS = 8
# Positions per backward program; None picks enough programs to fill the device.
POSITIONS_PER_SPLIT: Optional[int] = None
MAX_BLOCK_P = 256


@triton.jit
def _f2m_fwd_kernel(
        x_ptr, k_ptr, v_ptr, y_ptr, M, HW, D, qk_scale,
        xs_b, xs_c, xs_p, ks_b, ks_m, ks_c, vs_b, vs_m, vs_c, ys_b, ys_c, ys_p,
        BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    """y[b,hc,p] = x[b,hc,p] + sum_m a_m[p] v[b,m,hc],  a_m[p] = softmax_m(t_m[p]),
    t_m[p] = qk_scale * <x[b,hc,p], k[b,m,hc]> (log2 domain), as an online softmax over m.
    Grid (position tiles, heads, B)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    d_ok = d < D
    dp_ok = d_ok[:, None] & (p < HW)[None, :]
    p64 = p.to(tl.int64)
    xt = tl.load(x_ptr + b * xs_b + ch[:, None] * xs_c + p64[None, :] * xs_p, mask=dp_ok,
                 other=0.0).to(tl.float32)                                       # [D, P]
    row_max = tl.full([BLOCK_P], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_P], tl.float32)
    acc = tl.zeros([BLOCK_D, BLOCK_P], tl.float32)
    for m in range(M):
        key = tl.load(k_ptr + b * ks_b + m * ks_m + ch * ks_c, mask=d_ok, other=0.0)
        value = tl.load(v_ptr + b * vs_b + m * vs_m + ch * vs_c, mask=d_ok, other=0.0)
        t = tl.sum((key.to(tl.float32) * qk_scale)[:, None] * xt, axis=0)        # [P]
        new_max = tl.maximum(row_max, t)  # finite from the first token on
        rescale = tl.exp2(row_max - new_max)
        e = tl.exp2(t - new_max)
        row_sum = row_sum * rescale + e
        acc = acc * rescale[None, :] + value.to(tl.float32)[:, None] * e[None, :]
        row_max = new_max
    y = xt + acc / row_sum[None, :]
    tl.store(y_ptr + b * ys_b + ch[:, None] * ys_c + p64[None, :] * ys_p,
             y.to(y_ptr.dtype.element_ty), mask=dp_ok)


@triton.jit
def _f2m_bwd_kernel(
        grad_y_ptr, x_ptr, k_ptr, v_ptr, grad_x_ptr, part_grad_k_ptr, part_grad_v_ptr,
        B, M, C, HW, D, positions_per_split, qk_scale, scale,
        gs_b, gs_c, gs_p, xs_b, xs_c, xs_p, ks_b, ks_m, ks_c, vs_b, vs_m, vs_c,
        gxs_b, gxs_c, gxs_p,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    """With a_m[p] the softmax over tokens, dA_m[p] = <grad_y[hc,p], v[m,hc]>,
    delta[p] = sum_m a_m dA_m and dS_m = a_m (dA_m - delta):
    grad_x[hc,p] = grad_y[hc,p] + s * sum_m dS_m[p] k[m,hc]   (the residual passes grad_y),
    grad_k[m,hc] = s * sum_p dS_m[p] x[hc,p],  grad_v[m,hc] = sum_p a_m[p] grad_y[hc,p],
    the two sums over this program's run of positions written to part_*[split, b, m, hc].
    Grid (splits, heads, B)."""
    split = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    d_ok = d < D
    rows = tl.arange(0, BLOCK_M)
    acc_grad_k = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc_grad_v = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = k_ptr + b * ks_b + ch * ks_c
    v_base = v_ptr + b * vs_b + ch * vs_c
    p_begin = split * positions_per_split
    p_end = tl.minimum(p_begin + positions_per_split, HW)
    for p_start in range(p_begin, p_end, BLOCK_P):
        p = p_start + tl.arange(0, BLOCK_P)
        p_ok = p < p_end
        p64 = p.to(tl.int64)
        dp_ok = d_ok[:, None] & p_ok[None, :]
        xt = tl.load(x_ptr + b * xs_b + ch[:, None] * xs_c + p64[None, :] * xs_p, mask=dp_ok,
                     other=0.0).to(tl.float32)                                   # [D, P]
        gy = tl.load(grad_y_ptr + b * gs_b + ch[:, None] * gs_c + p64[None, :] * gs_p,
                     mask=dp_ok, other=0.0).to(tl.float32)                       # [D, P]
        # First loop: softmax statistics and delta, online over the tokens.
        row_max = tl.full([BLOCK_P], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_P], tl.float32)
        weighted = tl.zeros([BLOCK_P], tl.float32)                 # sum_m e_m dA_m
        for m in range(M):
            key = tl.load(k_base + m * ks_m, mask=d_ok, other=0.0).to(tl.float32)
            value = tl.load(v_base + m * vs_m, mask=d_ok, other=0.0).to(tl.float32)
            t = tl.sum((key * qk_scale)[:, None] * xt, axis=0)
            d_attn = tl.sum(value[:, None] * gy, axis=0)
            new_max = tl.maximum(row_max, t)
            rescale = tl.exp2(row_max - new_max)
            e = tl.exp2(t - new_max)
            row_sum = row_sum * rescale + e
            weighted = weighted * rescale + e * d_attn
            row_max = new_max
        delta = weighted / row_sum
        inv_sum = tl.where(p_ok, 1.0 / row_sum, 0.0)  # zero weights at padding positions
        # Second loop: the gradients, recomputing each token's scores.
        grad_x = gy
        for m in range(M):
            key = tl.load(k_base + m * ks_m, mask=d_ok, other=0.0).to(tl.float32)
            value = tl.load(v_base + m * vs_m, mask=d_ok, other=0.0).to(tl.float32)
            t = tl.sum((key * qk_scale)[:, None] * xt, axis=0)
            d_attn = tl.sum(value[:, None] * gy, axis=0)
            attn = tl.exp2(t - row_max) * inv_sum
            d_scores = attn * (d_attn - delta)
            grad_x += (key * scale)[:, None] * d_scores[None, :]
            row_grad_k = tl.sum(d_scores[None, :] * xt, axis=1) * scale
            row_grad_v = tl.sum(attn[None, :] * gy, axis=1)
            # Tokens are few: a select adds row m into the [M, D] accumulators in registers
            # (Mobile-Former: M <= 6; a large M * D spills, correct but slow).
            is_row = (rows == m)[:, None]
            acc_grad_k = tl.where(is_row, acc_grad_k + row_grad_k[None, :], acc_grad_k)
            acc_grad_v = tl.where(is_row, acc_grad_v + row_grad_v[None, :], acc_grad_v)
        tl.store(grad_x_ptr + b * gxs_b + ch[:, None] * gxs_c + p64[None, :] * gxs_p,
                 grad_x.to(grad_x_ptr.dtype.element_ty), mask=dp_ok)
    part = ((split * B + b) * M + rows[:, None]) * C + ch[None, :]
    md_ok = (rows < M)[:, None] & d_ok[None, :]
    tl.store(part_grad_k_ptr + part, acc_grad_k, mask=md_ok)
    tl.store(part_grad_v_ptr + part, acc_grad_v, mask=md_ok)


def _tiles(D: int, HW: int) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_P): a head's channels and as many positions as fill the tile."""
    block_d = pow2(D, lo=2)
    return block_d, pow2(HW, lo=16, hi=max(16, min(MAX_BLOCK_P, TILE_ELEMENTS // block_d)))


@triton_op("mf_kernels::triton_f2m_attention", mutates_args=())
def _f2m_attention_op(x: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    y = empty_feature_map(x)
    B, C, H, W = x.shape
    M, D, HW = k.shape[1], C // heads, H * W
    if y.numel() == 0 or not launchable(x):
        return y
    if M == 0:
        return y.copy_(x)  # no token to attend to: the residual alone
    x, xs = feature_map_strides(x)
    _, ys = feature_map_strides(y)
    block_d, block_p = _tiles(D, HW)
    with on_device(x):
        wrap_triton(_f2m_fwd_kernel)[(triton.cdiv(HW, block_p), heads, B)](
            x, k, v, y, M, HW, D, softmax_scale(D) * LOG2E, *xs, *k.stride(), *v.stride(),
            *ys, BLOCK_D=block_d, BLOCK_P=block_p, num_warps=FORWARD_WARPS)
    return y


@triton_op("mf_kernels::triton_f2m_attention_backward", mutates_args=())
def _f2m_attention_backward_op(grad_y: Tensor, x: Tensor, k: Tensor, v: Tensor,
                               heads: int) -> Tuple[Tensor, Tensor, Tensor]:
    grad_x = empty_feature_map(x)
    B, C, H, W = x.shape
    M, D, HW = k.shape[1], C // heads, H * W
    if grad_x.numel() == 0 or M == 0 or not launchable(x):
        # No position or no token: grad_k, grad_v are empty sums (zeros) and grad_x = grad_y.
        zeros = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
        return grad_x.copy_(grad_y), zeros, zeros.clone()
    x, xs = feature_map_strides(x)
    grad_y, gs = feature_map_strides(grad_y)
    _, gxs = feature_map_strides(grad_x)
    block_d, block_p = _tiles(D, HW)
    if POSITIONS_PER_SPLIT is not None:
        per_split = triton.cdiv(POSITIONS_PER_SPLIT, block_p) * block_p
    else:  # enough runs of positions to fill the device, each a whole number of tiles
        p_tiles = triton.cdiv(HW, block_p)
        splits = max(1, min(p_tiles, triton.cdiv(target_programs(x.device), B * heads)))
        per_split = triton.cdiv(p_tiles, splits) * block_p
    splits = triton.cdiv(HW, per_split)
    part_grad_k = torch.empty((splits, B, M, C), dtype=torch.float32, device=x.device)
    part_grad_v = torch.empty_like(part_grad_k)
    with on_device(x):
        wrap_triton(_f2m_bwd_kernel)[(splits, heads, B)](
            grad_y, x, k, v, grad_x, part_grad_k, part_grad_v, B, M, C, HW, D, per_split,
            softmax_scale(D) * LOG2E, softmax_scale(D), *gs, *xs, *k.stride(), *v.stride(),
            *gxs, BLOCK_M=pow2(M, lo=2), BLOCK_D=block_d, BLOCK_P=block_p,
            num_warps=BACKWARD_WARPS)
    return grad_x, part_grad_k.sum(0).to(k.dtype), part_grad_v.sum(0).to(v.dtype)


def _setup_context(ctx, inputs, output):
    x, k, v, heads = inputs
    ctx.heads = heads
    ctx.save_for_backward(x, k, v)


def _backward(ctx, grad_y):
    x, k, v = ctx.saved_tensors
    grad_x, grad_k, grad_v = torch.ops.mf_kernels.triton_f2m_attention_backward(
        grad_y, x, k, v, ctx.heads)
    return grad_x, grad_k, grad_v, None


_f2m_attention_op.register_autograd(_backward, setup_context=_setup_context)
opaque_under_interpreter(_f2m_attention_op)
opaque_under_interpreter(_f2m_attention_backward_op)


def f2m_attention(x: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Former->Mobile attention on Triton: x [B, C, H, W] (fp32, fp16 or bf16), k, v [B, M, C];
    returns y [B, C, H, W] in x's layout. Semantics of ``mobileformer.functional.f2m_attention``."""
    check_f2m_attention(x, k, v, heads)
    check_device_and_dtype(x)
    return torch.ops.mf_kernels.triton_f2m_attention(x, k, v, heads)
