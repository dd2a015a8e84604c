"""The C++ CPU kernels of dynamic_relu, path by path (csrc/cpu/dynamic_relu*.{cpp,h}).

y[b,c,p] = max_k (slope[b,c,k] x[b,c,p] + intercept[b,c,k]); the backward op returns grad_x,
grad_slope and grad_intercept. The op suite (test_dynamic_relu.py) checks the op against the
reference; this file aims at what only these kernels have: vector loops whose last vector
overlaps the one before (every remainder of C and H*W modulo the vector width, and maps
narrower than one vector), the per-specialisation code (K = 2 without intercepts, K = 2 and 3
with, any other K), the fp16/bf16 conversions written with integer vector arithmetic (every
fp16 and bf16 value), the split of channels_last work into (sample, row chunk, channel group)
tasks (results bitwise the same under any thread count), and both instruction-set builds.
"""
import os
import subprocess
import sys

import pytest
import torch

from mobileformer import functional as reference
from numerics import assert_tight, assert_within_2x, grads, leaf, make_feature_map
from op_backends import threads

op = torch.ops.mf_kernels.dynamic_relu
backward_op = torch.ops.mf_kernels.dynamic_relu_backward

NAMES = ("y", "grad_x", "grad_slope", "grad_intercept")
# Specialisations: the authors' form, K = 2 and K = 3 with intercepts, run-time K (1 and 5).
PIECES = [(2, False), (2, True), (3, True), (1, True), (5, False)]
# (C, H, W): C and H*W around the vector widths (4 and 8 fp32 lanes, 2 and 4 fp64 lanes),
# below one vector, 1x1 maps and a single channel.
TAIL_SHAPES = [(1, 1, 1), (1, 3, 5), (3, 1, 1), (2, 1, 3), (5, 2, 2), (7, 3, 3), (8, 1, 8),
               (9, 3, 3), (12, 1, 5), (15, 4, 4), (16, 1, 1), (17, 2, 9), (33, 5, 7)]


def run(fn, x, slope, intercept, grad_y, dtype=None):
    """Output and the gradients of every input, computed in ``dtype`` (default: x's)."""
    inputs = [t if t is None or dtype is None else t.to(dtype) for t in (x, slope, intercept)]
    x, slope = leaf(inputs[0]), leaf(inputs[1])
    intercept = None if inputs[2] is None else leaf(inputs[2])
    y = fn(x, slope, intercept)
    wrt = [x, slope] + ([intercept] if intercept is not None else [])
    g = grad_y if dtype is None else grad_y.to(dtype)
    return [y.detach()] + grads(y, wrt, g)


def check(x, slope, intercept, grad_y, where):
    ours = run(op, x, slope, intercept, grad_y)
    if x.dtype in (torch.float32, torch.float64):
        expected = run(reference.dynamic_relu, x, slope, intercept, grad_y)
        for name, a, e in zip(NAMES, ours, expected):
            assert_tight(a, e, f"{name} {where}")
        return
    exact = run(reference.dynamic_relu, x, slope, intercept, grad_y, torch.float32)
    low = run(reference.dynamic_relu, x, slope, intercept, grad_y)
    for name, a, r, e in zip(NAMES, ours, low, exact):
        assert_within_2x(a, r, e, f"{name} {where}")


def inputs(shape, K, with_intercept, dtype, layout):
    B, C = shape[:2]
    x = make_feature_map(shape, dtype, layout)
    slope = torch.randn(B, C, K).to(dtype)
    intercept = (0.5 * torch.randn(B, C, K)).to(dtype) if with_intercept else None
    return x, slope, intercept, torch.randn(shape).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("pieces", PIECES, ids=lambda p: f"K{p[0]}{'-intercept' * p[1]}")
def test_every_vector_remainder(dtype, layout, pieces):
    for C, H, W in TAIL_SHAPES:
        check(*inputs((2, C, H, W), *pieces, dtype, layout), f"at C={C}, {H}x{W}")


