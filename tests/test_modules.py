"""Drop-in modules (mf_kernels.nn) against their reference modules: state_dict, forward,
every gradient (inputs and parameters), layouts, dtypes, compile, and the composite ops."""
import copy

import pytest
import torch

import mf_kernels
import mobileformer
from numerics import assert_tight, assert_within_2x, make_feature_map

D = 192


def bridge_case(kind, C, H, W, B=2, M=6, dtype=torch.float64, layout="contiguous"):
    """(reference module, fused module, inputs) with equal weights."""
    torch.manual_seed(1)
    ref = {"m2f": lambda: mobileformer.Mobile2Former(D, C),
           "f2m": lambda: mobileformer.Former2Mobile(D, C),
           "former": lambda: mobileformer.Former(D),
           "dyrelu": lambda: mobileformer.DynamicReLU(C, D)}[kind]().to(dtype)
    # Non-trivial parameters: the default init leaves biases at zero and LayerNorms at identity.
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fused = mf_kernels.accelerate(copy.deepcopy(ref))
    x = make_feature_map((B, C, H, W), dtype, layout)
    z = torch.randn(B, M, D, dtype=dtype)
    inputs = {"m2f": (x, z), "f2m": (x, z), "former": (z,), "dyrelu": (x, z[:, 0])}[kind]
    return ref, fused, inputs


def forward_backward(module, inputs, seed=2):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    module.zero_grad()
    out = module(*inputs)
    torch.manual_seed(seed)
    # By shape, not randn_like: a channels_last output would get other values from the seed.
    out.backward(torch.randn(out.shape, dtype=out.dtype))
    return [out.detach()] + [t.grad for t in inputs] + [p.grad.clone() for p in module.parameters()]


KINDS = ["m2f", "f2m", "former", "dyrelu"]


@pytest.mark.parametrize("kind", KINDS)
def test_same_state_dict_keys_and_class_hierarchy(kind):
    ref, fused, _ = bridge_case(kind, 24, 5, 5)
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert isinstance(fused, type(ref)) and type(fused) is not type(ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_all_gradients_match(kind, layout, dtype):
    ref, fused, inputs = bridge_case(kind, 40, 7, 9, dtype=dtype, layout=layout)
    for i, (a, e) in enumerate(zip(forward_backward(fused, inputs), forward_backward(ref, inputs))):
        assert_tight(a, e, f"{kind} tensor {i}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_within_twice_reference_error(kind, dtype):
    ref, fused, inputs = bridge_case(kind, 48, 14, 14, dtype=torch.float32)
    exact = forward_backward(ref, inputs)
    ref_low, fused_low = ref.to(dtype), fused.to(dtype)
    low_inputs = [t.to(dtype) for t in inputs]
    for i, (a, r, e) in enumerate(zip(forward_backward(fused_low, low_inputs),
                                       forward_backward(ref_low, low_inputs), exact)):
        assert_within_2x(a, r, e, f"{kind} tensor {i}")


@pytest.mark.parametrize("kind", ["m2f", "f2m", "dyrelu"])
def test_batch_one_and_odd_sizes(kind):
    ref, fused, inputs = bridge_case(kind, 20, 7, 9, B=1, M=3)
    for i, (a, e) in enumerate(zip(forward_backward(fused, inputs), forward_backward(ref, inputs))):
        assert_tight(a, e, f"{kind} tensor {i}")


@pytest.mark.parametrize("kind", KINDS)
def test_falls_back_to_python_composition_off_the_extension(kind):
    """With the reference backend forced, the drop-ins take their Python path; same numbers."""
    ref, fused, inputs = bridge_case(kind, 24, 6, 6)
    with mf_kernels.use_backend("reference"):
        for a, e in zip(forward_backward(fused, inputs), forward_backward(ref, inputs)):
            assert_tight(a, e)


@pytest.mark.parametrize("kind", KINDS)
def test_compile_fullgraph(kind):
    torch._dynamo.reset()
    ref, fused, inputs = bridge_case(kind, 24, 6, 6, dtype=torch.float32)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    for a, e in zip(forward_backward(compiled, inputs), forward_backward(ref, inputs)):
        assert_tight(a, e)


def composite_samples():
    ref, _, (x, z) = bridge_case("m2f", 24, 5, 5, dtype=torch.float32)
    yield "mobile2former", (x, z.requires_grad_(), ref.q.weight, ref.q.bias, ref.alpha[0].weight,
                            ref.alpha[0].bias, ref.proj.weight, ref.proj.bias,
                            ref.layer_norm.weight, ref.layer_norm.bias, 2)
    ref, _, (x, z) = bridge_case("f2m", 24, 5, 5, dtype=torch.float32)
    yield "former2mobile", (x.requires_grad_(), z, ref.k.weight, ref.k.bias, ref.proj.weight,
                            ref.proj.bias, 2)
    ref, _, (z,) = bridge_case("former", 24, 5, 5, dtype=torch.float32)
    yield "former", (z, ref.q.weight, ref.q.bias, ref.channel_mlp.weight, ref.channel_mlp.bias,
                     ref.layer_norm.weight, ref.layer_norm.bias, ref.ffn[0].weight,
                     ref.ffn[0].bias, ref.ffn[2].weight, ref.ffn[2].bias, ref.ffn_norm.weight,
                     ref.ffn_norm.bias, 4)
    ref, _, (x, t) = bridge_case("dyrelu", 24, 5, 5, dtype=torch.float32)
    h1, h2 = ref.hyper[0], ref.hyper[2]
    yield "hyper_dynamic_relu", (x, t, h1.weight, h1.bias, h2.weight, h2.bias)
    yield "dynamic_relu_slopes", (t, h1.weight, h1.bias, h2.weight, h2.bias)


@pytest.mark.parametrize("name,args", list(composite_samples()),
                         ids=[n for n, _ in composite_samples()])
def test_opcheck_composite_ops(name, args):
    torch.library.opcheck(getattr(torch.ops.mf_kernels, name), args)
