"""Argument checks for the Python entry points and the fake implementations.

They mirror csrc/checks.h, so every backend (and torch.compile's fake tensors) rejects bad
input with the same message: the argument's name, what was expected, and what came.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_rank(t: Tensor, name: str, rank: int, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a Tensor {layout}, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-D tensor {layout}, got shape {tuple(t.shape)}")


def check_float(t: Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor (float32, float64, float16 or "
                        f"bfloat16), got {t.dtype}")


def check_same(ref: Tensor, t: Tensor, ref_name: str, name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (that of {ref_name}), got {t.device}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (that of {ref_name}), got {t.dtype}")


def check_heads(heads: int, channels: int, x_name: str = "x") -> None:
    if not isinstance(heads, int) or isinstance(heads, bool):
        raise TypeError(f"heads: expected an int, got {type(heads).__name__}")
    if heads <= 0:
        raise ValueError(f"heads: expected a positive number of heads, got {heads}")
    if channels % heads != 0:
        raise ValueError(f"heads: {x_name} has {channels} channels, which is not divisible by "
                         f"heads={heads}")


def check_tokens(x: Tensor, t: Tensor, name: str) -> None:
    """A [B, M, C] token tensor that must agree with x [B, C, H, W] in B and C."""
    check_rank(t, name, 3, "[B, M, C]")
    check_same(x, t, "x", name)
    if t.shape[0] != x.shape[0] or t.shape[2] != x.shape[1]:
        raise ValueError(f"{name}: expected shape [B, M, C] = [{x.shape[0]}, M, {x.shape[1]}] to "
                         f"match x {tuple(x.shape)}, got {tuple(t.shape)}")


def output_memory_format(x: Tensor) -> torch.memory_format:
    """The output layout rule of every kernel (csrc/checks.h, output_format)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def check_dynamic_relu(x: Tensor, slope: Tensor, intercept: Optional[Tensor]) -> None:
    check_rank(x, "x", 4, "[B, C, H, W]")
    check_float(x, "x")
    check_rank(slope, "slope", 3, "[B, C, K]")
    check_same(x, slope, "x", "slope")
    if slope.shape[0] != x.shape[0] or slope.shape[1] != x.shape[1]:
        raise ValueError(f"slope: expected shape [B, C, K] = [{x.shape[0]}, {x.shape[1]}, K] to "
                         f"match x {tuple(x.shape)}, got {tuple(slope.shape)}")
    if slope.shape[2] < 1:
        raise ValueError("slope: expected at least one piece (K >= 1), got K = 0")
    if intercept is not None:
        check_rank(intercept, "intercept", 3, "[B, C, K]")
        check_same(x, intercept, "x", "intercept")
        if intercept.shape != slope.shape:
            raise ValueError(f"intercept: expected the shape of slope {tuple(slope.shape)}, got "
                             f"{tuple(intercept.shape)}")


def check_attention_map(x: Tensor, heads: int) -> None:
    """The feature map x [B, C, H, W] and the head count of either attention op."""
    check_rank(x, "x", 4, "[B, C, H, W]")
    check_float(x, "x")
    check_heads(heads, x.shape[1], "x")


def check_m2f_attention(x: Tensor, q: Tensor, heads: int) -> None:
    check_attention_map(x, heads)
    check_tokens(x, q, "q")


def check_f2m_attention(x: Tensor, k: Tensor, v: Tensor, heads: int) -> None:
    check_attention_map(x, heads)
    check_tokens(x, k, "k")
    check_tokens(x, v, "v")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
