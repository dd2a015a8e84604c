"""Shared numerics for the tests: the tolerances, the low-precision 2x rule and the input
layouts live in :mod:`mf_kernels.checking.numerics` (one home, also used by
``mf-kernels check``); this module re-exports them under the names the tests import, and adds
the comparison of a function's output and gradients with the reference's
(``check_against_reference``) that the op suites share.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mf_kernels.checking.numerics import *  # noqa: F401,F403
from mf_kernels.checking.numerics import (LOW_PRECISION, assert_tight, assert_within_2x, grads,
                                          leaf)
from mf_kernels.checking.numerics import __all__  # noqa: F401


def high_precision(dtype: torch.dtype) -> torch.dtype:
    """The dtype a result is checked against: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def outputs_and_grads(fn, inputs: Sequence, grad_output=None, dtype: torch.dtype = None,
                      seed: int = 1):
    """([output, gradient of every tensor input], grad_output) of ``fn(*inputs)``, with the
    inputs and grad_output cast to ``dtype`` (default: as they are); None and ints pass
    through. Without ``grad_output`` a random one (seeded) is drawn."""
    cast = (lambda t: t.detach()) if dtype is None else (lambda t: t.detach().to(dtype))
    leaves = [leaf(cast(t)) if isinstance(t, Tensor) else t for t in inputs]
    out = fn(*leaves)
    if grad_output is None:
        generator = torch.Generator().manual_seed(seed)
        grad_output = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
    tensors = [t for t in leaves if isinstance(t, Tensor)]
    result = [out.detach()] + [g.detach() for g in grads(out, tensors, cast(grad_output))]
    return result, grad_output


def check_against_reference(fn, reference_fn, inputs: Sequence, names: Sequence[str],
                            layout_of: Tensor = None, seed: int = 1) -> list:
    """``fn`` against ``reference_fn`` (mobileformer.functional) on the same inputs: the output
    and the gradient of every tensor input for a random grad_output. fp32/fp64: tight against
    the reference in that dtype; fp16/bf16: the 2x rule against the reference in fp32 (and its
    own error in the low dtype). ``layout_of``: the output must follow the layout rule of that
    map. Returns [output, grads...] of ``fn``."""
    dtype = next(t for t in inputs if isinstance(t, Tensor)).dtype
    got, grad_output = outputs_and_grads(fn, inputs, seed=seed)
    if layout_of is not None:
        fmt = output_format(layout_of)
        assert got[0].is_contiguous(memory_format=fmt), \
            f"{names[0]}: strides {got[0].stride()}, expected {fmt}"
    expected, _ = outputs_and_grads(reference_fn, inputs, grad_output)
    if dtype not in LOW_PRECISION:
        for actual, exp, name in zip(got, expected, names):
            assert_tight(actual, exp, name)
        return got
    high, _ = outputs_and_grads(reference_fn, inputs, grad_output, torch.float32)
    for actual, lo, hi, name in zip(got, expected, high, names):
        assert torch.isfinite(actual).all(), f"{name}: not finite"
        assert_within_2x(actual, lo, hi, name)
    return got


def output_format(x: Tensor) -> torch.memory_format:
    """The layout rule of every kernel: channels_last iff x is channels_last and not also
    contiguous (mf_kernels/ops/_checks.py, output_memory_format)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def with_odd_size1_strides(t: Tensor) -> Tensor:
    """The same tensor with nonsense strides on its size-1 dimensions: still contiguous in its
    layout, so kernels must step by the layout's strides, not by t.stride()."""
    return t.as_strided(t.shape, [91 if n == 1 else st for n, st in zip(t.shape, t.stride())])
