"""dynamic_relu (C++ CPU kernel) against the reference: values, gradients, layouts, errors."""
import itertools

import pytest
import torch

import mf_kernels
import mobileformer
from mobileformer import functional as reference
from numerics import LAYOUTS, assert_tight, assert_within_2x, grads, leaf, make_feature_map

op = torch.ops.mf_kernels.dynamic_relu


def coefficients(B, C, K, dtype, with_intercept):
    slope = torch.randn(B, C, K).to(dtype)
    intercept = (0.3 * torch.randn(B, C, K)).to(dtype) if with_intercept else None
    return slope, intercept


def run(fn, x, slope, intercept, grad_y):
    """Output and gradients of every input that exists."""
    x, slope = leaf(x), leaf(slope)
    inputs = [x, slope] + ([leaf(intercept)] if intercept is not None else [])
    y = fn(*inputs[:2], inputs[2] if intercept is not None else None)
    return [y.detach()] + grads(y, inputs, grad_y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("K,with_intercept", [(1, True), (2, False), (2, True), (3, True)])
def test_matches_reference_tight(dtype, layout, K, with_intercept):
    x = make_feature_map((3, 5, 7, 9), dtype, layout)
    slope, intercept = coefficients(3, 5, K, dtype, with_intercept)
    grad_y = torch.randn(3, 5, 7, 9, dtype=dtype)
    ours = run(mf_kernels.ops.dynamic_relu, x, slope, intercept, grad_y)
    expected = run(reference.dynamic_relu, x, slope, intercept, grad_y)
    for name, a, e in zip(["y", "grad_x", "grad_slope", "grad_intercept"], ours, expected):
        assert_tight(a, e, name)
    if layout == "channels_last":
        assert ours[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_within_twice_reference_error(dtype, layout):
    x32 = make_feature_map((2, 24, 28, 28), torch.float32, layout)
    slope32, intercept32 = coefficients(2, 24, 2, torch.float32, True)
    grad32 = torch.randn(2, 24, 28, 28)
    exact = run(reference.dynamic_relu, x32, slope32, intercept32, grad32)
    low = [t.to(dtype) for t in (x32, slope32, intercept32, grad32)]
    ref_low = run(reference.dynamic_relu, *low)
    ours = run(mf_kernels.ops.dynamic_relu, *low)
    for name, a, r, e in zip(["y", "grad_x", "grad_slope", "grad_intercept"], ours, ref_low, exact):
        assert_within_2x(a, r, e, name)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("with_intercept", [False, True])
def test_gradcheck_fp64(layout, with_intercept):
    x = leaf(make_feature_map((2, 3, 4, 5), torch.float64, layout))
    slope, intercept = coefficients(2, 3, 3, torch.float64, with_intercept)
    inputs = (x, leaf(slope), leaf(intercept) if with_intercept else None)
    assert torch.autograd.gradcheck(op, inputs)


def test_ties_split_the_gradient_like_torch_maximum():
    """At x = 0 both pieces tie: d/dx = (a1 + a2) / 2 and the slopes receive 0 (spec 19)."""
    x = torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=torch.float64).reshape(1, 1, 2, 2)
    slope = torch.tensor([[[1.5, -0.5]]], dtype=torch.float64)
    grad_y = torch.ones_like(x)
    ours = run(op, x, slope, None, grad_y)
    expected = run(lambda x, s, _: torch.maximum(s[..., 0, None, None] * x,
                                                 s[..., 1, None, None] * x), x, slope, None, grad_y)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    assert ours[1].flatten()[0].item() == 0.5


def test_nan_and_inf_propagate_as_in_reference():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0]).reshape(1, 1, 2, 2)
    slope = torch.tensor([[[1.0, -0.5]]])
    torch.testing.assert_close(op(x, slope, None), reference.dynamic_relu(x, slope),
                               equal_nan=True)


