"""Triton dynamic_relu against mobileformer.functional.dynamic_relu (forward and gradients).

CPU: interpreter, fp32, small shapes. GPU: TRITON_INTERPRET=0, fp32/fp16/bf16.
"""
import pytest
import torch

import numerics
from mobileformer import functional as reference
from triton_support import (assert_matches, compile_backend, device_dtype, gpu,  # noqa: F401
                            interpreted, run_with_grads, triton_device)

pytest.importorskip("triton")
from mf_kernels.triton import dynamic_relu as module  # noqa: E402

NAMES = ("y", "grad_x", "grad_slope", "grad_intercept")


def make_inputs(shape, K, with_intercept, dtype, layout="contiguous", device="cpu", zeros=True):
    B, C = shape[:2]
    x = numerics.make_feature_map(shape, dtype, layout, device)
    if zeros and x.numel():
        x[..., 0, 0] = 0  # at x = 0 without intercepts every piece ties
    slope = torch.randn(B, C, K, device=device).to(dtype)
    intercept = torch.randn(B, C, K, device=device).to(dtype) if with_intercept else None
    return x, slope, intercept


def check(x, slope, intercept):
    inputs = [x, slope] + ([intercept] if intercept is not None else [])
    assert_matches(module.dynamic_relu, reference.dynamic_relu, inputs, NAMES, check_layout=x)


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("K,with_intercept", [(2, False), (3, True), (1, True)])
def test_matches_reference(device_dtype, layout, K, with_intercept):
    device, dtype = device_dtype
    check(*make_inputs((2, 5, 3, 7), K, with_intercept, dtype, layout, device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_many_tiles_and_splits(device_dtype, layout, monkeypatch):
    """Small blocks: several position and channel tiles, masked edges, split partial sums."""
    device, dtype = device_dtype
    monkeypatch.setattr(module, "BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(module, "BACKWARD_BLOCK_ELEMENTS", 64)
    check(*make_inputs((2, 5, 9, 11), 2, True, dtype, layout, device))


def test_ties_split_the_gradient_evenly(device_dtype):
    device, dtype = device_dtype
    x = torch.zeros(1, 3, 2, 2, device=device, dtype=dtype)
    slope = torch.tensor([[[1.0, 0.25], [0.5, 0.5], [-1.0, 2.0]]], device=device, dtype=dtype)
    y, grad_x, grad_slope = run_with_grads(module.dynamic_relu, [x, slope])
    y_ref, grad_x_ref, grad_slope_ref = run_with_grads(reference.dynamic_relu, [x, slope])
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(grad_x, grad_x_ref)
    torch.testing.assert_close(grad_slope, grad_slope_ref)


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)])
def test_empty(device_dtype, shape):
    device, dtype = device_dtype
    x, slope, intercept = make_inputs(shape, 2, True, dtype, device=device, zeros=False)
    y, grad_x, grad_slope, grad_intercept = run_with_grads(module.dynamic_relu,
                                                           [x, slope, intercept])
    assert y.shape == x.shape and grad_x.shape == x.shape
    assert grad_slope.shape == slope.shape and not grad_slope.any()
    assert grad_intercept.shape == slope.shape and not grad_intercept.any()


def test_low_precision_interpreted(interpreted):
    """fp16/bf16 on the interpreter (the GPU runs every test in these dtypes)."""
    for dtype in numerics.LOW_PRECISION:
        check(*make_inputs((2, 5, 3, 7), 2, True, dtype, "channels_last"))


@pytest.mark.parametrize("with_intercept", [False, True])
def test_opcheck(device_dtype, with_intercept):
    device, dtype = device_dtype
    x, slope, intercept = make_inputs((2, 3, 4, 5), 2, with_intercept, dtype, device=device)
    x.requires_grad_(True)
    slope.requires_grad_(True)
    torch.library.opcheck(torch.ops.mf_kernels.triton_dynamic_relu.default, (x, slope, intercept))
    grad_y = torch.randn_like(x)
    torch.library.opcheck(torch.ops.mf_kernels.triton_dynamic_relu_backward.default,
                          (grad_y, x.detach(), slope.detach(), intercept))


def test_compile_fullgraph(device_dtype):
    """On the CPU the interpreted op stays opaque in the graph (aot_eager); on a GPU inductor
    traces into the kernels."""
    device, dtype = device_dtype
    torch._dynamo.reset()
    compiled = torch.compile(module.dynamic_relu, fullgraph=True,
                             backend=compile_backend(device))
    x, slope, intercept = make_inputs((2, 4, 3, 5), 2, True, dtype, "channels_last", device)
    assert_matches(compiled, reference.dynamic_relu, [x, slope, intercept], NAMES)


def test_through_backend_selection(device_dtype):
    import mf_kernels
    from mf_kernels import backends

    device, dtype = device_dtype
    x, slope, _ = make_inputs((2, 4, 3, 5), 2, False, dtype, device=device)
    with mf_kernels.use_backend("triton"):
        assert backends.backend_for("dynamic_relu", x.device) == "triton"
        assert_matches(mf_kernels.ops.dynamic_relu, reference.dynamic_relu, [x, slope], NAMES)


def test_rejects_bad_input(triton_device):
    x, slope, intercept = make_inputs((1, 3, 2, 2), 2, True, torch.float32,
                                       device=triton_device)
    with pytest.raises(TypeError, match="^x: .*float64"):
        module.dynamic_relu(x.double(), slope.double())
    with pytest.raises(ValueError, match="^slope"):
        module.dynamic_relu(x, slope[:, :2])
    with pytest.raises(TypeError, match="^intercept"):
        module.dynamic_relu(x, slope, intercept.half())


def test_beyond_32_bit_offsets(gpu):
    """More than 2^31 elements: the last image must be addressed with 64-bit offsets."""
    if torch.cuda.mem_get_info()[0] < 12 * 2 ** 30:
        pytest.skip("needs 12 GiB of free GPU memory")
    x = torch.randn(2, 64, 4096, 4097, device=gpu, dtype=torch.float16)
    slope = torch.randn(2, 64, 2, device=gpu, dtype=torch.float16)
    y = module.dynamic_relu(x, slope)
    torch.testing.assert_close(y[-1], reference.dynamic_relu(x[-1:], slope[-1:])[0])
