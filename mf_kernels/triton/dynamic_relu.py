"""Triton dynamic ReLU: y[b,c,p] = max_k (slope[b,c,k] * x[b,c,p] + intercept[b,c,k]).

Forward: one pass over x in, one pass over y out. A program owns a [BLOCK_C, BLOCK_P] tile of
one image and evaluates all K pieces at once as a [BLOCK_C, BLOCK_K, BLOCK_P] block.
Backward: one pass over x and grad_y in, grad_x out; grad_slope and grad_intercept (sums over
positions) are accumulated per program over a run of position tiles and written as fp32
partials [splits, B, C, K], summed afterwards (deterministic, no atomics).

Ties between pieces split the gradient evenly (``torch.amax`` semantics): at x = 0 without
intercepts all K pieces tie. Pieces are computed in fp32 from the loaded values, identically
in forward and backward, so the backward finds exactly the forward's maxima.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from ..ops._checks import check_dynamic_relu
from ._common import (INTERPRETED, cast, check_device_and_dtype, empty_feature_map,
                      feature_map_strides, launchable, on_device, opaque_under_interpreter, pow2,
                      target_programs)

# Elements of the [BLOCK_C, BLOCK_K, BLOCK_P] block one program holds (4 warps: 32 a thread
# in the forward); the backward holds several such blocks at once, so half as many.
BLOCK_ELEMENTS = 4096
BACKWARD_BLOCK_ELEMENTS = 2048


@triton.jit
def _load_pieces(slope_ptr, intercept_ptr, b, c, c_ok, K, ss_b, ss_c, ss_k, is_b, is_c, is_k,
                 HAS_INTERCEPT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """(slope, intercept) [BLOCK_C, BLOCK_K] of image b in fp32; intercept = 0 without one and
    -inf for the padding pieces k >= K, so that they never win the max."""
    k = tl.arange(0, BLOCK_K)
    ck_ok = c_ok[:, None] & (k < K)[None, :]
    slope = tl.load(slope_ptr + b * ss_b + c[:, None] * ss_c + k[None, :] * ss_k,
                    mask=ck_ok, other=0.0).to(tl.float32)
    if HAS_INTERCEPT:
        intercept = tl.load(intercept_ptr + b * is_b + c[:, None] * is_c + k[None, :] * is_k,
                            mask=ck_ok, other=0.0).to(tl.float32)
    else:
        intercept = tl.zeros([BLOCK_C, BLOCK_K], tl.float32)
    intercept = tl.where((k < K)[None, :], intercept, float("-inf"))
    return slope, intercept


@triton.jit
def _dynamic_relu_fwd_kernel(
        x_ptr, slope_ptr, intercept_ptr, y_ptr, C, HW, K,
        xs_b, xs_c, xs_p, ys_b, ys_c, ys_p, ss_b, ss_c, ss_k, is_b, is_c, is_k,
        HAS_INTERCEPT: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """y[b,c,p] = max_k (slope[b,c,k] * x[b,c,p] + intercept[b,c,k]); grid (p tiles, c tiles, B)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    c_ok = c < C
    p_ok = p < HW
    p64 = p.to(tl.int64)  # 64-bit offsets: a channels_last image may exceed 2^31 elements
    cp_ok = c_ok[:, None] & p_ok[None, :]
    x = tl.load(x_ptr + b * xs_b + c[:, None] * xs_c + p64[None, :] * xs_p, mask=cp_ok,
                other=0.0).to(tl.float32)
    slope, intercept = _load_pieces(slope_ptr, intercept_ptr, b, c, c_ok, K, ss_b, ss_c, ss_k,
                                    is_b, is_c, is_k, HAS_INTERCEPT, BLOCK_C, BLOCK_K)
    pieces = slope[:, :, None] * x[:, None, :] + intercept[:, :, None]
    y = tl.max(pieces, axis=1)
    tl.store(y_ptr + b * ys_b + c[:, None] * ys_c + p64[None, :] * ys_p,
             cast(y, y_ptr.dtype.element_ty, INTERPRET), mask=cp_ok)


