"""Triton m2f_attention against mobileformer.functional.m2f_attention (forward and gradients).

CPU: interpreter, fp32, small shapes. GPU: TRITON_INTERPRET=0, fp32/fp16/bf16.
"""
import pytest
import torch

import numerics
from mobileformer import functional as reference
from triton_support import (assert_matches, compile_backend, device_dtype, gpu,  # noqa: F401
                            interpreted, run_with_grads, triton_device)

pytest.importorskip("triton")
from mf_kernels.triton import m2f_attention as module  # noqa: E402

NAMES = ("out", "grad_x", "grad_q")

# (B, C, H, W, M, heads): odd maps (positions not a multiple of the tile), one token, 20
# channels per head (not a power of two), 2 channels per head, many tokens on a tiny map.
SHAPES = [(2, 8, 5, 7, 6, 2), (1, 40, 3, 5, 3, 2), (2, 6, 3, 3, 1, 3), (1, 4, 3, 5, 100, 2)]


def make_inputs(shape, dtype, layout="contiguous", device="cpu"):
    B, C, H, W, M, heads = shape
    x = numerics.make_feature_map((B, C, H, W), dtype, layout, device)
    q = torch.randn(B, M, C, device=device).to(dtype)
    return x, q, heads


def check(x, q, heads):
    assert_matches(module.m2f_attention, reference.m2f_attention, [x, q, heads], NAMES)


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(device_dtype, layout, shape):
    device, dtype = device_dtype
    check(*make_inputs(shape, dtype, layout, device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("positions_per_split", [16, 1 << 30], ids=["split", "one-split"])
def test_split_and_combine(device_dtype, layout, positions_per_split, monkeypatch):
    """16-position tiles and splits: three splits of a 6x7 map go through the combine kernel
    (and the backward's per-split grad_q partials); one split writes out directly."""
    device, dtype = device_dtype
    monkeypatch.setattr(module, "MAX_BLOCK_P", 16)
    monkeypatch.setattr(module, "POSITIONS_PER_SPLIT", positions_per_split)
    check(*make_inputs((2, 12, 6, 7, 6, 2), dtype, layout, device))


def test_q_with_odd_strides(device_dtype):
    device, dtype = device_dtype
    x, q, heads = make_inputs((2, 8, 3, 5, 4, 2), dtype, "channels_last", device)
    q = q.transpose(0, 1).contiguous().transpose(0, 1)  # [B, M, C] with B not outermost
    check(x, q, heads)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3, 6, 2), (2, 4, 3, 3, 0, 2), (2, 4, 0, 3, 6, 2)],
                         ids=["B=0", "M=0", "HW=0"])
def test_empty(device_dtype, shape):
    device, dtype = device_dtype
    x, q, heads = make_inputs(shape, dtype, device=device)
    out, grad_x, grad_q = run_with_grads(module.m2f_attention, [x, q, heads])
    assert out.shape == q.shape and not out.any()  # attending to no position gives zeros
    assert grad_x.shape == x.shape and not grad_x.any()
    assert grad_q.shape == q.shape and not grad_q.any()


def test_low_precision_interpreted(interpreted):
    """fp16/bf16 on the interpreter (the GPU runs every test in these dtypes)."""
    for dtype in numerics.LOW_PRECISION:
        check(*make_inputs((2, 8, 5, 7, 6, 2), dtype, "channels_last"))


def test_opcheck(device_dtype):
    device, dtype = device_dtype
    x, q, heads = make_inputs((2, 8, 3, 5, 6, 2), dtype, "channels_last", device)
    x.requires_grad_(True)
    q.requires_grad_(True)
    torch.library.opcheck(torch.ops.mf_kernels.triton_m2f_attention.default, (x, q, heads))
    out = module.m2f_attention(x, q, heads).detach()
    torch.library.opcheck(torch.ops.mf_kernels.triton_m2f_attention_backward.default,
                          (torch.randn_like(out), x.detach(), q.detach(), out, heads))


def test_compile_fullgraph(device_dtype):
    """On the CPU the interpreted op stays opaque in the graph (aot_eager); on a GPU inductor
    traces into the kernels."""
    device, dtype = device_dtype
    torch._dynamo.reset()
    compiled = torch.compile(module.m2f_attention, fullgraph=True,
                             backend=compile_backend(device))
    assert_matches(compiled, reference.m2f_attention,
                   list(make_inputs((2, 8, 3, 5, 6, 2), dtype, "channels_last", device)), NAMES)


def test_through_backend_selection(device_dtype):
    import mf_kernels
    from mf_kernels import backends

    device, dtype = device_dtype
    x, q, heads = make_inputs((2, 8, 3, 5, 6, 2), dtype, device=device)
    with mf_kernels.use_backend("triton"):
        assert backends.backend_for("m2f_attention", x.device) == "triton"
        entry = getattr(mf_kernels.ops, "m2f_attention", None)  # the typed entry point, once
        entry = entry or backends.implementation("m2f_attention", x.device)  # it exists
        assert_matches(entry, reference.m2f_attention, [x, q, heads], NAMES)


def test_rejects_bad_input(triton_device):
    x, q, heads = make_inputs((1, 8, 2, 2, 3, 2), torch.float32, device=triton_device)
    with pytest.raises(TypeError, match="^x: .*float64"):
        module.m2f_attention(x.double(), q.double(), heads)
    with pytest.raises(ValueError, match="^heads"):
        module.m2f_attention(x, q, 3)
    with pytest.raises(ValueError, match="^q"):
        module.m2f_attention(x, q[:, :, :4], heads)
    with pytest.raises(TypeError, match="^q"):
        module.m2f_attention(x, q.half(), heads)


def test_larger_maps(gpu):
    """Mobile-Former sizes: 6 tokens, up to 120 channels per head, 56x56 maps, both layouts,
    the split path (B * heads below the SM count) and the single-split path."""
    for B, C, H, W in [(1, 48, 56, 56), (2, 240, 14, 14), (128, 64, 28, 28)]:
        for layout in ("contiguous", "channels_last"):
            for dtype in (torch.float32, torch.bfloat16):
                check(*make_inputs((B, C, H, W, 6, 2), dtype, layout, gpu))


def test_beyond_32_bit_offsets(gpu):
    """More than 2^31 elements: the last image must be addressed with 64-bit offsets."""
    if torch.cuda.mem_get_info()[0] < 8 * 2 ** 30:
        pytest.skip("needs 8 GiB of free GPU memory")
    x = torch.randn(2, 64, 4096, 4097, device=gpu, dtype=torch.float16)
    q = torch.randn(2, 6, 64, device=gpu, dtype=torch.float16)
    out = module.m2f_attention(x, q, 2)
    expected = reference.m2f_attention(x[-1:].float(), q[-1:].float(), 2)[0]
    torch.testing.assert_close(out[-1].float(), expected, rtol=2e-2, atol=2e-2)
