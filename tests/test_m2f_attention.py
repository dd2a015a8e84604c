"""m2f_attention: the C++ CPU kernels (forward and backward) against mobileformer.functional.

Also: gradcheck, opcheck, torch.compile (of both attention ops together), the bad-input
messages, empty inputs, thread counts, and the baseline (non-AVX2) build of the inner kernels.
"""
import os
import subprocess
import sys

import pytest
import torch

import mf_kernels
from mf_kernels import ops
from mf_kernels._extension import LOADED
from mobileformer import functional as reference
from numerics import (LAYOUTS, LOW_PRECISION, assert_tight, assert_within_2x, grads, leaf,
                      make_feature_map)

pytestmark = pytest.mark.skipif(not LOADED, reason="the C++ extension is not built")

# (B, C, H, W, M, heads): odd maps, one token, a detection head's 100 queries, 1/2/4 heads,
# 20 channels per head, and maps spanning several tiles with a partial last one.
SHAPES = [
    (2, 16, 7, 9, 6, 2),
    (1, 40, 7, 9, 6, 2),
    (2, 24, 5, 6, 1, 4),
    (1, 32, 8, 8, 100, 4),
    (3, 12, 4, 5, 6, 1),
    (1, 40, 23, 29, 6, 2),
]
# The bridges of MF-294M: (C, H) of every Mobile->Former, 2 heads, 6 tokens.
MF294M = [(16, 112), (24, 56), (48, 28), (96, 14), (128, 14), (192, 7)]


def tokens(B, M, C, dtype, scale=1.0):
    return (torch.randn(B, M, C) * scale).to(dtype)


def kernel(x, q, heads, grad_out):
    """Output and (grad_x, grad_q) from the C++ kernels, through the entry point."""
    xl, ql = leaf(x), leaf(q)
    with mf_kernels.use_backend("cpu"):
        out = ops.m2f_attention(xl, ql, heads)
    return out, grads(out, (xl, ql), grad_out)


def expected(x, q, heads, grad_out, dtype=None):
    """The same from the reference, in `dtype` (default: the inputs' own)."""
    if dtype is not None:
        x, q, grad_out = x.to(dtype), q.to(dtype), grad_out.to(dtype)
    xl, ql = leaf(x), leaf(q)
    out = reference.m2f_attention(xl, ql, heads)
    return out, grads(out, (xl, ql), grad_out)


def compare_tight(x, q, heads):
    grad_out = torch.randn(q.shape, dtype=q.dtype)
    out, (gx, gq) = kernel(x, q, heads, grad_out)
    ref, (rgx, rgq) = expected(x, q, heads, grad_out)
    assert_tight(out, ref, "out")
    assert_tight(gx, rgx, "grad_x")
    assert_tight(gq, rgq, "grad_q")
    return out, gx


def compare_low(x, q, heads):
    grad_out = torch.randn(q.shape).to(q.dtype)
    out, (gx, gq) = kernel(x, q, heads, grad_out)
    low, (lgx, lgq) = expected(x, q, heads, grad_out)
    ref, (rgx, rgq) = expected(x, q, heads, grad_out, torch.float32)
    for name, a, lo, hi in (("out", out, low, ref), ("grad_x", gx, lgx, rgx),
                            ("grad_q", gq, lgq, rgq)):
        assert torch.isfinite(a).all(), f"{name}: not finite"
        assert_within_2x(a, lo, hi, name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, layout):
    B, C, H, W, M, heads = shape
    x = make_feature_map((B, C, H, W), dtype, layout)
    out, gx = compare_tight(x, tokens(B, M, C, dtype), heads)
    assert out.is_contiguous()
    channels_last = layout == "channels_last"
    assert gx.is_contiguous(memory_format=torch.channels_last if channels_last
                            else torch.contiguous_format)


def with_odd_size1_strides(t):
    """The same tensor, with nonsense strides on its size-1 dimensions."""
    return t.as_strided(t.shape, [91 if n == 1 else st for n, st in zip(t.shape, t.stride())])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 8, 1, 5), (2, 8, 5, 1), (1, 8, 3, 4)], ids=str)
def test_strides_of_size1_dims_are_ignored(shape, layout):
    # Still contiguous in its layout: the kernels must step through positions by the layout's
    # strides, not by stride(3).
    x = with_odd_size1_strides(make_feature_map(shape, torch.float32, layout))
    compare_tight(x, tokens(shape[0], 3, shape[1], torch.float32), 2)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[3], SHAPES[5]], ids=str)
def test_low_precision_within_2x(shape, dtype, layout):
    B, C, H, W, M, heads = shape
    compare_low(make_feature_map((B, C, H, W), dtype, layout), tokens(B, M, C, dtype), heads)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_large_logits_stay_finite(dtype):
    # Logits in the hundreds: exp overflows fp16 without the max subtraction in fp32.
    x = make_feature_map((2, 32, 9, 11), dtype, "contiguous", scale=30.0)
    compare_low(x, tokens(2, 6, 32, dtype, scale=3.0), 2)


@pytest.mark.parametrize("channels,size", MF294M, ids=str)
def test_mf294m_bridges(channels, size):
    x = make_feature_map((1, channels, size, size), torch.float32)
    compare_tight(x, tokens(1, 6, channels, torch.float32), 2)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts(threads):
    # Batch 1 with 2 heads: more threads than (b, head) slices splits the positions in chunks
    # whose partial softmax states are merged; one thread never splits.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = make_feature_map((1, 24, 41, 37), torch.float32, "channels_last")
        compare_tight(x, tokens(1, 6, 24, torch.float32), 2)
    finally:
        torch.set_num_threads(previous)