@triton.jit
def _dynamic_relu_bwd_kernel(
        grad_y_ptr, x_ptr, slope_ptr, intercept_ptr, grad_x_ptr, part_slope_ptr,
        part_intercept_ptr, B, C, HW, K, positions_per_split,
        gs_b, gs_c, gs_p, xs_b, xs_c, xs_p, os_b, os_c, os_p, ss_b, ss_c, ss_k, is_b, is_c, is_k,
        HAS_INTERCEPT: tl.constexpr, INTERPRET: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr):
    """With w[b,c,k,p] = [piece k is a max] / (number of maxima) * grad_y[b,c,p]:
    grad_x[b,c,p] = sum_k w * slope[b,c,k];  grad_slope[b,c,k] = sum_p w * x[b,c,p];
    grad_intercept[b,c,k] = sum_p w. Grid (splits, c tiles, B); the sums over this split's
    positions go to part_*[split, b, c, k] (fp32)."""
    split = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    c_ok = c < C
    slope, intercept = _load_pieces(slope_ptr, intercept_ptr, b, c, c_ok, K, ss_b, ss_c, ss_k,
                                    is_b, is_c, is_k, HAS_INTERCEPT, BLOCK_C, BLOCK_K)
    acc_slope = tl.zeros([BLOCK_C, BLOCK_K], tl.float32)
    acc_intercept = tl.zeros([BLOCK_C, BLOCK_K], tl.float32)
    p_begin = split * positions_per_split
    p_end = tl.minimum(p_begin + positions_per_split, HW)
    for p_start in range(p_begin, p_end, BLOCK_P):
        p = p_start + tl.arange(0, BLOCK_P)
        p64 = p.to(tl.int64)
        cp_ok = c_ok[:, None] & (p < p_end)[None, :]
        x = tl.load(x_ptr + b * xs_b + c[:, None] * xs_c + p64[None, :] * xs_p, mask=cp_ok,
                    other=0.0).to(tl.float32)
        gy = tl.load(grad_y_ptr + b * gs_b + c[:, None] * gs_c + p64[None, :] * gs_p,
                     mask=cp_ok, other=0.0).to(tl.float32)
        pieces = slope[:, :, None] * x[:, None, :] + intercept[:, :, None]
        is_max = pieces == tl.max(pieces, axis=1)[:, None, :]
        ties = tl.sum(is_max.to(tl.float32), axis=1)  # >= 1: the max is one of the pieces
        w = tl.where(is_max, (gy / ties)[:, None, :], 0.0)  # masked positions: grad_y = 0
        grad_x = tl.sum(w * slope[:, :, None], axis=1)
        tl.store(grad_x_ptr + b * os_b + c[:, None] * os_c + p64[None, :] * os_p,
                 cast(grad_x, grad_x_ptr.dtype.element_ty, INTERPRET), mask=cp_ok)
        acc_slope += tl.sum(w * x[:, None, :], axis=2)
        acc_intercept += tl.sum(w, axis=2)
    k = tl.arange(0, BLOCK_K)
    part = ((split * B + b) * C + c[:, None]) * K + k[None, :]
    ck_ok = c_ok[:, None] & (k < K)[None, :]
    tl.store(part_slope_ptr + part, acc_slope, mask=ck_ok)
    tl.store(part_intercept_ptr + part, acc_intercept, mask=ck_ok)