def all_values(dtype):
    """Every fp16 or bf16 bit pattern (NaNs, infinities, subnormals, -0 included) as a
    [2, 8, 64, 64] map."""
    return torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16).view(dtype) \
        .reshape(2, 8, 64, 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_half_and_bfloat16_value(dtype, layout):
    """The kernels convert fp16/bf16 to fp32 and back with integer vector code. Without an
    intercept, a piece s*x is exact in fp32 (11- or 8-bit significands), so y rounds once in
    the kernel and once in the reference: bitwise equal for every input value, the slopes
    chosen so that the products round in every direction. grad_x away
    from ties (x = 0) is g * s, one rounding too."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = all_values(dtype).contiguous(memory_format=fmt)
    # (1, 1/2) gives x back for x >= 0 and halves it (subnormals round) below.
    factors = torch.tensor([[1.0, 0.5], [0.1, -3.7], [1.0 + 2 ** -9, -0.3], [-1.5, 65504 / 3]])
    slope = factors.repeat(2, 1).to(dtype).expand(2, 8, 2).contiguous()
    grad_y = torch.randn(x.shape).to(dtype)
    y, grad_x, _ = run(op, x, slope, None, grad_y)
    y_ref, grad_x_ref, _ = run(reference.dynamic_relu, x, slope, None, grad_y)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0, equal_nan=True)
    away = x != 0
    torch.testing.assert_close(grad_x[away], grad_x_ref[away], rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_and_inf_gradients_as_in_the_reference(dtype, layout):
    """NaN in x: y and every gradient it touches are NaN (no piece attains a NaN max: the
    reference's g / 0 * 0). x = +-inf: the losing piece's 0 * inf is NaN in its slope gradient,
    as in the reference's autograd."""
    x, slope, intercept, grad_y = inputs((2, 9, 3, 3), 2, True, dtype, layout)
    x = x.clone(memory_format=torch.preserve_format)
    x[0, 1, 0, 0], x[0, 2, 1, 1], x[1, 3, 2, 2] = float("nan"), float("inf"), -float("inf")
    ours = run(op, x, slope, intercept, grad_y)
    expected = run(reference.dynamic_relu, x, slope, intercept, grad_y)
    for name, a, e in zip(NAMES, ours, expected):
        torch.testing.assert_close(a, e, equal_nan=True, msg=name)
        assert torch.equal(a.isnan(), e.isnan()), f"{name}: NaN in other places"


# channels_last shapes that split into several row chunks (56x56 = 25 chunks of 128 rows) or
# several channel groups (batch 1 at 7x7 with many channels, groups of 128 and a last one
# with a remainder), and NCHW shapes split over planes.
SPLITS = [((1, 1152, 7, 7), "channels_last"), ((1, 301, 7, 7), "channels_last"),
          ((2, 24, 56, 56), "channels_last"), ((3, 40, 20, 20), "contiguous")]


@pytest.mark.parametrize("shape,layout", SPLITS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_results_do_not_depend_on_the_thread_count(shape, layout, dtype):
    x, slope, intercept, grad_y = inputs(shape, 3, True, dtype, layout)
    results = []
    for n in (1, 2, 3):
        with threads(n):
            results.append(backward_op(grad_y, x, slope, intercept) + (op(x, slope, intercept),))
    check(x, slope, intercept, grad_y, f"at {shape}")
    for other in results[1:]:
        for name, a, b in zip(("grad_x", "grad_slope", "grad_intercept", "y"), results[0], other):
            assert torch.equal(a, b), f"{name} differs between thread counts"


def test_sliced_and_odd_strided_inputs_are_copied_first():
    """Neither NCHW nor channels_last: grad_y and x in different layouts."""
    x, slope, intercept, _ = inputs((2, 9, 5, 7), 2, True, torch.float32, "sliced")
    grad_y = make_feature_map((2, 9, 5, 7), torch.float32, "channels_last")
    check(x, slope, intercept, grad_y, "sliced x, channels_last grad_y")


@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (3, 4, 0, 0), (2, 0, 3, 3)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_empty_maps_give_zero_coefficient_gradients(shape, layout):
    x, slope, intercept, grad_y = inputs(shape, 3, True, torch.float32, layout)
    grad_x, grad_slope, grad_intercept = backward_op(grad_y, x, slope, intercept)
    assert grad_x.shape == shape and grad_slope.shape == slope.shape
    assert not grad_slope.any() and not grad_intercept.any()


def test_baseline_instruction_set():
    """Everything above runs the AVX2 build on an AVX2 machine; ATEN_CPU_CAPABILITY=default
    selects the SSE2/NEON build (chosen once per process): rerun this file in a child."""
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        pytest.skip("this process already runs the baseline build")
    tests = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
               os.path.abspath(__file__), "-k", "not baseline_instruction_set"]
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run(command, cwd=os.path.dirname(tests), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
