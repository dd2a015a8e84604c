"""The CUDA kernels of dynamic_relu (csrc/cuda/dynamic_relu.cu) against mobileformer.functional.

Skipped without a GPU or without the CUDA build of the extension; collection never touches
CUDA. On a GPU run with TRITON_INTERPRET=0 (the Triton agreement test needs compiled Triton).

The fp32 reference is computed in fp32 from the same (fp32-valued) inputs: the kernel rounds
each piece like the reference (product, then sum, never fused), so both pick the same maximum,
also at near-ties, and their gradients are comparable element by element.
"""
import pytest
import torch

import mf_kernels
import numerics
from cuda_checks import (DTYPES, assert_agree, assert_layout, assert_matches, reference,
                         require_cuda, require_triton)
from mobileformer import functional as F

OP = torch.ops.mf_kernels.dynamic_relu
BACKWARD = torch.ops.mf_kernels.dynamic_relu_backward

# Odd sizes, vector-width multiples and not, a 1x1 map.
SHAPES = [(2, 24, 14, 14), (1, 3, 5, 7), (3, 16, 9, 8), (2, 40, 1, 1)]
PIECES = [(2, False), (1, True), (3, True), (5, False)]  # (K, with intercept); K = 5: two passes


pytestmark = pytest.mark.gpu


@pytest.fixture
def cuda():
    return require_cuda()


def make_inputs(shape, K, with_intercept, layout, dtype, device):
    B, C = shape[:2]
    x = numerics.make_feature_map(shape, dtype, layout, device=str(device))
    slope = torch.randn(B, C, K, device=device).to(dtype)
    intercept = (0.5 * torch.randn(B, C, K, device=device)).to(dtype) if with_intercept else None
    grad_y = numerics.make_feature_map(shape, dtype, layout, device=str(device))
    return x, slope, intercept, grad_y


def high(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_all(x, slope, intercept, grad_y, dtype, tag=""):
    """Forward through the entry point (cuda backend) with autograd, and the backward op."""
    leaves = [numerics.leaf(x), numerics.leaf(slope),
              None if intercept is None else numerics.leaf(intercept)]
    with mf_kernels.use_backend("cuda"):
        y = mf_kernels.ops.dynamic_relu(*leaves)
    y.backward(grad_y)
    (ref_hi, grads_hi), (ref_low, grads_low) = reference(
        F.dynamic_relu, [x, slope, intercept], grad_y, dtype, high(dtype))
    assert_matches(y.detach(), ref_hi, ref_low, tag + "y")
    assert_layout(y, x, tag + "y")
    assert_matches(leaves[0].grad, grads_hi[0], grads_low[0], tag + "grad_x")
    assert_matches(leaves[1].grad, grads_hi[1], grads_low[1], tag + "grad_slope")
    if intercept is not None:
        assert_matches(leaves[2].grad, grads_hi[2], grads_low[2], tag + "grad_intercept")
    # The backward op returns grad_intercept also without an intercept: that of a zero one.
    grad_x, _, grad_intercept = BACKWARD(grad_y, x, slope, intercept)
    assert_layout(grad_x, x, tag + "grad_x")
    zero = torch.zeros_like(slope) if intercept is None else intercept
    (_, g_hi), (_, g_low) = reference(F.dynamic_relu, [x, slope, zero], grad_y, dtype, high(dtype))
    assert_matches(grad_intercept, g_hi[2], g_low[2], tag + "grad_intercept (op)")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("K,with_intercept", PIECES, ids=lambda v: str(v))
def test_forward_and_gradients(cuda, dtype, layout, shape, K, with_intercept):
    check_all(*make_inputs(shape, K, with_intercept, layout, dtype, cuda), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(4, 64, 56, 56), (1, 16, 112, 112), (2, 1, 224, 224)],
                         ids=lambda s: "x".join(map(str, s)))