def _tiles(C: int, HW: int, K: int, channels_fastest: bool,
           block_elements: int) -> Tuple[int, int, int]:
    """(BLOCK_C, BLOCK_K, BLOCK_P): the tile runs along the dimension contiguous in memory
    (positions in NCHW, channels in channels_last) for coalesced loads."""
    block_k = pow2(K)
    budget = max(64, block_elements // block_k)
    if channels_fastest:
        block_c = pow2(C, hi=min(128, budget))
        return block_c, block_k, pow2(HW, hi=max(1, budget // block_c))
    block_p = pow2(HW, hi=min(1024, budget))
    return pow2(C, hi=max(1, budget // block_p)), block_k, block_p


def _strides3(t: Optional[Tensor], like: Tensor) -> Tuple[int, int, int]:
    return tuple((t if t is not None else like).stride())


@triton_op("mf_kernels::triton_dynamic_relu", mutates_args=())
def _dynamic_relu_op(x: Tensor, slope: Tensor, intercept: Optional[Tensor]) -> Tensor:
    y = empty_feature_map(x)
    B, C, H, W = x.shape
    K = slope.shape[2]
    if y.numel() == 0 or not launchable(x):
        return y
    x, xs = feature_map_strides(x)
    _, ys = feature_map_strides(y)
    block_c, block_k, block_p = _tiles(C, H * W, K, xs[1] == 1, BLOCK_ELEMENTS)
    grid = (triton.cdiv(H * W, block_p), triton.cdiv(C, block_c), B)
    with on_device(x):
        wrap_triton(_dynamic_relu_fwd_kernel)[grid](
            x, slope, intercept if intercept is not None else slope, y, C, H * W, K,
            *xs, *ys, *slope.stride(), *_strides3(intercept, slope),
            HAS_INTERCEPT=intercept is not None, INTERPRET=INTERPRETED, BLOCK_C=block_c,
            BLOCK_K=block_k, BLOCK_P=block_p, num_warps=4)
    return y


@triton_op("mf_kernels::triton_dynamic_relu_backward", mutates_args=())
def _dynamic_relu_backward_op(grad_y: Tensor, x: Tensor, slope: Tensor,
                              intercept: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    grad_x = empty_feature_map(x)
    B, C, H, W = x.shape
    K = slope.shape[2]
    HW = H * W
    if grad_x.numel() == 0 or not launchable(x):
        # Sums over no position are zero; fake tensors only need the shapes.
        zeros = torch.zeros(slope.shape, dtype=slope.dtype, device=slope.device)
        return grad_x, zeros, zeros.clone()
    x, xs = feature_map_strides(x)
    grad_y, gs = feature_map_strides(grad_y)
    _, os_ = feature_map_strides(grad_x)
    block_c, block_k, block_p = _tiles(C, HW, K, xs[1] == 1, BACKWARD_BLOCK_ELEMENTS)
    c_tiles = triton.cdiv(C, block_c)
    p_tiles = triton.cdiv(HW, block_p)
    # Enough splits of the positions to fill the device, each a whole number of tiles.
    splits = max(1, min(p_tiles, triton.cdiv(target_programs(x.device), B * c_tiles)))
    positions_per_split = triton.cdiv(p_tiles, splits) * block_p
    splits = triton.cdiv(HW, positions_per_split)
    part_slope = torch.empty((splits, B, C, K), dtype=torch.float32, device=x.device)
    part_intercept = torch.empty_like(part_slope)
    with on_device(x):
        wrap_triton(_dynamic_relu_bwd_kernel)[(splits, c_tiles, B)](
            grad_y, x, slope, intercept if intercept is not None else slope, grad_x,
            part_slope, part_intercept, B, C, HW, K, positions_per_split, *gs, *xs, *os_,
            *slope.stride(), *_strides3(intercept, slope), HAS_INTERCEPT=intercept is not None,
            INTERPRET=INTERPRETED, BLOCK_C=block_c, BLOCK_K=block_k, BLOCK_P=block_p,
            num_warps=4)
    return (grad_x, part_slope.sum(0).to(slope.dtype), part_intercept.sum(0).to(slope.dtype))


def _setup_context(ctx, inputs, output):
    x, slope, intercept = inputs
    ctx.has_intercept = intercept is not None
    ctx.save_for_backward(x, slope, intercept)


def _backward(ctx, grad_y):
    x, slope, intercept = ctx.saved_tensors
    grad_x, grad_slope, grad_intercept = torch.ops.mf_kernels.triton_dynamic_relu_backward(
        grad_y, x, slope, intercept)
    needs = ctx.needs_input_grad
    return (grad_x if needs[0] else None, grad_slope if needs[1] else None,
            grad_intercept if ctx.has_intercept and needs[2] else None)


_dynamic_relu_op.register_autograd(_backward, setup_context=_setup_context)
opaque_under_interpreter(_dynamic_relu_op)
opaque_under_interpreter(_dynamic_relu_backward_op)


def dynamic_relu(x: Tensor, slope: Tensor, intercept: Optional[Tensor] = None) -> Tensor:
    """Dynamic ReLU on Triton; the signature and semantics of ``mf_kernels.ops.dynamic_relu``.

    x [B, C, H, W] (fp32, fp16 or bf16), slope and optional intercept [B, C, K]. Returns y in
    x's layout (channels_last when x is channels_last and not contiguous).
    """
    check_dynamic_relu(x, slope, intercept)
    check_device_and_dtype(x)
    return torch.ops.mf_kernels.triton_dynamic_relu(x, slope, intercept)
