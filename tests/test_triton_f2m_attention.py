"""Triton f2m_attention against mobileformer.functional.f2m_attention (forward and gradients).

CPU: interpreter, fp32, small shapes. GPU: TRITON_INTERPRET=0, fp32/fp16/bf16.
"""
import pytest
import torch

import numerics
from mobileformer import functional as reference
from triton_support import (assert_matches, compile_backend, device_dtype, gpu,  # noqa: F401
                            interpreted, run_with_grads, triton_device)

pytest.importorskip("triton")
from mf_kernels.triton import f2m_attention as module  # noqa: E402

NAMES = ("y", "grad_x", "grad_k", "grad_v")

# (B, C, H, W, M, heads): odd maps (positions not a multiple of the tile), one token, 20
# channels per head (not a power of two), 2 channels per head.
SHAPES = [(2, 8, 5, 7, 6, 2), (1, 40, 3, 5, 3, 2), (2, 6, 3, 3, 1, 3)]


def make_inputs(shape, dtype, layout="contiguous", device="cpu"):
    B, C, H, W, M, heads = shape
    x = numerics.make_feature_map((B, C, H, W), dtype, layout, device)
    k = torch.randn(B, M, C, device=device).to(dtype)
    v = torch.randn(B, M, C, device=device).to(dtype)
    return x, k, v, heads


def check(x, k, v, heads):
    assert_matches(module.f2m_attention, reference.f2m_attention, [x, k, v, heads], NAMES,
                   check_layout=x)


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device_dtype, layout, shape):
    device, dtype = device_dtype
    check(*make_inputs(shape, dtype, layout, device))


def test_many_tokens(device_dtype):
    """M = 100 tokens (a loop of 100 in the kernel: slow under the interpreter, so one map)."""
    device, dtype = device_dtype
    check(*make_inputs((1, 4, 2, 3, 100, 2), dtype, "channels_last", device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_tiles_and_runs(device_dtype, layout, monkeypatch):
    """16-position tiles: three tiles of a 6x7 map in the forward, and in the backward three
    programs each writing grad_k/grad_v partials that are summed."""
    device, dtype = device_dtype
    monkeypatch.setattr(module, "MAX_BLOCK_P", 16)
    monkeypatch.setattr(module, "POSITIONS_PER_SPLIT", 16)
    check(*make_inputs((2, 12, 6, 7, 6, 2), dtype, layout, device))


def test_tokens_with_odd_strides(device_dtype):
    device, dtype = device_dtype
    x, k, v, heads = make_inputs((2, 8, 3, 5, 4, 2), dtype, "channels_last", device)
    kv = torch.stack([k, v], dim=-1)  # k and v interleaved: channel stride 2
    check(x, kv[..., 0], kv[..., 1], heads)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3, 6, 2), (2, 4, 3, 3, 0, 2), (2, 4, 0, 3, 6, 2)],
                         ids=["B=0", "M=0", "HW=0"])
def test_empty(device_dtype, shape):
    device, dtype = device_dtype
    x, k, v, heads = make_inputs(shape, dtype, device=device)
    y, grad_x, grad_k, grad_v = run_with_grads(module.f2m_attention, [x, k, v, heads])
    y_ref, grad_x_ref, _, _ = run_with_grads(reference.f2m_attention, [x, k, v, heads])
    assert torch.equal(y, y_ref)  # no token: the residual alone
    assert torch.equal(grad_x, grad_x_ref)
    assert grad_k.shape == k.shape and not grad_k.any()
    assert grad_v.shape == v.shape and not grad_v.any()


def test_low_precision_interpreted(interpreted):
    """fp16/bf16 on the interpreter (the GPU runs every test in these dtypes)."""
    for dtype in numerics.LOW_PRECISION:
        check(*make_inputs((2, 8, 5, 7, 6, 2), dtype, "channels_last"))


def test_opcheck(device_dtype):
    device, dtype = device_dtype
    x, k, v, heads = make_inputs((2, 8, 3, 5, 6, 2), dtype, "channels_last", device)
    for t in (x, k, v):
        t.requires_grad_(True)
    torch.library.opcheck(torch.ops.mf_kernels.triton_f2m_attention.default, (x, k, v, heads))
    torch.library.opcheck(torch.ops.mf_kernels.triton_f2m_attention_backward.default,
                          (torch.randn_like(x), x.detach(), k.detach(), v.detach(), heads))


def test_compile_fullgraph(device_dtype):
    """On the CPU the interpreted op stays opaque in the graph (aot_eager); on a GPU inductor
    traces into the kernels."""
    device, dtype = device_dtype
    torch._dynamo.reset()
    compiled = torch.compile(module.f2m_attention, fullgraph=True,
                             backend=compile_backend(device))
    assert_matches(compiled, reference.f2m_attention,
                   list(make_inputs((2, 8, 3, 5, 6, 2), dtype, "channels_last", device)), NAMES)


def test_through_backend_selection(device_dtype):
    import mf_kernels
    from mf_kernels import backends

    device, dtype = device_dtype
    x, k, v, heads = make_inputs((2, 8, 3, 5, 6, 2), dtype, device=device)
    with mf_kernels.use_backend("triton"):
        assert backends.backend_for("f2m_attention", x.device) == "triton"
        entry = getattr(mf_kernels.ops, "f2m_attention", None)  # the typed entry point, once
        entry = entry or backends.implementation("f2m_attention", x.device)  # it exists
        assert_matches(entry, reference.f2m_attention, [x, k, v, heads], NAMES)


def test_rejects_bad_input(triton_device):
    x, k, v, heads = make_inputs((1, 8, 2, 2, 3, 2), torch.float32,
                                   device=triton_device)
    with pytest.raises(TypeError, match="^x: .*float64"):
        module.f2m_attention(x.double(), k.double(), v.double(), heads)
    with pytest.raises(ValueError, match="^heads"):
        module.f2m_attention(x, k, v, 3)
    with pytest.raises(ValueError, match="^v"):
        module.f2m_attention(x, k, v[:, :2], heads)
    with pytest.raises(TypeError, match="^k"):
        module.f2m_attention(x, k.half(), v, heads)


def test_larger_maps(gpu):
    """Mobile-Former sizes: 6 tokens, up to 120 channels per head, up to 56x56 maps."""
    for B, C, H, W in [(1, 48, 56, 56), (2, 240, 14, 14), (128, 64, 28, 28)]:
        for layout in ("contiguous", "channels_last"):
            for dtype in (torch.float32, torch.bfloat16):
                check(*make_inputs((B, C, H, W, 6, 2), dtype, layout, gpu))


def test_beyond_32_bit_offsets(gpu):
    """More than 2^31 elements: the last image must be addressed with 64-bit offsets."""
    if torch.cuda.mem_get_info()[0] < 16 * 2 ** 30:
        pytest.skip("needs 16 GiB of free GPU memory")
    x = torch.randn(2, 64, 4096, 4097, device=gpu, dtype=torch.float16)
    k = torch.randn(2, 6, 64, device=gpu, dtype=torch.float16)
    v = torch.randn(2, 6, 64, device=gpu, dtype=torch.float16)
    y = module.f2m_attention(x, k, v, 2)
    expected = reference.f2m_attention(x[-1:], k[-1:], v[-1:], 2)[0]
    torch.testing.assert_close(y[-1], expected, rtol=1e-2, atol=1e-2)