def variant_sites():
    """(channels, height, width) of every dynamic ReLU of the seven variants at 224x224."""
    sites = set()
    for name in mobileformer.VARIANT_NAMES:
        model = mobileformer.create_model(name)
        for module in model.modules():
            if isinstance(module, mobileformer.DynamicReLU):
                module.register_forward_hook(
                    lambda m, inputs, out: sites.add(tuple(inputs[0].shape[1:])))
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 224, 224))
    return sorted(sites)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_variant_site_shape(layout):
    for C, H, W in variant_sites():
        x = make_feature_map((1, C, H, W), torch.float32, layout)
        slope, _ = coefficients(1, C, 2, torch.float32, False)
        grad_y = torch.randn(1, C, H, W)
        for name, a, e in zip(["y", "grad_x", "grad_slope"],
                              run(op, x, slope, None, grad_y),
                              run(reference.dynamic_relu, x, slope, None, grad_y)):
            assert_tight(a, e, f"{name} at C={C}, {H}x{W}")


@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (2, 4, 0, 5), (2, 0, 3, 3)])
def test_empty_inputs_give_empty_results(shape):
    B, C = shape[:2]
    x = leaf(torch.randn(shape))
    slope = leaf(torch.randn(B, C, 2))
    y = mf_kernels.ops.dynamic_relu(x, slope)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape and slope.grad.shape == (B, C, 2)
    assert not slope.grad.any()


def bad_inputs():
    x = torch.randn(2, 3, 4, 4)
    s = torch.randn(2, 3, 2)
    return [
        ("x: expected a 4-D tensor", (torch.randn(3, 4, 4), s, None)),
        ("slope: expected a 3-D tensor", (x, torch.randn(2, 3), None)),
        ("slope: expected shape \\[B, C, K\\] = \\[2, 3, K\\]", (x, torch.randn(1, 3, 2), None)),
        ("slope: expected shape \\[B, C, K\\] = \\[2, 3, K\\]", (x, torch.randn(2, 4, 2), None)),
        ("slope: expected at least one piece", (x, torch.randn(2, 3, 0), None)),
        ("slope: expected dtype", (x, s.double(), None)),
        ("slope: expected device", (x, s.to("meta"), None)),
        ("intercept: expected the shape of slope", (x, s, torch.randn(2, 3, 3))),
        ("intercept: expected dtype", (x, s, s.half())),
        ("x: expected a floating-point tensor", (x.long(), s.long(), None)),
    ]


@pytest.mark.parametrize("entry", ["python", "torch.ops"])
@pytest.mark.parametrize("message,args", bad_inputs(), ids=[m for m, _ in bad_inputs()])
def test_bad_input_names_the_argument(entry, message, args):
    fn = mf_kernels.ops.dynamic_relu if entry == "python" else op
    with pytest.raises((ValueError, TypeError), match=message):
        fn(*args)


def opcheck_samples():
    for layout, K, with_intercept, needs_grad in itertools.product(
            ["contiguous", "channels_last", "sliced"], [1, 2], [False, True], [False, True]):
        x = make_feature_map((2, 3, 4, 5), torch.float32, layout).requires_grad_(needs_grad)
        slope, intercept = coefficients(2, 3, K, torch.float32, with_intercept)
        yield x, slope.requires_grad_(True), intercept


@pytest.mark.parametrize("sample", list(opcheck_samples()))
def test_opcheck(sample):
    torch.library.opcheck(op, sample)


def test_opcheck_backward_op():
    x, slope = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 2)
    torch.library.opcheck(torch.ops.mf_kernels.dynamic_relu_backward,
                          (torch.randn(2, 3, 4, 5), x, slope, None))


def test_drop_in_module_has_reference_state_dict_and_output():
    ref = mobileformer.DynamicReLU(24, 128)
    fused = mf_kernels.nn.DynamicReLU(24, 128)
    fused.load_state_dict(ref.state_dict())
    assert list(fused.state_dict()) == list(ref.state_dict())
    x, token = torch.randn(2, 24, 9, 7), torch.randn(2, 128)
    assert_tight(fused(x, token), ref(x, token))


def test_compile_fullgraph_of_a_module_using_it():
    torch._dynamo.reset()
    module = mf_kernels.nn.DynamicReLU(8, 32)
    x, token = torch.randn(2, 8, 5, 5, requires_grad=True), torch.randn(2, 32)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    y = compiled(x, token)
    y.sum().backward()
    assert_tight(y, mobileformer.DynamicReLU.forward(module, x, token))
    expected_grad = torch.autograd.grad(mobileformer.DynamicReLU.forward(module, x, token).sum(), x)
    assert_tight(x.grad, expected_grad[0])
