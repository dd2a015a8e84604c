"""Triton Former->Mobile attention with the residual: the feature map reads the M tokens.

    y[b,hc,p] = x[b,hc,p] + sum_m softmax_m(s * <x[b,hc,p], k[b,m,hc]>) * v[b,m,hc]

with s = (C/heads)^-1/2. Every position is a query with its own softmax over the M tokens, so
the forward is one pass over x in and y out: a program owns a [D, BLOCK_P] tile of one head
(D = C/heads channels) and runs an online softmax over the tokens, one token at a time (the
tokens are few, too few for tl.dot, and a token's k and v rows stay in cache).

Backward recomputes the softmax per position (no B x heads x P x M tensor is saved). Tokens go
in chunks of BLOCK_M = 16 (tl.dot needs every dimension >= 16: fewer are padded): a program
owns one (image, head, token chunk) and a run of position tiles; per tile the scores K X,
dA = V grad_y, the update K^T dS and the grad_k, grad_v partials dS X^T, A grad_y^T are
tl.dot products, and only the chunk's [16, D] accumulators stay in registers, whatever M.
With one chunk (M <= 16: every Mobile-Former variant) the per-position softmax statistics come
from the chunk itself and grad_x is stored; with several (a detection head's 100 queries) a
statistics kernel first computes, online over the chunks, each position's log2-sum-exp and
delta = sum_m a_m dA_m, and the chunks add their s dS K into an fp32 grad_x (atomics).
grad_k and grad_v are written as fp32 partials per run of tiles and summed afterwards in a
fixed order. Scores are in the log2 domain (log2(e) folded into the scale); fp16/bf16 dot
operands stay in their dtype (A and dS rounded to it, as in flash-attention), fp32 ones are
exact ("ieee").
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ..ops._checks import check_f2m_attention
from ._common import (INTERPRETED, LOG2E, cast, check_device_and_dtype, dot,
                      mixed_dot, empty_feature_map,
                      feature_map_strides, launchable, on_device, opaque_under_interpreter, pow2,
                      softmax_scale, target_programs)

# Tokens per chunk of the backward (the smallest tl.dot dimension; the model has 3 to 6).
BLOCK_M = 16
# Elements of one [D, BLOCK_P] tile and warps per program. The backward holds three tiles
# (x, grad_y, grad_x) and the chunk's [BLOCK_M, D] accumulators.
FORWARD_TILE_ELEMENTS = 2048
BACKWARD_TILE_ELEMENTS = 1024
BACKWARD_MAX_BLOCK_P = 64
FORWARD_WARPS = 4
BACKWARD_WARPS = 8
# fp32 with a head of at most 32 channels takes 4 warps in the backward: at 8 (256 threads)
# ptxas budgets 128 registers a thread and spilled 8 B there (tools/resource_table.py).
BACKWARD_WARPS_FP32_NARROW = 4
# Software pipelining of the position loop (Triton's num_stages) holds several tiles in flight;
# with one stage nothing spills (tools/resource_table.py).
STAGES = 1
# Positions per backward program; None picks enough programs to fill the device.
POSITIONS_PER_SPLIT: Optional[int] = None
MAX_BLOCK_P = 256


@triton.jit
def _f2m_fwd_kernel(
        x_ptr, k_ptr, v_ptr, y_ptr, M, HW, D, qk_scale,
        xs_b, xs_c, xs_p, ks_b, ks_m, ks_c, vs_b, vs_m, vs_c, ys_b, ys_c, ys_p,
        INTERPRET: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
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
             cast(y, y_ptr.dtype.element_ty, INTERPRET), mask=dp_ok)


@triton.jit
def _token_scores(k_ptr, v_ptr, m, m_ok, ch, d_ok, ks_m, ks_c, vs_m, vs_c, xt, gy, qk_scale,
                  INTERPRET: tl.constexpr):
    """For the tokens m (a chunk; masked ones out): scores t[m,p] = qk_scale <k[m], x[p]>
    (log2 domain; -inf for masked tokens) and dA[m,p] = <v[m], grad_y[p]>, both [BLOCK_M, P];
    also the chunk's k rows [BLOCK_M, D]."""
    md_ok = m_ok[:, None] & d_ok[None, :]
    key = tl.load(k_ptr + m[:, None] * ks_m + ch[None, :] * ks_c, mask=md_ok, other=0.0)
    value = tl.load(v_ptr + m[:, None] * vs_m + ch[None, :] * vs_c, mask=md_ok, other=0.0)
    t = tl.where(m_ok[:, None], dot(key, xt, INTERPRET) * qk_scale, float("-inf"))
    return t, dot(value, gy, INTERPRET), key


