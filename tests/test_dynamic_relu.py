"""dynamic_relu on every backend (tests/op_backends.py) against mobileformer.functional.

y[b,c,p] = max_k (slope[b,c,k] x[b,c,p] + intercept[b,c,k]); ties split the gradient evenly.
Every case runs on every backend that can take it: forward and every gradient, all dtypes,
layouts, piece counts, odd sizes, every dynamic-ReLU site of the seven variants, ties, NaN,
empty inputs, bad input, gradcheck, opcheck and torch.compile.
"""
import itertools

import pytest
import torch

import mf_kernels
import mobileformer
import numerics
import op_backends
from mobileformer import functional as reference
from op_backends import backend, requires, variant_sites  # noqa: F401  (backend: the fixture)

pytest_generate_tests = op_backends.parametrize

NAMES = ("y", "grad_x", "grad_slope", "grad_intercept")
# (K, intercept?): one piece, the authors' K = 2 without intercepts, K = 5 (two passes of the
# CUDA backward, which takes at most four pieces at a time).
PIECES = [(1, True), (2, False), (2, True), (3, True), (5, False)]
# Odd sizes; sizes a multiple of the vector width and not; a 1x1 map.
SHAPES = [(3, 5, 7, 9), (2, 24, 14, 14), (1, 3, 5, 7), (3, 16, 9, 8), (2, 40, 1, 1)]


def make_inputs(shape, K, with_intercept, dtype, layout="contiguous", device="cpu"):
    B, C = shape[:2]
    x = numerics.make_feature_map(shape, dtype, layout, device)
    slope = torch.randn(B, C, K).to(device, dtype)
    intercept = (0.5 * torch.randn(B, C, K)).to(device, dtype) if with_intercept else None
    return x, slope, intercept


def check(backend, x, slope, intercept):
    inputs = [x, slope] + ([intercept] if intercept is not None else [])
    return numerics.check_against_reference(backend.fn("dynamic_relu"), reference.dynamic_relu,
                                            inputs, NAMES, layout_of=x)


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("pieces", PIECES, ids=lambda p: f"K{p[0]}{'-intercept' * p[1]}")
def test_pieces(backend, dtype, pieces, layout):
    check(backend, *make_inputs(SHAPES[0], *pieces, dtype, layout, backend.device))


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES[1:], ids=str)
def test_shapes(backend, dtype, shape, layout):
    check(backend, *make_inputs(shape, 2, False, dtype, layout, backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_variant_site(backend, layout):
    """Every dynamic ReLU of the seven variants at 224x224 (batch 1, fp32; the interpreter takes
    the maps up to 14x14)."""
    for C, H, W, K in op_backends.sites_for(backend, variant_sites().dynamic_relu):
        x, slope, _ = make_inputs((1, C, H, W), K, False, torch.float32, layout, backend.device)
        check(backend, x, slope, None)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(4, 64, 56, 56), (1, 16, 112, 112), (2, 1, 224, 224)], ids=str)
