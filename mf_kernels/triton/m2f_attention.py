"""Triton Mobile->Former attention: the M tokens read the feature map.

    out[b,m,hc] = sum_p softmax_p(s * <q[b,m,hc], x[b,hc,p]>) * x[b,hc,p],  s = (C/heads)^-1/2
    lse[b,h,m]  = log sum_p exp(s * <q[b,m,hc], x[b,hc,p]>)

x [B, C, H, W] is both key and value. Tokens go in chunks of BLOCK_M = 16 (a tl.dot needs every
dimension >= 16: fewer tokens are padded; the model has 3 to 6, a detection head 100): a
program owns one (image, head, token chunk) and a run of positions (a split), and holds only
its chunk's [16, D] rows, so registers do not grow with M. Forward: per tile of positions,
scores S = Q X and the update P X^T are tl.dot products (flash-attention's online softmax over
the positions); with one split the program writes out and lse, with several (few images and
heads on a large map) partials (row max, row sum, unnormalised output) that a combine kernel
merges (split-K / flash-decoding style). x is read once per token chunk.

Backward takes the forward's lse (no statistics pass): per tile, A = exp(S - lse),
dS = A (dO X - delta) with delta = <dO, O> per token, grad_x = s Q^T dS + dO^T A and the
grad_q partial dS X^T, all tl.dot. grad_x is stored directly with one token chunk and added
with fp32 atomics with several (M > 16); grad_q goes to per-split fp32 partials summed in a
fixed order. Scores are in the log2 domain (log2(e) folded into the scale) to use exp2.
fp16/bf16 dot operands stay in their dtype (tensor cores); probabilities and dS are rounded to
it for their dots, as in flash-attention. fp32 dots are exact ("ieee").
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ..ops._checks import check_m2f_attention
from ..ops.m2f_attention import backward_with_lse, lse_dtype, setup_context
from ._common import (INTERPRETED, LOG2E, cast, check_device_and_dtype, dot,
                      mixed_dot, empty_feature_map,
                      feature_map_strides, launchable, on_device, opaque_under_interpreter, pow2,
                      softmax_scale, target_programs)

# Tokens per program (the smallest tl.dot dimension).
BLOCK_M = 16
# Positions per split; None picks enough splits to fill the device. Tests set it (and the
# largest position tile) small to exercise the split-and-combine path on small maps.
POSITIONS_PER_SPLIT: Optional[int] = None
MAX_BLOCK_P = 128
# Elements of the [BLOCK_D, BLOCK_P] x tile; the backward holds about eight [16 or D, BLOCK_P]
# blocks at once (scores, dP, A, dS and their split halves, grad_x): smaller tiles and at most
# 64 positions keep it from spilling (tools/resource_table.py). The forward: 8192-element
# tiles spilled in fp32 (8-20 B at heads of 32 and 64 channels) and in bf16 at 128 channels.
FORWARD_TILE_ELEMENTS = 4096
BACKWARD_TILE_ELEMENTS = 2048
BACKWARD_MAX_BLOCK_P = 64
# Software pipelining of the position loop (Triton's num_stages) holds several tiles in flight;
# with one stage nothing spills (tools/resource_table.py).
STAGES = 1


@triton.jit
def _m2f_fwd_kernel(
        x_ptr, q_ptr, out_ptr, lse_ptr, part_max_ptr, part_sum_ptr, part_acc_ptr,
        B, M, C, HW, D, heads, chunks, positions_per_split, qk_scale,
        xs_b, xs_c, xs_p, qs_b, qs_m, qs_c,
        SINGLE_SPLIT: tl.constexpr, INTERPRET: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    """Over the positions p of split `split` of image b, head h, tokens m of chunk `chunk`,
    with t[m,p] = qk_scale * <q[b,m,hc], x[b,hc,p]> (log2 domain): row max mx = max_p t,
    l = sum_p 2^(t - mx), acc[m,hc] = sum_p 2^(t - mx) x[hc,p]. One split: out = acc / l and
    lse = ln2 (mx + log2 l); else partials (mx, l, acc). Grid (splits, heads * chunks, B)."""
    split = tl.program_id(0)
    h = (tl.program_id(1) // chunks).to(tl.int64)
    chunk = tl.program_id(1) % chunks
    b = tl.program_id(2).to(tl.int64)
    m = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    m_ok = m < M
    d_ok = d < D
    md_ok = m_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * qs_b + m[:, None] * qs_m + ch[None, :] * qs_c, mask=md_ok, other=0.0)
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
                     other=0.0)                                                   # [D, P]
        t = dot(q, xt, INTERPRET) * qk_scale                                      # [M, P]
        t = tl.where(p_ok[None, :], t, float("-inf"))
        # Every tile holds a valid position, so new_max is finite and no inf - inf arises.
        new_max = tl.maximum(row_max, tl.max(t, axis=1))
        rescale = tl.exp2(row_max - new_max)
        e = tl.exp2(t - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(e, axis=1)
        acc = acc * rescale[:, None] + mixed_dot(e, tl.trans(xt), INTERPRET)
        row_max = new_max
    row = (b * heads + h) * M + m                                   # [B, heads, M] index
    if SINGLE_SPLIT:
        tl.store(out_ptr + (b * M + m[:, None]) * C + ch[None, :],
                 cast(acc / row_sum[:, None], out_ptr.dtype.element_ty, INTERPRET), mask=md_ok)
        tl.store(lse_ptr + row, (row_max + tl.log2(row_sum)) * 0.6931471805599453,  # ln 2
                 mask=m_ok)
    else:
        tl.store(part_max_ptr + split * B * heads * M + row, row_max, mask=m_ok)
        tl.store(part_sum_ptr + split * B * heads * M + row, row_sum, mask=m_ok)
        tl.store(part_acc_ptr + ((split * B + b) * M + m[:, None]) * C + ch[None, :], acc,
                 mask=md_ok)


@triton.jit
def _m2f_combine_kernel(
        part_max_ptr, part_sum_ptr, part_acc_ptr, out_ptr, lse_ptr, splits,
        B, M, C, D, heads, INTERPRET: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merges the splits s of one token row (b, m, head h):
    mx = max_s mx_s, l = sum_s 2^(mx_s - mx) l_s, acc = sum_s 2^(mx_s - mx) acc_s;
    out[b,m,hc] = acc / l, lse[b,h,m] = ln2 (mx + log2 l). Grid (M, heads, B)."""
    m = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    d_ok = d < D
    row = (b * heads + h) * M + m
    split_stride = B * heads * M
    row_max = tl.load(part_max_ptr + row)
    row_sum = tl.load(part_sum_ptr + row)
    acc = tl.load(part_acc_ptr + (b * M + m) * C + ch, mask=d_ok, other=0.0)
    for s in range(1, splits):
        split_max = tl.load(part_max_ptr + s * split_stride + row)
        new_max = tl.maximum(row_max, split_max)
        rescale = tl.exp2(row_max - new_max)
        weight = tl.exp2(split_max - new_max)
        row_sum = row_sum * rescale + tl.load(part_sum_ptr + s * split_stride + row) * weight
        acc = acc * rescale + weight * tl.load(part_acc_ptr + ((s * B + b) * M + m) * C + ch,
                                               mask=d_ok, other=0.0)
        row_max = new_max
    tl.store(out_ptr + (b * M + m) * C + ch, cast(acc / row_sum, out_ptr.dtype.element_ty,
                                                  INTERPRET), mask=d_ok)
    tl.store(lse_ptr + row, (row_max + tl.log2(row_sum)) * 0.6931471805599453)  # ln 2


