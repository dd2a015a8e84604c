"""The CUDA kernels of m2f_attention (csrc/cuda/m2f_attention.cu) against mobileformer.functional.

Skipped without a GPU or without the CUDA build of the extension; collection never touches
CUDA. On a GPU run with TRITON_INTERPRET=0 (the Triton agreement test needs compiled Triton).
The ops are called directly (torch.ops.mf_kernels.*); the tests that need the Python
registration (fake implementation and autograd: opcheck, torch.compile) import
mf_kernels.ops.m2f_attention and skip when it is not there.
"""
import pytest
import torch

import numerics
from cuda_checks import (DTYPES, assert_agree, assert_layout, assert_matches, reference,
                         require_cuda, require_module, require_triton)
from mobileformer import functional as F

OP = torch.ops.mf_kernels.m2f_attention
BACKWARD = torch.ops.mf_kernels.m2f_attention_backward

# (B, C, H, W, M, heads): C/heads = 20 mostly; M = 1, 6 and 100 (several token chunks); heads
# 1, 2, 4; odd maps, a 1x1 map.
CASES = [
    (2, 40, 7, 9, 6, 2),
    (1, 20, 5, 5, 1, 1),
    (2, 80, 14, 14, 6, 4),
    (1, 40, 8, 8, 100, 2),
    (3, 40, 3, 5, 3, 2),
    (2, 40, 1, 1, 6, 2),
    (2, 24, 6, 7, 4, 1),
]
# Large maps: positions split across blocks (and, with M = 40, two token chunks).
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
    q = torch.randn(B, M, C, device=device).to(dtype)
    grad_out = torch.randn(B, M, C, device=device).to(dtype)
    return x, q, grad_out, heads


def check_all(x, q, grad_out, heads, dtype):
    out = OP(x, q, heads)
    grad_x, grad_q = BACKWARD(grad_out, x, q, out, heads)
    (ref_hi, g_hi), (ref_low, g_low) = reference(
        lambda a, b: F.m2f_attention(a, b, heads), [x, q], grad_out, dtype, torch.float64)
    assert out.is_contiguous() and grad_q.is_contiguous()
    assert_matches(out, ref_hi, ref_low, "out")
    assert_matches(grad_x, g_hi[0], g_low[0], "grad_x")
    assert_layout(grad_x, x, "grad_x")
    assert_matches(grad_q, g_hi[1], g_low[1], "grad_q")


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
    x, q, grad_out, heads = make_inputs((2, 40, 6, 6, 6, 2), "channels_last", torch.float32, cuda)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    grad_out_t = grad_out.transpose(1, 2).contiguous().transpose(1, 2)
    check_all(x, q_t, grad_out_t, heads, torch.float32)


@pytest.mark.parametrize("shape", [(0, 8, 4, 4, 3), (2, 8, 0, 4, 3), (2, 8, 4, 4, 0)],
                         ids=lambda s: "x".join(map(str, s)))
def test_empty(cuda, shape):
    B, C, H, W, M = shape
    x = torch.randn(B, C, H, W, device=cuda)
    q = torch.randn(B, M, C, device=cuda)
    out = OP(x, q, 2)
    assert torch.equal(out, torch.zeros(B, M, C, device=cuda))  # an empty sum over positions
    grad_x, grad_q = BACKWARD(torch.ones_like(q), x, q, out, 2)
    assert torch.equal(grad_x, torch.zeros_like(x))
    assert torch.equal(grad_q, torch.zeros_like(q))


def test_bad_input(cuda):
    x = torch.randn(2, 8, 4, 4, device=cuda)
    q = torch.randn(2, 3, 8, device=cuda)
    with pytest.raises(ValueError, match="heads"):
        OP(x, q, 3)
    with pytest.raises(ValueError, match="heads"):
        OP(x, q, 0)
    with pytest.raises(ValueError, match="q"):
        OP(x, torch.randn(2, 3, 6, device=cuda), 2)
    with pytest.raises(ValueError, match="q"):
        OP(x, torch.randn(2, 3, 8), 2)
    with pytest.raises(TypeError, match="q"):
        OP(x, q.double(), 2)
    with pytest.raises(ValueError, match="grad_out"):
        BACKWARD(torch.randn(2, 4, 8, device=cuda), x, q, q, 2)


def test_opcheck(cuda):
    require_module("mf_kernels.ops.m2f_attention", "it registers the fake implementation and autograd")
    x, q, grad_out, heads = make_inputs((2, 40, 5, 6, 6, 2), "channels_last", torch.float32, cuda)
    torch.library.opcheck(OP, (x.requires_grad_(), q.requires_grad_(), heads))
    out = OP(x.detach(), q.detach(), heads)
    torch.library.opcheck(BACKWARD, (grad_out, x.detach(), q.detach(), out, heads))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compile_cuda_graphs(cuda, layout):
    """torch.compile with CUDA graphs: a kernel launched off the current stream breaks capture."""
    require_module("mf_kernels.ops.m2f_attention", "it registers the fake implementation and autograd")
    torch._dynamo.reset()
    x, q, grad_out, heads = make_inputs((2, 40, 12, 12, 6, 2), layout, torch.float32, cuda)

    def fn(x, q):
        return OP(x, q, heads) * 2.0

    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, recording, replay
        leaves = [numerics.leaf(x), numerics.leaf(q)]
        out = compiled(*leaves)
        out.backward(grad_out)
        expected = [numerics.leaf(x), numerics.leaf(q)]
        fn(*expected).backward(grad_out)
        numerics.assert_tight(out.detach(), fn(x, q), "out")
        numerics.assert_tight(leaves[0].grad, expected[0].grad, "grad_x")
        numerics.assert_tight(leaves[1].grad, expected[1].grad, "grad_q")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_and_triton_agree(cuda, dtype, layout):
    triton_m2f = require_triton("m2f_attention")
    x, q, grad_out, heads = make_inputs((2, 40, 13, 11, 6, 2), layout, dtype, cuda)
    out = OP(x, q, heads)
    grad_x, grad_q = BACKWARD(grad_out, x, q, out, heads)
    leaves = [numerics.leaf(x), numerics.leaf(q)]
    out_triton = triton_m2f(*leaves, heads)
    (ref_hi, g_hi), (ref_low, g_low) = reference(
        lambda a, b: F.m2f_attention(a, b, heads), [x, q], grad_out, dtype, torch.float64)
    assert_agree(out, out_triton.detach(), ref_hi, ref_low, "out")
    if out_triton.requires_grad:
        out_triton.backward(grad_out)
        assert_agree(grad_x, leaves[0].grad, g_hi[0], g_low[0], "grad_x")
        assert_agree(grad_q, leaves[1].grad, g_hi[1], g_low[1], "grad_q")