def test_large_maps(backend, shape, layout):
    """Several position splits per plane (and channel tiles) on a GPU."""
    requires(backend, small=False)
    check(backend, *make_inputs(shape, 2, False, torch.float32, layout, backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_small_tiles_and_splits(backend, layout, monkeypatch):
    """Tiles and splits forced small: several position and channel tiles, masked edges, split
    partial sums (Triton: block budgets; CPU: three threads; CUDA emulation: 200 SMs)."""
    if backend.op_prefix:
        from mf_kernels.triton import dynamic_relu as module
        monkeypatch.setattr(module, "BLOCK_ELEMENTS", 64)
        monkeypatch.setattr(module, "BACKWARD_BLOCK_ELEMENTS", 64)
    monkeypatch.setenv("MF_EMU_SMS", "200")
    with op_backends.threads(3):
        check(backend, *make_inputs((2, 5, 9, 11), 2, True, torch.float32, layout,
                                    backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_ties_split_the_gradient(backend, dtype, layout):
    x, slope, intercept = make_inputs((2, 16, 8, 8), 3, True, dtype, layout, backend.device)
    x = x.masked_fill(torch.rand(x.shape).to(x.device) < 0.25, 0.0)
    slope[:, :, 1] = slope[:, :, 0]              # pieces 0 and 1 parallel,
    intercept[:, ::2, 1] = intercept[:, ::2, 0]  # and equal on even channels: tied everywhere
    intercept[:, :4] = 0.0                       # at x = 0 all three pieces tie (channels 0-3)
    check(backend, x, slope, intercept)


def test_ties_match_torch_maximum_exactly(backend):
    """At x = 0 both pieces tie: d/dx = (a1 + a2) / 2 and the slopes receive 0 (spec 19)."""
    dtype = torch.float64 if torch.float64 in backend.dtypes else torch.float32
    x = torch.tensor([0.0, 1.0, -1.0, 0.0], dtype=dtype).reshape(1, 1, 2, 2).to(backend.device)
    slope = torch.tensor([[[1.5, -0.5]]], dtype=dtype).to(backend.device)
    grad_y = torch.ones_like(x)
    fn = backend.fn("dynamic_relu")
    ours, _ = numerics.outputs_and_grads(lambda x, s: fn(x, s, None), [x, slope], grad_y)
    expected, _ = numerics.outputs_and_grads(
        lambda x, s: torch.maximum(s[..., 0, None, None] * x, s[..., 1, None, None] * x),
        [x, slope], grad_y)
    for a, e in zip(ours, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)
    assert ours[1].flatten()[0].item() == 0.5


def test_nan_and_inf_propagate_as_in_reference(backend):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 2.0]).reshape(1, 1, 2, 2)
    slope = torch.tensor([[[1.0, -0.5]]])
    x, slope = x.to(backend.device), slope.to(backend.device)
    torch.testing.assert_close(backend.fn("dynamic_relu")(x, slope, None),
                               reference.dynamic_relu(x, slope), equal_nan=True)


def test_misaligned_storage(backend, dtype):
    """x and grad_y at odd storage offsets (the CUDA kernels' scalar path)."""
    B, C, H, W = 2, 16, 8, 8
    x = torch.randn(B * C * H * W + 1).to(backend.device, dtype)[1:].view(B, C, H, W)
    check(backend, x, torch.randn(B, C, 2).to(backend.device, dtype), None)


@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (2, 4, 0, 5), (2, 0, 3, 3)], ids=str)
def test_empty_inputs_give_empty_results(backend, shape):
    B, C = shape[:2]
    x = numerics.leaf(torch.randn(shape).to(backend.device))
    slope = numerics.leaf(torch.randn(B, C, 2).to(backend.device))
    intercept = numerics.leaf(torch.randn(B, C, 2).to(backend.device))
    y = backend.fn("dynamic_relu")(x, slope, intercept)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == shape and slope.grad.shape == (B, C, 2)
    assert not slope.grad.any() and not intercept.grad.any()


def test_backward_op_gives_the_gradient_of_a_zero_intercept(backend, dtype):
    """Without an intercept the backward op still returns grad_intercept: that of zeros."""
    x, slope, _ = make_inputs((2, 6, 5, 4), 2, False, dtype, "channels_last", backend.device)
    grad_y = torch.randn(x.shape).to(backend.device, dtype)
    _, _, grad_intercept = backend.ops("dynamic_relu")["dynamic_relu_backward"](
        grad_y, x, slope, None)
    zero = torch.zeros_like(slope)
    expected, _ = numerics.outputs_and_grads(reference.dynamic_relu, [x, slope, zero], grad_y,
                                             numerics.high_precision(dtype))
    if dtype in numerics.LOW_PRECISION:
        low, _ = numerics.outputs_and_grads(reference.dynamic_relu, [x, slope, zero], grad_y)
        numerics.assert_within_2x(grad_intercept, low[3], expected[3], "grad_intercept")
    else:
        numerics.assert_tight(grad_intercept, expected[3], "grad_intercept")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("with_intercept", [False, True])
def test_gradcheck_fp64(backend, layout, with_intercept):
    requires(backend, fp64=True)
    x = numerics.leaf(make_inputs((2, 3, 4, 5), 1, False, torch.float64, layout,
                                  backend.device)[0])
    _, slope, intercept = make_inputs((2, 3, 4, 5), 3, with_intercept, torch.float64,
                                      device=backend.device)
    inputs = (x, numerics.leaf(slope), numerics.leaf(intercept) if with_intercept else None)
    assert torch.autograd.gradcheck(backend.fn("dynamic_relu"), inputs)


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