@triton.jit
def _m2f_bwd_kernel(
        grad_out_ptr, x_ptr, q_ptr, out_ptr, lse_ptr, grad_x_ptr, part_grad_q_ptr,
        B, M, C, HW, D, heads, chunks, positions_per_split, qk_scale, scale,
        gs_b, gs_m, gs_c, xs_b, xs_c, xs_p, qs_b, qs_m, qs_c, os_b, os_m, os_c,
        gxs_b, gxs_c, gxs_p,
        ATOMIC: tl.constexpr, INTERPRET: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    """With A[m,p] = 2^(t[m,p] - lse[m] log2(e)) the softmax, dO = grad_out, O = out,
    dP = dO X, delta[m] = <dO[m], O[m]>, dS = A (dP - delta), for the tokens of this chunk:
    grad_x[hc,p] += sum_m s dS[m,p] q[m,hc] + A[m,p] dO[m,hc]  (x is key and value; stored,
    or with ATOMIC added to an fp32 grad_x), grad_q[m,hc] = s sum_p dS[m,p] x[hc,p] written
    per split to part_grad_q (fp32), as s (sum_p dS x - (sum_p dS) O) (see below). Grid
    (splits, heads * chunks, B)."""
    split = tl.program_id(0)
    h = (tl.program_id(1) // chunks).to(tl.int64)
    chunk = tl.program_id(1) % chunks
    b = tl.program_id(2).to(tl.int64)
    m = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    m_ok = m < M
    d_ok = d < D
    md_ok = m_ok[:, None] & d_ok[None, :]
    q = tl.load(q_ptr + b * qs_b + m[:, None] * qs_m + ch[None, :] * qs_c, mask=md_ok, other=0.0)
    d_out = tl.load(grad_out_ptr + b * gs_b + m[:, None] * gs_m + ch[None, :] * gs_c,
                    mask=md_ok, other=0.0)
    out = tl.load(out_ptr + b * os_b + m[:, None] * os_m + ch[None, :] * os_c, mask=md_ok,
                  other=0.0)
    delta = tl.sum(d_out.to(tl.float32) * out.to(tl.float32), axis=1)
    lse2 = tl.load(lse_ptr + (b * heads + h) * M + m, mask=m_ok,
                   other=0.0) * 1.4426950408889634                               # log2(e)
    q_t = tl.trans(q)                                                            # [D, M]
    d_out_t = tl.trans(d_out)
    acc_grad_q = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # sum_p dS per row, in every column (dS times ones, through the tensor cores: a row
    # reduction (tl.sum) of dS here took about 70 more registers and spilled)
    d_scores_sum = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    ones = cast(tl.full([BLOCK_P, BLOCK_D], 1.0, tl.float32), x_ptr.dtype.element_ty, INTERPRET)
    p_begin = split * positions_per_split
    p_end = tl.minimum(p_begin + positions_per_split, HW)
    for p_start in range(p_begin, p_end, BLOCK_P):
        p = p_start + tl.arange(0, BLOCK_P)
        p64 = p.to(tl.int64)
        p_ok = p < p_end
        dp_ok = d_ok[:, None] & p_ok[None, :]
        xt = tl.load(x_ptr + b * xs_b + ch[:, None] * xs_c + p64[None, :] * xs_p, mask=dp_ok,
                     other=0.0)                                                  # [D, P]
        t = dot(q, xt, INTERPRET) * qk_scale                                     # [M, P]
        probs = tl.where(m_ok[:, None] & p_ok[None, :], tl.exp2(t - lse2[:, None]), 0.0)
        d_probs = dot(d_out, xt, INTERPRET)                                      # [M, P]
        d_scores = probs * (d_probs - delta[:, None])
        grad_x = mixed_dot(q_t, d_scores, INTERPRET) * scale \
            + mixed_dot(d_out_t, probs, INTERPRET)                               # [D, P]
        grad_x_ptrs = grad_x_ptr + b * gxs_b + ch[:, None] * gxs_c + p64[None, :] * gxs_p
        if ATOMIC:
            tl.atomic_add(grad_x_ptrs, grad_x, mask=dp_ok)
        else:
            tl.store(grad_x_ptrs, cast(grad_x, grad_x_ptr.dtype.element_ty, INTERPRET), mask=dp_ok)
        acc_grad_q += mixed_dot(d_scores, tl.trans(xt), INTERPRET)                     # [M, D]
        d_scores_sum += mixed_dot(d_scores, ones, INTERPRET)
    # sum_p dS x - (sum_p dS) O: equal in exact arithmetic (sum_p dS = 0), but delta, from the
    # stored (fp16/bf16-rounded) O, shifts every dS of a row alike, which sum_p dS x carries
    # coherently over all positions (5-130 ulp off on a 112x112 map in bf16); this cancels it.
    acc_grad_q -= d_scores_sum * out.to(tl.float32)
    tl.store(part_grad_q_ptr + ((split * B + b) * M + m[:, None]) * C + ch[None, :],
             acc_grad_q * scale, mask=md_ok)


def _blocks(D: int, HW: int, tile_elements: int, max_p: int) -> Tuple[int, int, int]:
    """(BLOCK_D, BLOCK_P, num_warps): a head's channels (at least 16 for tl.dot) and as many
    positions (16 to max_p, at most MAX_BLOCK_P) as fill the x tile."""
    block_d = pow2(D, lo=16)
    block_p = pow2(HW, lo=16, hi=max(16, min(MAX_BLOCK_P, max_p, tile_elements // block_d)))
    return block_d, block_p, 4 if block_d * block_p <= 4096 and block_d < 64 else 8


def _forward_blocks(D: int, HW: int, dtype: torch.dtype) -> Tuple[int, int, int]:
    """The forward's (BLOCK_D, BLOCK_P, num_warps): 4 warps, 8 for a full fp32 tile. Measured
    for sm_90 (tools/resource_table.py): at 8 warps ptxas budgets 128 registers a thread, which
    fp16/bf16 tiles overran (spills at 128 channels) and full fp32 tiles fit; at 4 warps full
    fp32 tiles spilled (up to 284 B)."""
    block_d, block_p, _ = _blocks(D, HW, FORWARD_TILE_ELEMENTS, MAX_BLOCK_P)
    full = block_d * block_p >= FORWARD_TILE_ELEMENTS
    return block_d, block_p, 8 if dtype == torch.float32 and full else 4


def _splits(programs: int, HW: int, block_p: int, device: torch.device) -> Tuple[int, int]:
    """(splits, positions_per_split): enough splits of the positions to fill the device, given
    ``programs`` programs per split."""
    if POSITIONS_PER_SPLIT is not None:
        per_split = triton.cdiv(POSITIONS_PER_SPLIT, block_p) * block_p
    else:
        p_tiles = triton.cdiv(HW, block_p)
        splits = max(1, min(p_tiles, triton.cdiv(target_programs(device), programs)))
        per_split = triton.cdiv(p_tiles, splits) * block_p
    return triton.cdiv(HW, per_split), per_split


@triton_op("mf_kernels::triton_m2f_attention_with_lse", mutates_args=())
def _m2f_attention_op(x: Tensor, q: Tensor, heads: int) -> Tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    M, D, HW = q.shape[1], C // heads, H * W
    out = torch.empty((B, M, C), dtype=x.dtype, device=x.device)
    lse = torch.empty((B, heads, M), dtype=lse_dtype(x.dtype), device=x.device)
    if out.numel() == 0 or not launchable(x):
        return out, lse
    if HW == 0:  # a softmax over no position attends to nothing: log 0 = -inf
        return out.zero_(), lse.fill_(float("-inf"))
    x, xs = feature_map_strides(x)
    chunks = triton.cdiv(M, BLOCK_M)
    block_d, block_p, warps = _forward_blocks(D, HW, x.dtype)
    splits, per_split = _splits(B * heads * chunks, HW, block_p, x.device)
    part_max = part_sum = part_acc = lse
    if splits > 1:
        part_max = torch.empty((splits, B, heads, M), dtype=torch.float32, device=x.device)
        part_sum = torch.empty_like(part_max)
        part_acc = torch.empty((splits, B, M, C), dtype=torch.float32, device=x.device)
    with on_device(x):
        wrap_triton(_m2f_fwd_kernel)[(splits, heads * chunks, B)](
            x, q, out, lse, part_max, part_sum, part_acc, B, M, C, HW, D, heads, chunks,
            per_split, softmax_scale(D) * LOG2E, *xs, *q.stride(), SINGLE_SPLIT=splits == 1,
            INTERPRET=INTERPRETED, BLOCK_M=BLOCK_M, BLOCK_D=block_d, BLOCK_P=block_p,
            num_warps=warps, num_stages=STAGES)
        if splits > 1:
            wrap_triton(_m2f_combine_kernel)[(M, heads, B)](
                part_max, part_sum, part_acc, out, lse, splits, B, M, C, D, heads,
                INTERPRET=INTERPRETED, BLOCK_D=block_d, num_warps=1 if block_d <= 128 else 4)
    return out, lse


@triton_op("mf_kernels::triton_m2f_attention_backward", mutates_args=())
def _m2f_attention_backward_op(grad_out: Tensor, x: Tensor, q: Tensor, out: Tensor, lse: Tensor,
                               heads: int) -> Tuple[Tensor, Tensor]:
    B, C, H, W = x.shape
    M, D, HW = q.shape[1], C // heads, H * W
    grad_x = empty_feature_map(x)
    if B * M * C * HW == 0 or not launchable(x):
        # Sums over no token or no position are zero; fake tensors only need the shapes.
        return grad_x.zero_(), torch.zeros((B, M, C), dtype=q.dtype, device=q.device)
    x, xs = feature_map_strides(x)
    chunks = triton.cdiv(M, BLOCK_M)
    # Several token chunks add into grad_x: an fp32 buffer, zeroed, in grad_x's layout.
    target = grad_x if chunks == 1 else torch.zeros_like(grad_x, dtype=torch.float32)
    _, gxs = feature_map_strides(target)
    block_d, block_p, warps = _blocks(D, HW, BACKWARD_TILE_ELEMENTS, BACKWARD_MAX_BLOCK_P)
    splits, per_split = _splits(B * heads * chunks, HW, block_p, x.device)
    part_grad_q = torch.empty((splits, B, M, C), dtype=torch.float32, device=x.device)
    with on_device(x):
        wrap_triton(_m2f_bwd_kernel)[(splits, heads * chunks, B)](
            grad_out, x, q, out, lse.contiguous(), target, part_grad_q, B, M, C, HW, D, heads,
            chunks, per_split, softmax_scale(D) * LOG2E, softmax_scale(D), *grad_out.stride(), *xs,
            *q.stride(), *out.stride(), *gxs, ATOMIC=chunks > 1, INTERPRET=INTERPRETED,
            BLOCK_M=BLOCK_M, BLOCK_D=block_d, BLOCK_P=block_p, num_warps=warps,
            num_stages=STAGES)
    if chunks > 1:
        grad_x.copy_(target)
    return grad_x, part_grad_q.sum(0).to(q.dtype)


def _backward(ctx, grad_out, grad_lse):
    return backward_with_lse(ctx, grad_out, grad_lse,
                             torch.ops.mf_kernels.triton_m2f_attention_backward)


_m2f_attention_op.register_autograd(_backward, setup_context=setup_context)
opaque_under_interpreter(_m2f_attention_op)
opaque_under_interpreter(_m2f_attention_backward_op)


def m2f_attention_with_lse(x: Tensor, q: Tensor, heads: int) -> Tuple[Tensor, Tensor]:
    """(out, lse) of ``mf_kernels::m2f_attention_with_lse`` on Triton."""
    check_m2f_attention(x, q, heads)
    check_device_and_dtype(x)
    return torch.ops.mf_kernels.triton_m2f_attention_with_lse(x, q, heads)


def m2f_attention(x: Tensor, q: Tensor, heads: int) -> Tensor:
    """Mobile->Former attention on Triton: x [B, C, H, W] (fp32, fp16 or bf16), q [B, M, C];
    returns out [B, M, C] (contiguous). Semantics of ``mobileformer.functional.m2f_attention``."""
    return m2f_attention_with_lse(x, q, heads)[0]
