"""Triton Mobile->Former attention: the M tokens read the feature map.

    out[b,m,hc] = sum_p softmax_p(s * <q[b,m,hc], x[b,hc,p]>) * x[b,hc,p],  s = (C/heads)^-1/2

x [B, C, H, W] is both key and value. Forward: a program owns one (image, head) and a run of
positions (a split) and holds all M tokens, so x is read once; it runs an online softmax over
its positions. With one split it writes ``out`` directly; with several (few images and heads
on a large map) it writes partial (row max, row sum, unnormalised output) and a combine
kernel merges them (split-K / flash-decoding style).

Backward recomputes the softmax statistics (log-sum-exp over positions) with the same kernels,
then one pass over x gives grad_x and per-split fp32 partials of grad_q, summed afterwards.
Scores are kept in the log2 domain (log2(e) folded into the scale) to use exp2.

Tokens are few (Mobile-Former: 3 to 6), too few for tl.dot (every dimension >= 16), so the
products over channels and positions are broadcast-multiply-and-sum on [M, D, P] blocks.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ..ops._checks import check_m2f_attention
from ._common import (LOG2E, check_device_and_dtype, empty_feature_map, feature_map_strides, launchable,
                      on_device, opaque_under_interpreter, pow2, softmax_scale, target_programs)

# Positions per split; None picks enough splits to fill the device. Tests set it (and the
# largest position tile) small to exercise the split-and-combine path on small maps.
POSITIONS_PER_SPLIT: Optional[int] = None
MAX_BLOCK_P = 256

# Elements of the [BLOCK_M, BLOCK_D, BLOCK_P] products one program holds at a time, and the
# fewest positions per tile (the backward holds more products at once: smaller tiles).
FORWARD_BLOCK_ELEMENTS = 8192
BACKWARD_BLOCK_ELEMENTS = 4096
FORWARD_MIN_BLOCK_P = 16
BACKWARD_MIN_BLOCK_P = 8


@triton.jit
def _m2f_fwd_kernel(
        x_ptr, q_ptr, out_ptr, lse_ptr, part_max_ptr, part_sum_ptr, part_acc_ptr,
        B, M, C, HW, D, heads, positions_per_split, qk_scale,
        xs_b, xs_c, xs_p, qs_b, qs_m, qs_c, os_b, os_m, os_c,
        WITH_VALUES: tl.constexpr, SINGLE_SPLIT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    """Over the positions p of split `split` of image b, head h, per token m, with
    t[m,p] = qk_scale * <q[b,m,hc], x[b,hc,p]> (log2 domain):
    row max mx[m] = max_p t, row sum l[m] = sum_p 2^(t - mx), acc[m,hc] = sum_p 2^(t - mx) x[hc,p].
    One split: out = acc / l (WITH_VALUES) or lse = mx + log2(l). Else: partials (mx, l, acc).
    Grid (splits, heads, B)."""
    split = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    m = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    m_ok = m < M
    d_ok = d < D
    md_ok = m_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * qs_b + m[:, None] * qs_m + ch[None, :] * qs_c, mask=md_ok,
                other=0.0).to(tl.float32) * qk_scale
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    p_begin = split * positions_per_split
    p_end = tl.minimum(p_begin + positions_per_split, HW)
    x_base = x_ptr + b * xs_b + ch[:, None] * xs_c
    for p_start in range(p_begin, p_end, BLOCK_P):
        p = p_start + tl.arange(0, BLOCK_P)
        p_ok = p < p_end
        xt = tl.load(x_base + p.to(tl.int64)[None, :] * xs_p, mask=d_ok[:, None] & p_ok[None, :],
                     other=0.0).to(tl.float32)                                   # [D, P]
        t = tl.sum(q[:, :, None] * xt[None, :, :], axis=1)                       # [M, P]
        t = tl.where(p_ok[None, :], t, float("-inf"))
        # Every tile holds a valid position, so new_max is finite and no inf - inf arises.
        new_max = tl.maximum(row_max, tl.max(t, axis=1))
        rescale = tl.exp2(row_max - new_max)
        e = tl.exp2(t - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(e, axis=1)
        if WITH_VALUES:
            acc = acc * rescale[:, None] + tl.sum(e[:, None, :] * xt[None, :, :], axis=2)
        row_max = new_max
    row = (b * M + m) * heads + h                                   # [B, M, heads] index
    if SINGLE_SPLIT:
        if WITH_VALUES:
            tl.store(out_ptr + b * os_b + m[:, None] * os_m + ch[None, :] * os_c,
                     (acc / row_sum[:, None]).to(out_ptr.dtype.element_ty), mask=md_ok)
        else:
            tl.store(lse_ptr + row, row_max + tl.log2(row_sum), mask=m_ok)
    else:
        tl.store(part_max_ptr + split * B * M * heads + row, row_max, mask=m_ok)
        tl.store(part_sum_ptr + split * B * M * heads + row, row_sum, mask=m_ok)
        if WITH_VALUES:
            tl.store(part_acc_ptr + ((split * B + b) * M + m[:, None]) * C + ch[None, :], acc,
                     mask=md_ok)


@triton.jit
def _m2f_combine_kernel(
        part_max_ptr, part_sum_ptr, part_acc_ptr, out_ptr, lse_ptr, splits,
        B, M, C, D, heads, os_b, os_m, os_c,
        WITH_VALUES: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merges the splits s of one token row (b, m, head h):
    mx = max_s mx_s, l = sum_s 2^(mx_s - mx) l_s, acc = sum_s 2^(mx_s - mx) acc_s;
    out[b,m,hc] = acc / l (WITH_VALUES) or lse[b,m,h] = mx + log2(l). Grid (M, heads, B)."""
    m = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    d_ok = d < D
    row = (b * M + m) * heads + h
    split_stride = B * M * heads
    row_max = tl.load(part_max_ptr + row)
    row_sum = tl.load(part_sum_ptr + row)
    acc = tl.zeros([BLOCK_D], tl.float32)
    if WITH_VALUES:
        acc = tl.load(part_acc_ptr + (b * M + m) * C + ch, mask=d_ok, other=0.0)
    for s in range(1, splits):
        split_max = tl.load(part_max_ptr + s * split_stride + row)
        new_max = tl.maximum(row_max, split_max)
        rescale = tl.exp2(row_max - new_max)
        weight = tl.exp2(split_max - new_max)
        row_sum = row_sum * rescale + tl.load(part_sum_ptr + s * split_stride + row) * weight
        if WITH_VALUES:
            acc = acc * rescale + weight * tl.load(
                part_acc_ptr + ((s * B + b) * M + m) * C + ch, mask=d_ok, other=0.0)
        row_max = new_max
    if WITH_VALUES:
        tl.store(out_ptr + b * os_b + m * os_m + ch * os_c,
                 (acc / row_sum).to(out_ptr.dtype.element_ty), mask=d_ok)
    else:
        tl.store(lse_ptr + row, row_max + tl.log2(row_sum))


