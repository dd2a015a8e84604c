"""The CUDA kernels of f2m_attention (csrc/cuda/f2m_attention.cu) against mobileformer.functional.

Skipped without a GPU or without the CUDA build of the extension; collection never touches
CUDA. On a GPU run with TRITON_INTERPRET=0 (the Triton agreement test needs compiled Triton).
The ops are called directly (torch.ops.mf_kernels.*); the tests that need the Python
registration (fake implementation and autograd: opcheck, torch.compile) import
mf_kernels.ops.f2m_attention and skip when it is not there.
"""
import pytest
import torch

import numerics
from cuda_checks import (DTYPES, assert_agree, assert_layout, assert_matches, reference,
                         require_cuda, require_module, require_triton)
from mobileformer import functional as F

OP = torch.ops.mf_kernels.f2m_attention
BACKWARD = torch.ops.mf_kernels.f2m_attention_backward

# (B, C, H, W, M, heads): C/heads = 20 mostly; M = 1, 6 and 100 (several token chunks: the
# statistics pass and atomics into grad_x); heads 1, 2, 4; odd maps, a 1x1 map.
CASES = [
    (2, 40, 7, 9, 6, 2),
    (1, 20, 5, 5, 1, 1),
    (2, 80, 14, 14, 6, 4),
    (1, 40, 8, 8, 100, 2),
    (3, 40, 3, 5, 3, 2),
    (2, 40, 1, 1, 6, 2),
    (2, 24, 6, 7, 4, 1),
]
# Large maps: many tiles, positions split across blocks in the backward.
LARGE = [(2, 64, 56, 56, 6, 2), (1, 40, 28, 28, 40, 2), (4, 192, 14, 14, 6, 2)]


pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda():
    return require_cuda()


def case_id(case):
    B, C, H, W, M, heads = case
    return f"B{B}-C{C}-{H}x{W}-M{M}-h{heads}"


def make_inputs(case, layout, dtype, device):
    B, C, H, W, M, heads = case
    x = numerics.make_feature_map((B, C, H, W), dtype, layout, device=str(device))
    k = torch.randn(B, M, C, device=device).to(dtype)
    v = torch.randn(B, M, C, device=device).to(dtype)
    grad_y = numerics.make_feature_map((B, C, H, W), dtype, layout, device=str(device))
    return x, k, v, grad_y, heads


