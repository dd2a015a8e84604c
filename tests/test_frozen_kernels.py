"""The frozen CPU path's kernels (csrc/cpu/frozen/), one at a time, against ATen.

Every instruction-set build this CPU can run is tested (baseline, AVX2, AVX-512), on the
channel counts of every convolution of the seven variants and on odd ones (not multiples of
any vector width), with odd map sizes, 1x1 maps and both strides.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mf_kernels
import mobileformer
from mf_kernels import frozen_plan
from mobileformer import functional as reference
from numerics import assert_tight

pytestmark = pytest.mark.skipif(not mf_kernels._extension.LOADED,
                                reason="needs the C++ extension")

ISA_ORDER = ("baseline", "avx2", "avx512")


def _supported_isas():
    if not mf_kernels._extension.LOADED:
        return []
    best = torch.ops.mf_kernels.cpu_isa()
    return list(ISA_ORDER[:ISA_ORDER.index(best) + 1])


ISAS = _supported_isas()


def _conv_shapes():
    """(kind, C_in, C_out, groups, stride) of every convolution of the seven variants."""
    shapes = set()
    for name in mobileformer.VARIANT_NAMES:
        for m in mobileformer.create_model(name).modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1):
                shapes.add(("pointwise", m.in_channels, m.out_channels, m.groups, 1))
            elif isinstance(m, torch.nn.Conv2d) and m.groups > 1:
                shapes.add(("depthwise", m.in_channels, m.out_channels, m.groups, m.stride[0]))
    return sorted(shapes)


CONV_SHAPES = _conv_shapes()
POINTWISE = sorted({(c_in // g, c_out // g) for kind, c_in, c_out, g, _ in CONV_SHAPES
                    if kind == "pointwise"} | {(1, 1), (3, 5), (17, 33), (45, 70)})
DEPTHWISE = sorted({(c_in, s) for kind, c_in, _, _, s in CONV_SHAPES if kind == "depthwise"}
                   | {(1, 1), (5, 2), (23, 1), (33, 2)})


def _act_reference(y, act, slopes):
    if act == 1:
        return y.clamp(0, 6)
    if act == 2:
        return torch.maximum(y * slopes[0], y * slopes[1])
    return y


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k,n", POINTWISE)
def test_linear_matches_matmul(isa, k, n):
    rows = 37  # six-row micro-tiles and a remainder of one
    x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
    out = torch.ops.mf_kernels.frozen_linear(x, frozen_plan.pack(w.t()), b, 0, None, None,
                                             None, isa)
    assert_tight(out, x @ w.t() + b)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("act", [1, 2])
@pytest.mark.parametrize("rows,k,n", [(1, 192, 384), (6, 48, 1920), (13, 20, 60), (50, 7, 3)])
def test_linear_epilogues(isa, act, rows, k, n):
    x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n) * 4
    slopes = torch.randn(2, n)
    residual = torch.randn(rows, n)
    out = torch.ops.mf_kernels.frozen_linear(x, frozen_plan.pack(w.t()), b, act, slopes,
                                             residual, None, isa)
    assert_tight(out, _act_reference(x @ w.t() + b, act, slopes) + residual)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,groups", [(12, 4), (36, 4), (96, 4), (24, 8)])
def test_linear_stores_through_a_channel_shuffle(isa, n, groups):
    """MF-26M: the shuffle after a convolution is folded into the GEMM's stores."""
    rows, k = 11, 9
    x, w, b = torch.randn(rows, k), torch.randn(n, k), torch.randn(n)
    slopes, residual = torch.randn(2, n), torch.randn(rows, n)
    shuffle = mobileformer.layers.ChannelShuffle(groups)
    column_map = torch.argsort(frozen_plan.shuffle_source(shuffle, n)).to(torch.int32)
    out = torch.ops.mf_kernels.frozen_linear(x, frozen_plan.pack(w.t()), b, 2, slopes,
                                             residual, column_map, isa)
    y = _act_reference(x @ w.t() + b, 2, slopes)
    expected = shuffle(y.t().reshape(1, n, rows, 1)).reshape(n, rows).t() + residual
    assert_tight(out, expected)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("channels,stride", DEPTHWISE)