@triton.jit
def _f2m_stats_kernel(
        grad_y_ptr, x_ptr, k_ptr, v_ptr, lse_ptr, delta_ptr, M, HW, D, heads, qk_scale,
        gs_b, gs_c, gs_p, xs_b, xs_c, xs_p, ks_b, ks_m, ks_c, vs_b, vs_m, vs_c,
        INTERPRET: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_P: tl.constexpr):
    """Per position p, over all M tokens, online over chunks of BLOCK_M:
    lse2[p] = log2 sum_m 2^t[m,p] and delta[p] = sum_m a_m[p] dA[m,p] ([B, heads, HW], fp32),
    for the backward when the tokens take several chunks. Grid (position tiles, heads, B)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    d_ok = d < D
    p_ok = p < HW
    p64 = p.to(tl.int64)
    dp_ok = d_ok[:, None] & p_ok[None, :]
    xt = tl.load(x_ptr + b * xs_b + ch[:, None] * xs_c + p64[None, :] * xs_p, mask=dp_ok,
                 other=0.0)
    gy = tl.load(grad_y_ptr + b * gs_b + ch[:, None] * gs_c + p64[None, :] * gs_p, mask=dp_ok,
                 other=0.0)
    row_max = tl.full([BLOCK_P], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_P], tl.float32)
    weighted = tl.zeros([BLOCK_P], tl.float32)                  # sum_m 2^(t - row_max) dA
    for m0 in range(0, M, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        t, d_attn, _ = _token_scores(k_ptr + b * ks_b, v_ptr + b * vs_b, m, m < M, ch, d_ok,
                                     ks_m, ks_c, vs_m, vs_c, xt, gy, qk_scale, INTERPRET)
        new_max = tl.maximum(row_max, tl.max(t, axis=0))  # finite: every chunk has a token
        rescale = tl.exp2(row_max - new_max)
        e = tl.exp2(t - new_max[None, :])
        row_sum = row_sum * rescale + tl.sum(e, axis=0)
        weighted = weighted * rescale + tl.sum(e * d_attn, axis=0)
        row_max = new_max
    row = (b * heads + h) * HW + p64
    tl.store(lse_ptr + row, row_max + tl.log2(row_sum), mask=p_ok)
    tl.store(delta_ptr + row, weighted / row_sum, mask=p_ok)


@triton.jit
def _f2m_bwd_kernel(
        grad_y_ptr, x_ptr, k_ptr, v_ptr, grad_x_ptr, part_grad_k_ptr, part_grad_v_ptr,
        lse_ptr, delta_ptr, B, M, C, HW, D, heads, chunks, positions_per_split, qk_scale, scale,
        gs_b, gs_c, gs_p, xs_b, xs_c, xs_p, ks_b, ks_m, ks_c, vs_b, vs_m, vs_c,
        gxs_b, gxs_c, gxs_p,
        ONE_CHUNK: tl.constexpr, INTERPRET: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    """For the tokens m of chunk `chunk`, with a_m[p] the softmax over all tokens,
    dA_m[p] = <grad_y[hc,p], v[m,hc]>, delta[p] = sum_m a_m dA_m and dS_m = a_m (dA_m - delta):
    grad_x[hc,p] = grad_y[hc,p] + s * sum_m dS_m[p] k[m,hc]   (the residual passes grad_y),
    grad_k[m,hc] = s * sum_p dS_m[p] x[hc,p],  grad_v[m,hc] = sum_p a_m[p] grad_y[hc,p],
    the two sums over this program's run of positions written to part_*[split, b, m, hc].
    ONE_CHUNK: the chunk holds every token, the softmax statistics come from it and grad_x is
    stored; else they come from _f2m_stats_kernel (lse2, delta) and s * sum_m dS_m k[m] is
    added atomically to grad_x (fp32, holding grad_y). Grid (splits, heads * chunks, B)."""
    split = tl.program_id(0)
    h = (tl.program_id(1) // chunks).to(tl.int64)
    chunk = tl.program_id(1) % chunks
    b = tl.program_id(2).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ch = h * D + d
    d_ok = d < D
    m = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    acc_grad_k = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc_grad_v = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    p_begin = split * positions_per_split
    p_end = tl.minimum(p_begin + positions_per_split, HW)
    for p_start in range(p_begin, p_end, BLOCK_P):
        p = p_start + tl.arange(0, BLOCK_P)
        p_ok = p < p_end
        p64 = p.to(tl.int64)
        dp_ok = d_ok[:, None] & p_ok[None, :]
        xt = tl.load(x_ptr + b * xs_b + ch[:, None] * xs_c + p64[None, :] * xs_p, mask=dp_ok,
                     other=0.0)                                                  # [D, P]
        gy = tl.load(grad_y_ptr + b * gs_b + ch[:, None] * gs_c + p64[None, :] * gs_p,
                     mask=dp_ok, other=0.0)                                      # [D, P]
        t, d_attn, key = _token_scores(k_ptr + b * ks_b, v_ptr + b * vs_b, m, m_ok, ch, d_ok,
                                       ks_m, ks_c, vs_m, vs_c, xt, gy, qk_scale, INTERPRET)
        if ONE_CHUNK:
            e = tl.exp2(t - tl.max(t, axis=0)[None, :])
            inv_sum = 1.0 / tl.sum(e, axis=0)
            attn = e * inv_sum[None, :]
            delta = tl.sum(e * d_attn, axis=0) * inv_sum
        else:
            row = (b * heads + h) * HW + p64
            attn = tl.exp2(t - tl.load(lse_ptr + row, mask=p_ok, other=0.0)[None, :])
            delta = tl.load(delta_ptr + row, mask=p_ok, other=0.0)
        attn = tl.where(p_ok[None, :], attn, 0.0)  # no weight at padding positions
        d_scores = attn * (d_attn - delta[None, :])              # [M, P]
        update = mixed_dot(tl.trans(key), d_scores, INTERPRET) * scale                 # [D, P]
        grad_x_ptrs = grad_x_ptr + b * gxs_b + ch[:, None] * gxs_c + p64[None, :] * gxs_p
        if ONE_CHUNK:
            tl.store(grad_x_ptrs, cast(gy.to(tl.float32) + update, grad_x_ptr.dtype.element_ty,
                                       INTERPRET), mask=dp_ok)
        else:
            tl.atomic_add(grad_x_ptrs, update, mask=dp_ok)
        acc_grad_k += mixed_dot(d_scores, tl.trans(xt), INTERPRET)                     # [M, D]
        acc_grad_v += mixed_dot(attn, tl.trans(gy), INTERPRET)
    part = ((split * B + b) * M + m[:, None]) * C + ch[None, :]
    md_ok = m_ok[:, None] & d_ok[None, :]
    tl.store(part_grad_k_ptr + part, acc_grad_k * scale, mask=md_ok)
    tl.store(part_grad_v_ptr + part, acc_grad_v, mask=md_ok)


def _tiles(D: int, HW: int, tile_elements: int, min_d: int, max_p: int) -> Tuple[int, int]:
    """(BLOCK_D, BLOCK_P): a head's channels (at least min_d; 16 for tl.dot) and as many
    positions (at most max_p) as fill the tile."""
    block_d = pow2(D, lo=min_d)
    return block_d, pow2(HW, lo=16, hi=max(16, min(MAX_BLOCK_P, max_p, tile_elements // block_d)))


def _backward_warps(dtype: torch.dtype, block_d: int) -> int:
    return (BACKWARD_WARPS_FP32_NARROW if dtype == torch.float32 and block_d <= 32
            else BACKWARD_WARPS)


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
    block_d, block_p = _tiles(D, HW, FORWARD_TILE_ELEMENTS, 2, MAX_BLOCK_P)
    with on_device(x):
        wrap_triton(_f2m_fwd_kernel)[(triton.cdiv(HW, block_p), heads, B)](
            x, k, v, y, M, HW, D, softmax_scale(D) * LOG2E, *xs, *k.stride(), *v.stride(),
            *ys, INTERPRET=INTERPRETED, BLOCK_D=block_d, BLOCK_P=block_p,
            num_warps=FORWARD_WARPS)
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
    chunks = triton.cdiv(M, BLOCK_M)
    block_d, block_p = _tiles(D, HW, BACKWARD_TILE_ELEMENTS, 16, BACKWARD_MAX_BLOCK_P)
    scale = softmax_scale(D)
    lse = delta = target = grad_x
    if chunks > 1:
        # Statistics over all the tokens first; the chunks then add into an fp32 grad_x that
        # starts as grad_y.
        lse = torch.empty((B, heads, HW), dtype=torch.float32, device=x.device)
        delta = torch.empty_like(lse)
        target = torch.empty_like(grad_x, dtype=torch.float32).copy_(grad_y)
        with on_device(x):
            wrap_triton(_f2m_stats_kernel)[(triton.cdiv(HW, block_p), heads, B)](
                grad_y, x, k, v, lse, delta, M, HW, D, heads, scale * LOG2E, *gs, *xs,
                *k.stride(), *v.stride(), INTERPRET=INTERPRETED, BLOCK_M=BLOCK_M,
                BLOCK_D=block_d, BLOCK_P=block_p, num_warps=BACKWARD_WARPS, num_stages=STAGES)
    _, gxs = feature_map_strides(target)
    if POSITIONS_PER_SPLIT is not None:
        per_split = triton.cdiv(POSITIONS_PER_SPLIT, block_p) * block_p
    else:  # enough runs of positions to fill the device, each a whole number of tiles
        p_tiles = triton.cdiv(HW, block_p)
        splits = max(1, min(p_tiles, triton.cdiv(target_programs(x.device), B * heads * chunks)))
        per_split = triton.cdiv(p_tiles, splits) * block_p
    splits = triton.cdiv(HW, per_split)
    part_grad_k = torch.empty((splits, B, M, C), dtype=torch.float32, device=x.device)
    part_grad_v = torch.empty_like(part_grad_k)
    with on_device(x):
        wrap_triton(_f2m_bwd_kernel)[(splits, heads * chunks, B)](
            grad_y, x, k, v, target, part_grad_k, part_grad_v, lse, delta, B, M, C, HW, D,
            heads, chunks, per_split, scale * LOG2E, scale, *gs, *xs, *k.stride(), *v.stride(),
            *gxs, ONE_CHUNK=chunks == 1, INTERPRET=INTERPRETED, BLOCK_M=BLOCK_M,
            BLOCK_D=block_d, BLOCK_P=block_p, num_warps=_backward_warps(x.dtype, block_d),
            num_stages=STAGES)
    if chunks > 1:
        grad_x.copy_(target)
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