@triton.jit
def _m2f_bwd_kernel(
        grad_out_ptr, x_ptr, q_ptr, out_ptr, lse_ptr, grad_x_ptr, part_grad_q_ptr,
        B, M, C, HW, D, heads, positions_per_split, qk_scale, scale,
        gs_b, gs_m, gs_c, xs_b, xs_c, xs_p, qs_b, qs_m, qs_c, os_b, os_m, os_c,
        gxs_b, gxs_c, gxs_p,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    """With P[m,p] = 2^(t[m,p] - lse[m]) the softmax, dO = grad_out, O = out,
    dP[m,p] = <dO[m,hc], x[hc,p]>, delta[m] = <dO[m,hc], O[m,hc]>, dS = P * (dP - delta):
    grad_x[hc,p] = sum_m P[m,p] dO[m,hc] + s * dS[m,p] q[m,hc]  (x is key and value),
    grad_q[m,hc] = s * sum_p dS[m,p] x[hc,p], written per split to part_grad_q (fp32).
    Grid (splits, heads, B)."""
    split = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    m = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    m_ok = m < M
    d_ok = d < D
    md_ok = m_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * qs_b + m[:, None] * qs_m + ch[None, :] * qs_c, mask=md_ok,
                other=0.0).to(tl.float32)
    d_out = tl.load(grad_out_ptr + b * gs_b + m[:, None] * gs_m + ch[None, :] * gs_c,
                    mask=md_ok, other=0.0).to(tl.float32)
    out = tl.load(out_ptr + b * os_b + m[:, None] * os_m + ch[None, :] * os_c, mask=md_ok,
                  other=0.0).to(tl.float32)
    delta = tl.sum(d_out * out, axis=1)
    lse = tl.load(lse_ptr + (b * M + m) * heads + h, mask=m_ok, other=0.0)
    q_log2 = q * qk_scale
    q_scaled = q * scale
    acc_grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    p_begin = split * positions_per_split
    p_end = tl.minimum(p_begin + positions_per_split, HW)
    for p_start in range(p_begin, p_end, BLOCK_P):
        p = p_start + tl.arange(0, BLOCK_P)
        p64 = p.to(tl.int64)
        dp_ok = d_ok[:, None] & (p < p_end)[None, :]
        xt = tl.load(x_ptr + b * xs_b + ch[:, None] * xs_c + p64[None, :] * xs_p, mask=dp_ok,
                     other=0.0).to(tl.float32)                                   # [D, P]
        t = tl.sum(q_log2[:, :, None] * xt[None, :, :], axis=1)                  # [M, P]
        probs = tl.where(m_ok[:, None] & (p < p_end)[None, :], tl.exp2(t - lse[:, None]), 0.0)
        d_probs = tl.sum(d_out[:, :, None] * xt[None, :, :], axis=1)             # [M, P]
        d_scores = probs * (d_probs - delta[:, None])
        grad_x = tl.sum(probs[:, None, :] * d_out[:, :, None]
                        + d_scores[:, None, :] * q_scaled[:, :, None], axis=0)   # [D, P]
        tl.store(grad_x_ptr + b * gxs_b + ch[:, None] * gxs_c + p64[None, :] * gxs_p,
                 grad_x.to(grad_x_ptr.dtype.element_ty), mask=dp_ok)
        acc_grad_q += tl.sum(d_scores[:, None, :] * xt[None, :, :], axis=2)     # [M, D]
    tl.store(part_grad_q_ptr + ((split * B + b) * M + m[:, None]) * C + ch[None, :],
             acc_grad_q * scale, mask=md_ok)