@pytest.mark.parametrize("route", ["entry_point", "dispatcher"])
@pytest.mark.parametrize("message,args", bad_inputs(), ids=[m for m, _ in bad_inputs()])
def test_bad_input_names_the_argument(backend, route, message, args):
    fn = op_backends.bad_input_target(backend, "dynamic_relu", route)
    with pytest.raises((ValueError, TypeError), match=message):
        fn(*op_backends.on_device(args, backend.device))


def test_bad_backward_input(backend):
    requires(backend, dispatcher=True)
    if backend.op_prefix:
        pytest.skip("the triton_* ops are internal: their entry point checks the input")
    x = torch.randn(2, 8, 4, 4).to(backend.device)
    slope = torch.randn(2, 8, 2).to(backend.device)
    with pytest.raises(ValueError, match="grad_y: expected the shape of x"):
        backend.ops("dynamic_relu")["dynamic_relu_backward"](x[:, :, :3], x, slope, None)


def test_unsupported_dtype_is_refused(backend):
    x, slope, _ = make_inputs((1, 3, 2, 2), 2, False, torch.float64, device=backend.device)
    op_backends.check_float64_refused(backend, "dynamic_relu", [x, slope])


def opcheck_samples(device):
    for layout, (K, with_intercept), needs_grad in itertools.product(
            numerics.LAYOUTS, [(1, True), (2, False)], [False, True]):
        x, slope, intercept = make_inputs((2, 3, 4, 5), K, with_intercept, torch.float32, layout,
                                          device)
        yield x.requires_grad_(needs_grad), slope.requires_grad_(True), intercept


@pytest.mark.parametrize("sample", range(12))
def test_opcheck(backend, sample):
    requires(backend, dispatcher=True)
    ops = backend.ops("dynamic_relu")
    x, slope, intercept = list(opcheck_samples(backend.device))[sample]
    torch.library.opcheck(ops["dynamic_relu"], (x, slope, intercept))
    torch.library.opcheck(ops["dynamic_relu_backward"],
                          (torch.randn_like(x), x.detach(), slope.detach(), intercept))


def test_compile_fullgraph(backend):
    requires(backend, dispatcher=True)
    fn = backend.fn("dynamic_relu")

    def block(x, slope, intercept):
        return fn(x, slope * 2.0, intercept).square()

    inputs = list(make_inputs((2, 4, 3, 5), 2, True, torch.float32, "channels_last",
                              backend.device))
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend.compile_backend)
    eager, grad_y = numerics.outputs_and_grads(block, inputs)
    got, _ = numerics.outputs_and_grads(compiled, inputs, grad_y)
    for name, a, b in zip(NAMES, got, eager):
        numerics.assert_tight(a, b, f"compiled {name}")


def test_drop_in_module_has_reference_state_dict_and_output(backend):
    requires(backend, dispatcher=True)
    ref = mobileformer.DynamicReLU(24, 128).to(backend.device)
    fused = mf_kernels.nn.DynamicReLU(24, 128).to(backend.device)
    fused.load_state_dict(ref.state_dict())
    assert list(fused.state_dict()) == list(ref.state_dict())
    x, token = torch.randn(2, 24, 9, 7).to(backend.device), torch.randn(2, 128).to(backend.device)
    numerics.assert_tight(fused(x, token), ref(x, token))


def test_runs_on_the_selected_backend(backend, dtype):
    requires(backend, dispatcher=True)
    assert mf_kernels.backends.backend_for("dynamic_relu", torch.device(backend.device),
                                           dtype) == backend.name



def test_beyond_32_bit_offsets(backend):
    """More than 2^31 elements: the last image must be addressed with 64-bit offsets."""
    op_backends.require_cuda_device(backend, free_bytes=12 * 2 ** 30)
    x = torch.randn(2, 64, 4096, 4097, device="cuda", dtype=torch.float16)
    slope = torch.randn(2, 64, 2, device="cuda", dtype=torch.float16)
    y = backend.fn("dynamic_relu")(x, slope)
    torch.testing.assert_close(y[-1], reference.dynamic_relu(x[-1:], slope[-1:])[0])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_and_triton_agree(dtype, layout):
    x, slope, intercept = make_inputs((2, 24, 13, 11), 2, True, dtype, layout, "cpu")
    if torch.cuda.is_available():
        x, slope, intercept = x.cuda(), slope.cuda(), intercept.cuda()
    op_backends.assert_cuda_and_triton_agree("dynamic_relu", [x, slope, intercept], NAMES)