def test_large_maps(cuda, dtype, layout, shape):
    """Maps large enough that the backward splits every plane across blocks."""
    check_all(*make_inputs(shape, 2, False, layout, dtype, cuda), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ties_split_the_gradient(cuda, dtype, layout):
    x, slope, intercept, grad_y = make_inputs((2, 16, 8, 8), 3, True, layout, dtype, cuda)
    x = x.masked_fill(torch.rand(x.shape, device=cuda) < 0.25, 0.0)
    slope[:, :, 1] = slope[:, :, 0]              # pieces 0 and 1 parallel,
    intercept[:, ::2, 1] = intercept[:, ::2, 0]  # and equal on even channels: tied everywhere
    intercept[:, :4] = 0.0                       # at x = 0 all three pieces tie (channels 0-3)
    check_all(x, slope, intercept, grad_y, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_misaligned_storage_takes_the_scalar_path(cuda, dtype):
    B, C, H, W = 2, 16, 8, 8
    x = torch.randn(B * C * H * W + 1, device=cuda).to(dtype)[1:].view(B, C, H, W)
    grad_y = torch.randn(B * C * H * W + 3, device=cuda).to(dtype)[3:].view(B, C, H, W)
    slope = torch.randn(B, C, 2, device=cuda).to(dtype)
    check_all(x, slope, None, grad_y, dtype)


@pytest.mark.parametrize("shape", [(0, 8, 4, 4), (2, 8, 0, 4), (2, 0, 4, 4)],
                         ids=lambda s: "x".join(map(str, s)))
def test_empty(cuda, shape):
    B, C = shape[:2]
    x = torch.randn(shape, device=cuda)
    slope = torch.randn(B, C, 2, device=cuda)
    y = OP(x, slope, None)
    assert y.shape == x.shape
    grad_x, grad_slope, grad_intercept = BACKWARD(torch.ones_like(x), x, slope, None)
    assert grad_x.shape == x.shape
    assert torch.equal(grad_slope, torch.zeros_like(slope))
    assert torch.equal(grad_intercept, torch.zeros_like(slope))


def test_bad_input(cuda):
    x = torch.randn(2, 8, 4, 4, device=cuda)
    with pytest.raises(ValueError, match="slope"):
        OP(x, torch.randn(2, 8, 2), None)                      # wrong device
    with pytest.raises(TypeError, match="slope"):
        OP(x, torch.randn(2, 8, 2, device=cuda).half(), None)  # wrong dtype
    with pytest.raises(ValueError, match="slope"):
        OP(x, torch.randn(2, 7, 2, device=cuda), None)         # wrong C
    with pytest.raises(ValueError, match="K >= 1"):
        OP(x, torch.randn(2, 8, 0, device=cuda), None)
    with pytest.raises(ValueError, match="intercept"):
        OP(x, torch.randn(2, 8, 2, device=cuda), torch.randn(2, 8, 3, device=cuda))
    with pytest.raises(ValueError, match="grad_y"):
        BACKWARD(torch.randn(2, 8, 4, 5, device=cuda), x, torch.randn(2, 8, 2, device=cuda), None)


@pytest.mark.parametrize("with_intercept", [False, True])
def test_opcheck(cuda, with_intercept):
    x, slope, intercept, grad_y = make_inputs((2, 8, 5, 6), 2, with_intercept, "channels_last",
                                              torch.float32, cuda)
    torch.library.opcheck(OP, (x.requires_grad_(), slope.requires_grad_(),
                               None if intercept is None else intercept.requires_grad_()))
    torch.library.opcheck(BACKWARD, (grad_y, x.detach(), slope.detach(),
                                     None if intercept is None else intercept.detach()))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compile_cuda_graphs(cuda, layout):
    """torch.compile with CUDA graphs: a kernel launched off the current stream breaks capture."""
    torch._dynamo.reset()
    x, slope, _, grad_y = make_inputs((2, 16, 12, 12), 2, False, layout, torch.float32, cuda)

    def fn(x, slope):
        return OP(x, slope, None) * 2.0

    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # warm-up, recording, replay
        leaves = [numerics.leaf(x), numerics.leaf(slope)]
        y = compiled(*leaves)
        y.backward(grad_y)
        expected = [numerics.leaf(x), numerics.leaf(slope)]
        fn(*expected).backward(grad_y)
        numerics.assert_tight(y.detach(), fn(x, slope), "y")
        numerics.assert_tight(leaves[0].grad, expected[0].grad, "grad_x")
        numerics.assert_tight(leaves[1].grad, expected[1].grad, "grad_slope")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_and_triton_agree(cuda, dtype, layout):
    require_triton("dynamic_relu")
    x, slope, intercept, grad_y = make_inputs((2, 24, 13, 11), 2, True, layout, dtype, cuda)
    outputs = {}
    for backend in ("cuda", "triton"):
        leaves = [numerics.leaf(x), numerics.leaf(slope), numerics.leaf(intercept)]
        with mf_kernels.use_backend(backend):
            y = mf_kernels.ops.dynamic_relu(*leaves)
        grads = []
        if y.requires_grad:
            y.backward(grad_y)
            grads = [t.grad for t in leaves]
        outputs[backend] = (y.detach(), grads)
    (ref_hi, g_hi), (ref_low, g_low) = reference(
        F.dynamic_relu, [x, slope, intercept], grad_y, dtype, high(dtype))
    assert_agree(outputs["cuda"][0], outputs["triton"][0], ref_hi, ref_low, "y")
    if outputs["triton"][1]:
        for i, name in enumerate(("grad_x", "grad_slope", "grad_intercept")):
            assert_agree(outputs["cuda"][1][i], outputs["triton"][1][i], g_hi[i], g_low[i], name)
