"""Shared plumbing of the Triton ops: input checks, layouts as strides, launch guards, tiles."""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensorMode

from ..ops._checks import check_float, output_memory_format

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when these modules are
# imported; reading it once here keeps this module consistent with the kernels.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# log2(e): the kernels run softmax on exp2, folding log2(e) into the score scale.
LOG2E = 1.4426950408889634

__all__ = ["INTERPRETED", "LOG2E", "cast", "check_device_and_dtype", "dot", "mixed_dot",
           "launchable", "feature_map_strides", "empty_feature_map", "on_device", "opaque_under_interpreter",
           "pow2", "softmax_scale", "target_programs"]


@triton.jit
def dot(a, b, INTERPRET: tl.constexpr):
    """a @ b accumulated in fp32: fp16/bf16 operands as they are (tensor cores; their products
    are exact in fp32), fp32 operands exactly ("ieee", never TF32). Every dimension must be at
    least 16. The interpreter computes bf16 dots wrongly, so there the operands go to fp32
    first (the same products)."""
    if INTERPRET:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def cast(x, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """x.to(dtype), rounding to nearest even as the GPU does. The interpreter truncates fp32 ->
    bf16 (and its rtne mode mishandles the carry), so there the bits are rounded first."""
    if INTERPRET and dtype == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        x = ((bits >> 16) << 16).to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def mixed_dot(a, b, INTERPRET: tl.constexpr):
    """a @ b where one operand is fp32 (probabilities, dS: computed values) and the other is
    the inputs' dtype. For fp16/bf16 inputs the fp32 operand is split into a high and a low
    part in that dtype, hi + lo carrying about 16 significant bits, and both go through the
    tensor cores: rounding it to fp16/bf16 alone (flash-attention's choice) costs about the
    reference's own low-precision error, which the 2x rule does not leave room for."""
    if a.dtype == b.dtype:
        return dot(a, b, INTERPRET)
    elif a.dtype == tl.float32:
        hi = cast(a, b.dtype, INTERPRET)
        lo = cast(a - hi.to(tl.float32), b.dtype, INTERPRET)
        return dot(hi, b, INTERPRET) + dot(lo, b, INTERPRET)
    else:
        hi = cast(b, a.dtype, INTERPRET)
        lo = cast(b - hi.to(tl.float32), a.dtype, INTERPRET)
        return dot(a, hi, INTERPRET) + dot(a, lo, INTERPRET)


def check_device_and_dtype(x: Tensor, name: str = "x") -> None:
    """Triton computes in fp32/fp16/bf16 on CUDA (or on the CPU through the interpreter)."""
    check_float(x, name)
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"{name}: the triton backend takes float32, float16 or bfloat16, got "
                        f"{x.dtype} (use the cpu, cuda or reference backend for float64)")
    if x.device.type == "cuda" or (x.device.type == "cpu" and INTERPRETED):
        return
    raise ValueError(f"{name}: the triton backend takes CUDA tensors (CPU tensors only under "
                     f"TRITON_INTERPRET=1), got a tensor on {x.device}")


def launchable(t: Tensor) -> bool:
    """False while fake tensors propagate shapes under the interpreter.

    Compiled Triton is traced by ``wrap_triton``; the interpreter cannot run on fake tensors,
    so there the op is opaque to torch.compile (see ``opaque_under_interpreter``) and its
    fake implementation only allocates the outputs.
    """
    return not (INTERPRETED and (isinstance(t, FakeTensor) or t.device.type == "meta"))


def on_device(t: Tensor):
    """Triton launches on the current CUDA device: make it t's (a no-op for CPU tensors)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def opaque_under_interpreter(op) -> None:
    """Under the interpreter keep ``op`` whole in torch.compile graphs instead of decomposing it
    into its kernels (which would need compiled Triton); on a GPU triton_op decomposes it."""
    if INTERPRETED:
        op.register_torch_dispatch(
            FunctionalTensorMode,
            lambda mode, func, types, args, kwargs: mode.__torch_dispatch__(func, types, args,
                                                                            kwargs))


def feature_map_strides(t: Tensor) -> Tuple[Tensor, Tuple[int, int, int]]:
    """``t`` [B, C, H, W] and its (batch, channel, position) strides, positions being h*W + w.

    Contiguous and channels_last maps are read in place; any other strides are copied to
    contiguous first. Strides come from the shape, not ``t.stride()``: size-1 dimensions may
    carry arbitrary strides in either format.
    """
    B, C, H, W = t.shape
    if not t.is_contiguous():
        if t.is_contiguous(memory_format=torch.channels_last):
            return t, (H * W * C, 1, C)
        t = t.contiguous()
    return t, (C * H * W, H * W, 1)


def empty_feature_map(x: Tensor) -> Tensor:
    """An output for input map ``x`` under the layout rule (``output_memory_format``)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x))


def softmax_scale(channels_per_head) -> float:
    """s = (C / heads)^-1/2 as a Python float: Triton passes it as an fp32 scalar. int()
    makes it concrete when torch.compile traces with symbolic shapes."""
    return float(int(channels_per_head)) ** -0.5


def pow2(n: int, lo: int = 1, hi: int = 1 << 30) -> int:
    """The next power of two of n, clamped to [lo, hi] (Triton blocks are powers of two)."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device) -> int:
    """How many programs fill the device: two per SM on a GPU (H100: 132 SMs); the interpreter
    runs programs one after the other, so a few suffice there."""
    if device.type == "cuda":
        return 2 * _sm_count(device.index if device.index is not None
                             else torch.cuda.current_device())
    return 4