def test_gradcheck():
    x = make_feature_map((2, 8, 3, 5), torch.float64, "channels_last").requires_grad_()
    q = tokens(2, 3, 8, torch.float64).requires_grad_()
    with mf_kernels.use_backend("cpu"):
        assert torch.autograd.gradcheck(lambda a, b: ops.m2f_attention(a, b, 2), (x, q))


def opcheck_samples():
    x = make_feature_map((2, 8, 5, 3), torch.float32)
    q = tokens(2, 4, 8, torch.float32)
    xcl = make_feature_map((1, 12, 4, 4), torch.float32, "channels_last")
    return [
        (x, q, 2),
        (x.clone().requires_grad_(), q, 2),
        (x, q.clone().requires_grad_(), 4),
        (xcl.clone().requires_grad_(), tokens(1, 3, 12, torch.float32).requires_grad_(), 3),
        (make_feature_map((1, 8, 6, 6), torch.float64, "sliced"), tokens(1, 1, 8, torch.float64),
         1),
    ]


@pytest.mark.parametrize("sample", range(5))
def test_opcheck(sample):
    torch.library.opcheck(torch.ops.mf_kernels.m2f_attention.default, opcheck_samples()[sample])


def test_opcheck_backward():
    x = make_feature_map((2, 8, 5, 3), torch.float32, "channels_last")
    q = tokens(2, 4, 8, torch.float32)
    out = torch.ops.mf_kernels.m2f_attention(x, q, 2)
    torch.library.opcheck(torch.ops.mf_kernels.m2f_attention_backward.default,
                          (torch.randn_like(out), x, q, out, 2))


def test_compile_fullgraph_both_ops():
    def block(x, q, k, v):
        o = ops.m2f_attention(x, q, 2)
        y = ops.f2m_attention(x, k + o, v, 2)
        return y.square().sum() + o.square().sum()

    inputs = [make_feature_map((2, 16, 5, 7), torch.float32)] + [tokens(2, 6, 16, torch.float32)
                                                                 for _ in range(3)]
    with mf_kernels.use_backend("cpu"):
        eager_in = [leaf(t) for t in inputs]
        eager = block(*eager_in)
        eager_grads = torch.autograd.grad(eager, eager_in)
        torch._dynamo.reset()
        compiled_in = [leaf(t) for t in inputs]
        result = torch.compile(block, fullgraph=True)(*compiled_in)
        compiled_grads = torch.autograd.grad(result, compiled_in)
    assert_tight(result, eager, "compiled output")
    for name, a, b in zip("xqkv", compiled_grads, eager_grads):
        assert_tight(a, b, f"compiled grad_{name}")


def bad_inputs():
    x = torch.randn(2, 8, 3, 3)
    q = torch.randn(2, 4, 8)
    return [  # (x, q, heads), exception, fragment of the message
        ((x[0], q, 2), ValueError, "x: expected a 4-D tensor"),
        ((x.int(), q.int(), 2), TypeError, "x: expected a floating-point tensor"),
        ((x, q, 0), ValueError, "heads: expected a positive number"),
        ((x, q, -2), ValueError, "heads: expected a positive number"),
        ((x, q, 3), ValueError, "heads: x has 8 channels"),
        ((x, q[0], 2), ValueError, "q: expected a 3-D tensor"),
        ((x, torch.randn(3, 4, 8), 2), ValueError, "q: expected shape [B, M, C]"),
        ((x, torch.randn(2, 4, 6), 2), ValueError, "q: expected shape [B, M, C]"),
        ((x, q.double(), 2), TypeError, "q: expected dtype"),
        ((x, q.to("meta"), 2), ValueError, "q: expected device"),
    ]


@pytest.mark.parametrize("case", range(10))
@pytest.mark.parametrize("route", ["entry_point", "torch_ops"])
def test_bad_input_raises(case, route):
    args, error, message = bad_inputs()[case]
    fn = ops.m2f_attention if route == "entry_point" else torch.ops.mf_kernels.m2f_attention
    with mf_kernels.use_backend("cpu"), pytest.raises(error, match=message.replace("[", r"\[")):
        fn(*args)


def test_bad_backward_input_raises():
    x, q = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 8)
    out = torch.ops.mf_kernels.m2f_attention(x, q, 2)
    bwd = torch.ops.mf_kernels.m2f_attention_backward
    with pytest.raises(ValueError, match="grad_out: expected the shape of q"):
        bwd(out[:, :2], x, q, out, 2)
    with pytest.raises(TypeError, match="grad_out: expected dtype"):
        bwd(out.double(), x, q, out, 2)
    with pytest.raises(ValueError, match="out: expected the shape of q"):
        bwd(out, x, q, out[:1], 2)
    with pytest.raises(ValueError, match="heads: x has 8 channels"):
        bwd(out, x, q, out, 5)


@pytest.mark.parametrize("shape", [(0, 8, 3, 3, 4), (2, 8, 3, 3, 0), (2, 8, 0, 3, 4),
                                   (2, 8, 3, 0, 0)], ids=str)
def test_empty(shape):
    B, C, H, W, M = shape
    x, q = torch.randn(B, C, H, W), torch.randn(B, M, C)
    out, gx = compare_tight(x, q, 2)
    assert out.shape == (B, M, C) and gx.shape == x.shape


def test_baseline_instruction_set():
    # ATEN_CPU_CAPABILITY=default selects the SSE2/NEON build of the inner kernels; everything
    # else in these files runs the AVX2 build (on a machine that has AVX2). Rerun the numerical
    # tests of both attention ops on the baseline build, in a child process (the choice is made
    # once per process).
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        pytest.skip("this process already runs the baseline build")
    tests = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(tests, f"test_{op}_attention.py") for op in ("m2f", "f2m")]
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files, "-k",
               "matches_reference or low_precision or large_logits or thread_counts"]
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run(command, cwd=os.path.dirname(tests), env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