def test_depthwise_matches_conv2d(isa, channels, stride):
    w, b = torch.randn(channels, 1, 3, 3), torch.randn(channels)
    slopes = torch.randn(2, channels)
    # 1x1 and 2x3 maps are all edges; 7x9 and 14x13 have interiors of both parities.
    for height, width in [(1, 1), (2, 3), (7, 9), (14, 13)]:
        x = torch.randn(height, width, channels)
        conv = F.conv2d(x.permute(2, 0, 1)[None], w, b, stride=stride, padding=1,
                        groups=channels)[0].permute(1, 2, 0)
        for act in (0, 1, 2):
            out = torch.ops.mf_kernels.frozen_depthwise(
                x, w.reshape(channels, 9).t().contiguous(), b, stride, act,
                slopes if act == 2 else None, isa)
            assert_tight(out, _act_reference(conv, act, slopes), f"{height}x{width} act {act}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("positions,channels,tokens,heads", [
    (3136, 20, 6, 2), (196, 112, 6, 2), (49, 192, 6, 2), (784, 24, 3, 2), (1, 96, 3, 2),
    (61, 30, 4, 2), (13, 8, 100, 2), (20, 48, 37, 3)])
def test_attention_matches_reference(isa, positions, channels, tokens, heads):
    x, q = torch.randn(positions, channels), torch.randn(tokens, channels)
    k, v = torch.randn(tokens, channels), torch.randn(tokens, channels)
    nchw = x.t().reshape(1, channels, positions, 1)
    m2f = torch.ops.mf_kernels.frozen_attention(x, q, None, heads, isa)
    assert_tight(m2f, reference.m2f_attention(nchw, q[None], heads)[0])
    f2m = torch.ops.mf_kernels.frozen_attention(x, k, v, heads, isa)
    expected = reference.f2m_attention(nchw, k[None], v[None], heads)[0]
    assert_tight(f2m, expected.reshape(channels, positions).t())


@pytest.mark.parametrize("isa", ISAS)
def test_gelu_matches_torch(isa):
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.randn(1000) * 3,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0])])
    out = torch.ops.mf_kernels.frozen_gelu(x, isa)
    expected = F.gelu(x.double())
    # Relative to max(1, |gelu(x)|): a few fp32 ulps, as torch's own fp32 GELU.
    error = (out.double() - expected).abs() / expected.abs().clamp_min(1.0)
    assert error.max().item() < 1e-6


def test_cpu_isa_names_a_build():
    assert mf_kernels.cpu_isa() in ISA_ORDER
    assert ISAS[-1] == mf_kernels.cpu_isa()


def test_unknown_isa_is_a_clear_error():
    with pytest.raises(ValueError, match="isa: expected baseline, avx2 or avx512"):
        torch.ops.mf_kernels.frozen_gelu(torch.randn(4), "avx9000")


def test_kernel_ops_pass_opcheck():
    x, w, b = torch.randn(7, 12), torch.randn(20, 12), torch.randn(20)
    torch.library.opcheck(torch.ops.mf_kernels.frozen_linear,
                          (x, frozen_plan.pack(w.t()), b, 1, None, None, None))
    torch.library.opcheck(torch.ops.mf_kernels.frozen_depthwise,
                          (torch.randn(5, 6, 8), torch.randn(9, 8), torch.randn(8), 2, 1, None))
    torch.library.opcheck(torch.ops.mf_kernels.frozen_attention,
                          (torch.randn(30, 8), torch.randn(3, 8), None, 2))
    torch.library.opcheck(torch.ops.mf_kernels.frozen_gelu, (torch.randn(33),))