def check_all(x, k, v, grad_y, heads, dtype):
    y = OP(x, k, v, heads)
    grad_x, grad_k, grad_v = BACKWARD(grad_y, x, k, v, heads)
    (ref_hi, g_hi), (ref_low, g_low) = reference(
        lambda a, b, c: F.f2m_attention(a, b, c, heads), [x, k, v], grad_y, dtype, torch.float64)
    assert_matches(y, ref_hi, ref_low, "y")
    assert_layout(y, x, "y")
    assert_matches(grad_x, g_hi[0], g_low[0], "grad_x")
    assert_layout(grad_x, x, "grad_x")
    assert grad_k.is_contiguous() and grad_v.is_contiguous()
    assert_matches(grad_k, g_hi[1], g_low[1], "grad_k")
    assert_matches(grad_v, g_hi[2], g_low[2], "grad_v")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_and_gradients(cuda, dtype, layout, case):
    check_all(*make_inputs(case, layout, dtype, cuda), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", LARGE, ids=case_id)
def test_large_maps(cuda, dtype, layout, case):
    check_all(*make_inputs(case, layout, dtype, cuda), dtype)


def test_non_contiguous_tokens(cuda):
    x, k, v, grad_y, heads = make_inputs((2, 40, 6, 6, 6, 2), "contiguous", torch.float32, cuda)
    k_t = k.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    v_t = v.transpose(0, 1).contiguous().transpose(0, 1)
    check_all(x, k_t, v_t, grad_y, heads, torch.float32)


@pytest.mark.parametrize("shape", [(0, 8, 4, 4, 3), (2, 8, 0, 4, 3), (2, 8, 4, 4, 0)],
                         ids=lambda s: "x".join(map(str, s)))
def test_empty(cuda, shape):
    B, C, H, W, M = shape
    x = torch.randn(B, C, H, W, device=cuda)
    k = torch.randn(B, M, C, device=cuda)
    v = torch.randn(B, M, C, device=cuda)
    y = OP(x, k, v, 2)
    assert torch.equal(y, x)  # no positions, or no tokens: an empty update
    grad_y = torch.randn_like(x)
    grad_x, grad_k, grad_v = BACKWARD(grad_y, x, k, v, 2)
    assert torch.equal(grad_x, grad_y)
    assert torch.equal(grad_k, torch.zeros_like(k))
    assert torch.equal(grad_v, torch.zeros_like(v))


def test_bad_input(cuda):
    x = torch.randn(2, 8, 4, 4, device=cuda)
    k = torch.randn(2, 3, 8, device=cuda)
    with pytest.raises(ValueError, match="heads"):
        OP(x, k, k, 3)
    with pytest.raises(ValueError, match="v"):
        OP(x, k, torch.randn(2, 4, 8, device=cuda), 2)
    with pytest.raises(ValueError, match="k"):
        OP(x, torch.randn(3, 3, 8, device=cuda), k, 2)
    with pytest.raises(ValueError, match="k"):
        OP(x, torch.randn(2, 3, 8), k, 2)
    with pytest.raises(TypeError, match="v"):
        OP(x, k, k.half(), 2)
    with pytest.raises(ValueError, match="grad_y"):
        BACKWARD(torch.randn(2, 8, 4, 3, device=cuda), x, k, k, 2)


def test_opcheck(cuda):
    require_module("mf_kernels.ops.f2m_attention", "it registers the fake implementation and autograd")
    x, k, v, grad_y, heads = make_inputs((2, 40, 5, 6, 6, 2), "channels_last", torch.float32, cuda)
    torch.library.opcheck(OP, (x.requires_grad_(), k.requires_grad_(), v.requires_grad_(), heads))
    torch.library.opcheck(BACKWARD, (grad_y, x.detach(), k.detach(), v.detach(), heads))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compile_cuda_graphs(cuda, layout):
    """torch.compile with CUDA graphs: a kernel launched off the current stream breaks capture."""
    require_module("mf_kernels.ops.f2m_attention", "it registers the fake implementation and autograd")
    torch._dynamo.reset()
    x, k, v, grad_y, heads = make_inputs((2, 40, 12, 12, 6, 2), layout, torch.float32, cuda)

    def fn(x, k, v):
        return OP(x, k, v, heads) * 2.0

    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, recording, replay
        leaves = [numerics.leaf(x), numerics.leaf(k), numerics.leaf(v)]
        y = compiled(*leaves)
        y.backward(grad_y)
        expected = [numerics.leaf(x), numerics.leaf(k), numerics.leaf(v)]
        fn(*expected).backward(grad_y)
        numerics.assert_tight(y.detach(), fn(x, k, v), "y")
        for name, got, want in zip(("grad_x", "grad_k", "grad_v"), leaves, expected):
            numerics.assert_tight(got.grad, want.grad, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_and_triton_agree(cuda, dtype, layout):
    triton_f2m = require_triton("f2m_attention")
    x, k, v, grad_y, heads = make_inputs((2, 40, 13, 11, 6, 2), layout, dtype, cuda)
    y = OP(x, k, v, heads)
    grads = BACKWARD(grad_y, x, k, v, heads)
    leaves = [numerics.leaf(x), numerics.leaf(k), numerics.leaf(v)]
    y_triton = triton_f2m(*leaves, heads)
    (ref_hi, g_hi), (ref_low, g_low) = reference(
        lambda a, b, c: F.f2m_attention(a, b, c, heads), [x, k, v], grad_y, dtype, torch.float64)
    assert_agree(y, y_triton.detach(), ref_hi, ref_low, "y")
    if y_triton.requires_grad:
        y_triton.backward(grad_y)
        for i, name in enumerate(("grad_x", "grad_k", "grad_v")):
            assert_agree(grads[i], leaves[i].grad, g_hi[i], g_low[i], name)
