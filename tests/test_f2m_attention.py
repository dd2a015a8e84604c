"""f2m_attention: the C++ CPU kernels (forward and backward) against mobileformer.functional.

Also: gradcheck, opcheck, torch.compile, the bad-input messages, empty inputs and thread
counts. (The compile test of both attention ops together, and the baseline-instruction-set
run of both, are in test_m2f_attention.py.)
"""
import pytest
import torch

import mf_kernels
from mf_kernels import ops
from mf_kernels._extension import LOADED
from mobileformer import functional as reference
from numerics import (LAYOUTS, LOW_PRECISION, assert_tight, assert_within_2x, grads, leaf,
                      make_feature_map)

pytestmark = pytest.mark.skipif(not LOADED, reason="the C++ extension is not built")

# (B, C, H, W, M, heads): odd maps, one token, a detection head's 100 tokens, 1/2/4 heads,
# 20 channels per head, and maps spanning several tiles with a partial last one.
SHAPES = [
    (2, 16, 7, 9, 6, 2),
    (1, 40, 7, 9, 6, 2),
    (2, 24, 5, 6, 1, 4),
    (1, 32, 8, 8, 100, 4),
    (3, 12, 4, 5, 6, 1),
    (1, 40, 23, 29, 6, 2),
]
# The bridges of MF-294M: (C, H) of every Former->Mobile, 2 heads, 6 tokens.
MF294M = [(24, 56), (48, 28), (96, 14), (128, 14), (192, 7)]


def tokens(B, M, C, dtype, scale=1.0):
    return (torch.randn(B, M, C) * scale).to(dtype)


def kernel(x, k, v, heads, grad_y):
    """Output and (grad_x, grad_k, grad_v) from the C++ kernels, through the entry point."""
    leaves = [leaf(t) for t in (x, k, v)]
    with mf_kernels.use_backend("cpu"):
        y = ops.f2m_attention(*leaves, heads)
    return y, grads(y, leaves, grad_y)


def expected(x, k, v, heads, grad_y, dtype=None):
    """The same from the reference, in `dtype` (default: the inputs' own)."""
    if dtype is not None:
        x, k, v, grad_y = (t.to(dtype) for t in (x, k, v, grad_y))
    leaves = [leaf(t) for t in (x, k, v)]
    y = reference.f2m_attention(*leaves, heads)
    return y, grads(y, leaves, grad_y)


def compare_tight(x, k, v, heads):
    grad_y = torch.randn(x.shape, dtype=x.dtype)
    y, got = kernel(x, k, v, heads, grad_y)
    ref, want = expected(x, k, v, heads, grad_y)
    assert_tight(y, ref, "y")
    for name, a, b in zip(("grad_x", "grad_k", "grad_v"), got, want):
        assert_tight(a, b, name)
    return y, got[0]


def compare_low(x, k, v, heads):
    grad_y = torch.randn(x.shape).to(x.dtype)
    y, got = kernel(x, k, v, heads, grad_y)
    low_y, low = expected(x, k, v, heads, grad_y)
    ref_y, ref = expected(x, k, v, heads, grad_y, torch.float32)
    for name, a, lo, hi in zip(("y", "grad_x", "grad_k", "grad_v"), [y] + got, [low_y] + low,
                               [ref_y] + ref):
        assert torch.isfinite(a).all(), f"{name}: not finite"
        assert_within_2x(a, lo, hi, name)


def layout_of(t):
    return torch.channels_last if (not t.is_contiguous() and
                                   t.is_contiguous(memory_format=torch.channels_last)) \
        else torch.contiguous_format


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, dtype, layout):
    B, C, H, W, M, heads = shape
    x = make_feature_map((B, C, H, W), dtype, layout)
    y, gx = compare_tight(x, tokens(B, M, C, dtype), tokens(B, M, C, dtype), heads)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)


def with_odd_size1_strides(t):
    """The same tensor, with nonsense strides on its size-1 dimensions."""
    return t.as_strided(t.shape, [91 if n == 1 else st for n, st in zip(t.shape, t.stride())])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 8, 1, 5), (2, 8, 5, 1), (1, 8, 3, 4)], ids=str)
def test_strides_of_size1_dims_are_ignored(shape, layout):
    # Still contiguous in its layout: the kernels must step through positions by the layout's
    # strides, not by stride(3).
    x = with_odd_size1_strides(make_feature_map(shape, torch.float32, layout))
    B, C = shape[:2]
    compare_tight(x, tokens(B, 3, C, torch.float32), tokens(B, 3, C, torch.float32), 2)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[3], SHAPES[5]], ids=str)
def test_low_precision_within_2x(shape, dtype, layout):
    B, C, H, W, M, heads = shape
    x = make_feature_map((B, C, H, W), dtype, layout)
    compare_low(x, tokens(B, M, C, dtype), tokens(B, M, C, dtype), heads)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_large_logits_stay_finite(dtype):
    x = make_feature_map((2, 32, 9, 11), dtype, "contiguous", scale=30.0)
    compare_low(x, tokens(2, 6, 32, dtype, scale=3.0), tokens(2, 6, 32, dtype), 2)


@pytest.mark.parametrize("channels,size", MF294M, ids=str)
def test_mf294m_bridges(channels, size):
    x = make_feature_map((1, channels, size, size), torch.float32)
    compare_tight(x, tokens(1, 6, channels, torch.float32), tokens(1, 6, channels, torch.float32),
                  2)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts(threads):
    # More threads than (b, head) slices: chunks of positions with their own grad_k / grad_v
    # partial sums.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = make_feature_map((1, 24, 41, 37), torch.float32, "channels_last")
        compare_tight(x, tokens(1, 6, 24, torch.float32), tokens(1, 6, 24, torch.float32), 2)
    finally:
        torch.set_num_threads(previous)