def _blocks(M: int, D: int, HW: int, budget: int, min_p: int) -> Tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_D, BLOCK_P, num_warps): all tokens and a head's channels in one block,
    positions filling the rest of the budget (at least min_p, at most MAX_BLOCK_P)."""
    block_m, block_d = pow2(M, lo=2), pow2(D, lo=2)
    block_p = pow2(HW, lo=min_p,
                   hi=max(min_p, min(MAX_BLOCK_P, budget // (block_m * block_d))))
    return block_m, block_d, block_p, 4 if block_m * block_d * block_p <= 4096 else 8


def _splits(B: int, heads: int, HW: int, block_p: int, device: torch.device) -> Tuple[int, int]:
    """(splits, positions_per_split): enough splits of the positions to fill the device."""
    if POSITIONS_PER_SPLIT is not None:
        per_split = triton.cdiv(POSITIONS_PER_SPLIT, block_p) * block_p
    else:
        p_tiles = triton.cdiv(HW, block_p)
        splits = max(1, min(p_tiles, triton.cdiv(target_programs(device), B * heads)))
        per_split = triton.cdiv(p_tiles, splits) * block_p
    return triton.cdiv(HW, per_split), per_split


def _softmax_pass(x: Tensor, xs, q: Tensor, heads: int, out: Optional[Tensor],
                  lse: Optional[Tensor]) -> None:
    """Runs the forward (out given) or the statistics pass (lse given) over x."""
    B, C, H, W = x.shape
    M, D, HW = q.shape[1], C // heads, H * W
    block_m, block_d, block_p, warps = _blocks(M, D, HW, FORWARD_BLOCK_ELEMENTS,
                                                FORWARD_MIN_BLOCK_P)
    splits, per_split = _splits(B, heads, HW, block_p, x.device)
    with_values = out is not None
    dummy = out if with_values else lse
    part_max = part_sum = part_acc = dummy
    if splits > 1:
        part_max = torch.empty((splits, B, M, heads), dtype=torch.float32, device=x.device)
        part_sum = torch.empty_like(part_max)
        if with_values:
            part_acc = torch.empty((splits, B, M, C), dtype=torch.float32, device=x.device)
    os_ = out.stride() if with_values else (0, 0, 0)
    with on_device(x):
        wrap_triton(_m2f_fwd_kernel)[(splits, heads, B)](
            x, q, dummy, dummy, part_max, part_sum, part_acc, B, M, C, HW, D, heads, per_split,
            softmax_scale(D) * LOG2E, *xs, *q.stride(), *os_, WITH_VALUES=with_values,
            SINGLE_SPLIT=splits == 1, BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_P=block_p,
            num_warps=warps)
        if splits > 1:
            wrap_triton(_m2f_combine_kernel)[(M, heads, B)](
                part_max, part_sum, part_acc, dummy, dummy, splits, B, M, C, D, heads, *os_,
                WITH_VALUES=with_values, BLOCK_D=block_d, num_warps=1 if block_d <= 128 else 4)


@triton_op("mf_kernels::triton_m2f_attention", mutates_args=())
def _m2f_attention_op(x: Tensor, q: Tensor, heads: int) -> Tensor:
    B, C, H, W = x.shape
    out = torch.empty((B, q.shape[1], C), dtype=x.dtype, device=x.device)
    if out.numel() == 0 or not launchable(x):
        return out
    if H * W == 0:
        return out.zero_()  # a softmax over no position attends to nothing
    x, xs = feature_map_strides(x)
    _softmax_pass(x, xs, q, heads, out=out, lse=None)
    return out


@triton_op("mf_kernels::triton_m2f_attention_backward", mutates_args=())
def _m2f_attention_backward_op(grad_out: Tensor, x: Tensor, q: Tensor, out: Tensor,
                               heads: int) -> Tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    M, D, HW = q.shape[1], C // heads, H * W
    grad_x = empty_feature_map(x)
    if B * M * C * HW == 0 or not launchable(x):
        # Sums over no token or no position are zero; fake tensors only need the shapes.
        return grad_x.zero_(), torch.zeros((B, M, C), dtype=q.dtype, device=q.device)
    x, xs = feature_map_strides(x)
    _, gxs = feature_map_strides(grad_x)
    lse = torch.empty((B, M, heads), dtype=torch.float32, device=x.device)
    _softmax_pass(x, xs, q, heads, out=None, lse=lse)
    block_m, block_d, block_p, warps = _blocks(M, D, HW, BACKWARD_BLOCK_ELEMENTS,
                                                BACKWARD_MIN_BLOCK_P)
    splits, per_split = _splits(B, heads, HW, block_p, x.device)
    part_grad_q = torch.empty((splits, B, M, C), dtype=torch.float32, device=x.device)
    with on_device(x):
        wrap_triton(_m2f_bwd_kernel)[(splits, heads, B)](
            grad_out, x, q, out, lse, grad_x, part_grad_q, B, M, C, HW, D, heads, per_split,
            softmax_scale(D) * LOG2E, softmax_scale(D), *grad_out.stride(), *xs, *q.stride(),
            *out.stride(), *gxs, BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_P=block_p, num_warps=warps)
    return grad_x, part_grad_q.sum(0).to(q.dtype)


def _setup_context(ctx, inputs, output):
    x, q, heads = inputs
    ctx.heads = heads
    ctx.save_for_backward(x, q, output)


def _backward(ctx, grad_out):
    x, q, out = ctx.saved_tensors
    grad_x, grad_q = torch.ops.mf_kernels.triton_m2f_attention_backward(
        grad_out, x, q, out, ctx.heads)
    return grad_x, grad_q, None


_m2f_attention_op.register_autograd(_backward, setup_context=_setup_context)
opaque_under_interpreter(_m2f_attention_op)
opaque_under_interpreter(_m2f_attention_backward_op)


def m2f_attention(x: Tensor, q: Tensor, heads: int) -> Tensor:
    """Mobile->Former attention on Triton: x [B, C, H, W] (fp32, fp16 or bf16), q [B, M, C];
    returns out [B, M, C] (contiguous). Semantics of ``mobileformer.functional.m2f_attention``."""
    check_m2f_attention(x, q, heads)
    check_device_and_dtype(x)
    return torch.ops.mf_kernels.triton_m2f_attention(x, q, heads)