def test_gradcheck():
    x = make_feature_map((2, 8, 3, 5), torch.float64, "channels_last").requires_grad_()
    k = tokens(2, 3, 8, torch.float64).requires_grad_()
    v = tokens(2, 3, 8, torch.float64).requires_grad_()
    with mf_kernels.use_backend("cpu"):
        assert torch.autograd.gradcheck(lambda a, b, c: ops.f2m_attention(a, b, c, 2), (x, k, v))


def opcheck_samples():
    x = make_feature_map((2, 8, 5, 3), torch.float32)
    k, v = tokens(2, 4, 8, torch.float32), tokens(2, 4, 8, torch.float32)
    xcl = make_feature_map((1, 12, 4, 4), torch.float32, "channels_last")
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    return [
        (x, k, v, 2),
        (rg(x), k, v, 2),
        (x, rg(k), v, 4),
        (x, k, rg(v), 1),
        (rg(xcl), rg(tokens(1, 3, 12, torch.float32)), rg(tokens(1, 3, 12, torch.float32)), 3),
        (make_feature_map((1, 8, 6, 6), torch.float64, "sliced"), tokens(1, 1, 8, torch.float64),
         tokens(1, 1, 8, torch.float64), 2),
    ]


@pytest.mark.parametrize("sample", range(6))
def test_opcheck(sample):
    torch.library.opcheck(torch.ops.mf_kernels.f2m_attention.default, opcheck_samples()[sample])


def test_opcheck_backward():
    x = make_feature_map((2, 8, 5, 3), torch.float32, "channels_last")
    k, v = tokens(2, 4, 8, torch.float32), tokens(2, 4, 8, torch.float32)
    torch.library.opcheck(torch.ops.mf_kernels.f2m_attention_backward.default,
                          (torch.randn(x.shape), x, k, v, 2))


def test_compile_fullgraph():
    def block(x, k, v):
        return ops.f2m_attention(x, k, v, 2).square().sum()

    inputs = [make_feature_map((2, 16, 5, 7), torch.float32, "channels_last"),
              tokens(2, 6, 16, torch.float32), tokens(2, 6, 16, torch.float32)]
    with mf_kernels.use_backend("cpu"):
        eager_in = [leaf(t) for t in inputs]
        eager = block(*eager_in)
        eager_grads = torch.autograd.grad(eager, eager_in)
        torch._dynamo.reset()
        compiled_in = [leaf(t) for t in inputs]
        result = torch.compile(block, fullgraph=True, backend="aot_eager")(*compiled_in)
        compiled_grads = torch.autograd.grad(result, compiled_in)
    assert_tight(result, eager, "compiled output")
    for name, a, b in zip("xkv", compiled_grads, eager_grads):
        assert_tight(a, b, f"compiled grad_{name}")


def bad_inputs():
    x = torch.randn(2, 8, 3, 3)
    k, v = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    return [  # (x, k, v, heads), exception, fragment of the message
        ((x[0], k, v, 2), ValueError, "x: expected a 4-D tensor"),
        ((x.half().int(), k.int(), v.int(), 2), TypeError, "x: expected a floating-point tensor"),
        ((x, k, v, 0), ValueError, "heads: expected a positive number"),
        ((x, k, v, -1), ValueError, "heads: expected a positive number"),
        ((x, k, v, 3), ValueError, "heads: x has 8 channels"),
        ((x, k[0], v, 2), ValueError, "k: expected a 3-D tensor"),
        ((x, k, v[0], 2), ValueError, "v: expected a 3-D tensor"),
        ((x, torch.randn(1, 4, 8), v, 2), ValueError, "k: expected shape [B, M, C]"),
        ((x, k, torch.randn(2, 4, 16), 2), ValueError, "v: expected shape [B, M, C]"),
        ((x, k, torch.randn(2, 5, 8), 2), ValueError, "v: expected the shape of k"),
        ((x, k.double(), v, 2), TypeError, "k: expected dtype"),
        ((x, k, v.half(), 2), TypeError, "v: expected dtype"),
        ((x, k, v.to("meta"), 2), ValueError, "v: expected device"),
    ]


@pytest.mark.parametrize("case", range(13))
@pytest.mark.parametrize("route", ["entry_point", "torch_ops"])
def test_bad_input_raises(case, route):
    args, error, message = bad_inputs()[case]
    fn = ops.f2m_attention if route == "entry_point" else torch.ops.mf_kernels.f2m_attention
    with mf_kernels.use_backend("cpu"), pytest.raises(error, match=message.replace("[", r"\[")):
        fn(*args)


def test_bad_backward_input_raises():
    x, k, v = torch.randn(2, 8, 3, 3), torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    bwd = torch.ops.mf_kernels.f2m_attention_backward
    with pytest.raises(ValueError, match="grad_y: expected the shape of x"):
        bwd(x[:, :, :2], x, k, v, 2)
    with pytest.raises(TypeError, match="grad_y: expected dtype"):
        bwd(x.double(), x, k, v, 2)
    with pytest.raises(ValueError, match="v: expected the shape of k"):
        bwd(x, x, k, v[:, :3], 2)


@pytest.mark.parametrize("shape", [(0, 8, 3, 3, 4), (2, 8, 3, 3, 0), (2, 8, 0, 3, 4),
                                   (2, 8, 3, 0, 0)], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_empty(shape, layout):
    B, C, H, W, M = shape
    x = make_feature_map((B, C, H, W), torch.float32, layout)
    y, gx = compare_tight(x, torch.randn(B, M, C), torch.randn(B, M, C), 2)
    assert y.shape == x.shape and gx.shape == x.shape
    assert y.stride() == torch.empty(x.shape, memory_format=layout_of(x)).stride()
