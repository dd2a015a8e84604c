"""f2m_attention on every backend (tests/op_backends.py) against mobileformer.functional.

y[b,hc,p] = x[b,hc,p] + sum_m softmax_m(s <x[b,hc,p], k[b,m,hc]>) v[b,m,hc]. Every case runs on
every backend that can take it: forward and every gradient, all dtypes and layouts, odd maps,
one token, a detection head's 100 (several token chunks), heads 1/2/4, every bridge of the
seven variants, split paths, large logits, empty inputs, bad input, gradcheck, opcheck and
torch.compile. (The compile test of both attention ops together, and the baseline-instruction
set run of both, are in test_m2f_attention.py.)
"""
import pytest
import torch

import mf_kernels
import numerics
import op_backends
from mobileformer import functional as reference
from op_backends import backend, requires, variant_sites  # noqa: F401  (backend: the fixture)

pytest_generate_tests = op_backends.parametrize

NAMES = ("y", "grad_x", "grad_k", "grad_v")
SHAPES = op_backends.ATTENTION_SHAPES


def make_inputs(shape, dtype, layout="contiguous", device="cpu", scale=1.0):
    B, C, H, W, M, heads = shape
    x = numerics.make_feature_map((B, C, H, W), dtype, layout, device, scale=scale)
    k = torch.randn(B, M, C).to(device, dtype)
    return x, k, torch.randn(B, M, C).to(device, dtype), heads


def check(backend, x, k, v, heads):
    return numerics.check_against_reference(backend.fn("f2m_attention"), reference.f2m_attention,
                                            [x, k, v, heads], NAMES, layout_of=x)


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, dtype, shape, layout):
    op_backends.interpreter_budget(backend, shape, dtype)
    check(backend, *make_inputs(shape, dtype, layout, backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_variant_bridge(backend, layout):
    """Every Former->Mobile bridge of the seven variants at 224x224 (batch 1, fp32; the
    interpreter takes the maps up to 14x14)."""
    for C, H, W, M, heads in op_backends.sites_for(backend, variant_sites().f2m_attention):
        check(backend, *make_inputs((1, C, H, W, M, heads), torch.float32, layout,
                                    backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", op_backends.LARGE_ATTENTION_SHAPES, ids=str)
def test_large_maps(backend, shape, layout):
    """Positions split across programs/blocks (and, with M = 40, several token chunks)."""
    requires(backend, small=False)
    check(backend, *make_inputs(shape, torch.float32, layout, backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("tokens", [6, 40])
def test_split_positions(backend, layout, tokens, monkeypatch):
    """The backward's sums over positions split and merged: Triton with 16-position runs, the
    CPU with three threads, the CUDA emulation planning for 200 SMs; 40 tokens take several
    chunks (Triton: 16 a chunk; CUDA: 32)."""
    if backend.op_prefix:
        from mf_kernels.triton import f2m_attention as module
        monkeypatch.setattr(module, "MAX_BLOCK_P", 16)
        monkeypatch.setattr(module, "POSITIONS_PER_SPLIT", 16)
    monkeypatch.setenv("MF_EMU_SMS", "200")
    with op_backends.threads(3):
        check(backend, *make_inputs((1, 24, 11, 13, tokens, 2), torch.float32, layout,
                                    backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 8, 1, 5), (2, 8, 5, 1), (1, 8, 3, 4)], ids=str)
def test_strides_of_size1_dims_are_ignored(backend, shape, layout):
    x = numerics.with_odd_size1_strides(
        numerics.make_feature_map(shape, torch.float32, layout, backend.device))
    B, C = shape[:2]
    k, v = (torch.randn(B, 3, C).to(backend.device) for _ in range(2))
    check(backend, x, k, v, 2)


def test_tokens_with_odd_strides(backend):
    x, k, v, heads = make_inputs((2, 8, 3, 5, 4, 2), torch.float32, "channels_last",
                                 backend.device)
    odd = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in (k, v)]
    check(backend, x, *odd, heads)


def test_large_logits_stay_finite(backend, low_dtype):
    x, _, v, heads = make_inputs((2, 32, 9, 11, 6, 2), low_dtype, "contiguous", backend.device,
                                 30.0)
    check(backend, x, (3.0 * torch.randn(2, 6, 32)).to(backend.device, low_dtype), v, heads)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(0, 8, 3, 3, 4), (2, 8, 3, 3, 0), (2, 8, 0, 3, 4),
                                   (2, 8, 3, 0, 0)], ids=str)
def test_empty(backend, shape, layout):
    B, C, H, W, M = shape
    x = numerics.make_feature_map((B, C, H, W), torch.float32, layout, backend.device)
    k, v = (torch.randn(B, M, C).to(backend.device) for _ in range(2))
    y, grad_x, grad_k, grad_v = check(backend, x, k, v, 2)
    assert y.shape == x.shape and grad_x.shape == x.shape
    assert not grad_k.any() and not grad_v.any()


def test_gradcheck(backend):
    requires(backend, fp64=True)
    x, k, v, heads = make_inputs((2, 8, 3, 5, 3, 2), torch.float64, "channels_last",
                                 backend.device)
    fn = backend.fn("f2m_attention")
    assert torch.autograd.gradcheck(lambda a, b, c: fn(a, b, c, heads),
                                    tuple(numerics.leaf(t) for t in (x, k, v)))


def opcheck_samples(device, dtype):
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    x, k, v, _ = make_inputs((2, 8, 5, 3, 4, 2), dtype, device=device)
    xcl, kcl, vcl, _ = make_inputs((1, 12, 4, 4, 3, 3), dtype, "channels_last", device)
    x1, k1, v1, _ = make_inputs((1, 8, 6, 6, 1, 2), dtype, "sliced", device)
    return [(x, k, v, 2), (rg(x), k, v, 2), (x, rg(k), v, 4), (x, k, rg(v), 1),
            (rg(xcl), rg(kcl), rg(vcl), 3), (x1, k1, v1, 2)]


@pytest.mark.parametrize("sample", range(6))
def test_opcheck(backend, sample):
    requires(backend, dispatcher=True)
    ops = backend.ops("f2m_attention")
    dtype = torch.float64 if torch.float64 in backend.dtypes and sample == 5 else torch.float32
    x, k, v, heads = opcheck_samples(backend.device, dtype)[sample]
    torch.library.opcheck(ops["f2m_attention"], (x, k, v, heads))
    torch.library.opcheck(ops["f2m_attention_backward"],
                          (torch.randn_like(x), x.detach(), k.detach(), v.detach(), heads))


def test_compile_fullgraph(backend):
    requires(backend, dispatcher=True)
    fn = backend.fn("f2m_attention")

    def block(x, k, v):
        return fn(x, k, v * 2.0, 2).square()

    inputs = list(make_inputs((2, 16, 5, 7, 6, 2), torch.float32, "channels_last",
                              backend.device))[:3]
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend.compile_backend)
    eager, grad = numerics.outputs_and_grads(block, inputs)
    got, _ = numerics.outputs_and_grads(compiled, inputs, grad)
    for name, a, b in zip(NAMES, got, eager):
        numerics.assert_tight(a, b, f"compiled {name}")


def bad_inputs():
    x = torch.randn(2, 8, 3, 3)
    k, v = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    return [  # (x, k, v, heads), exception, fragment of the message
        ((x[0], k, v, 2), ValueError, "x: expected a 4-D tensor"),
        ((x.half().int(), k.int(), v.int(), 2), TypeError, "x: expected a floating-point tensor"),
        ((x, k, v, 0), ValueError, "heads: expected a positive number"),
        ((x, k, v, -1), ValueError, "heads: expected a positive number"),
        ((x, k, v, 3), ValueError, "heads: x has 8 channels"),
        ((x, k[0], v, 2), ValueError, "k: expected a 3-D tensor"),
        ((x, k, v[0], 2), ValueError, "v: expected a 3-D tensor"),
        ((x, torch.randn(1, 4, 8), v, 2), ValueError, "k: expected shape [B, M, C]"),
        ((x, k, torch.randn(2, 4, 16), 2), ValueError, "v: expected shape [B, M, C]"),
        ((x, k, torch.randn(2, 5, 8), 2), ValueError, "v: expected the shape of k"),
        ((x, k.double(), v, 2), TypeError, "k: expected dtype"),
        ((x, k, v.half(), 2), TypeError, "v: expected dtype"),
        ((x, k, v.to("meta"), 2), ValueError, "v: expected device"),
    ]


@pytest.mark.parametrize("route", ["entry_point", "dispatcher"])
@pytest.mark.parametrize("case", range(13))
def test_bad_input_raises(backend, case, route):
    args, error, message = bad_inputs()[case]
    fn = op_backends.bad_input_target(backend, "f2m_attention", route)
    with pytest.raises(error, match=message.replace("[", r"\[")):
        fn(*op_backends.on_device(args, backend.device))


def test_bad_backward_input_raises(backend):
    if backend.op_prefix:
        pytest.skip("the triton_* ops are internal: their entry point checks the input")
    bwd = backend.ops("f2m_attention")["f2m_attention_backward"]
    x = torch.randn(2, 8, 3, 3).to(backend.device)
    k, v = (torch.randn(2, 4, 8).to(backend.device) for _ in range(2))
    with pytest.raises(ValueError, match="grad_y: expected the shape of x"):
        bwd(x[:, :, :2], x, k, v, 2)
    with pytest.raises(TypeError, match="grad_y: expected dtype"):
        bwd(x.double(), x, k, v, 2)
    with pytest.raises(ValueError, match="v: expected the shape of k"):
        bwd(x, x, k, v[:, :3], 2)


def test_unsupported_dtype_is_refused(backend):
    op_backends.check_float64_refused(
        backend, "f2m_attention", make_inputs((1, 8, 2, 2, 3, 2), torch.float64,
                                              device=backend.device))


def test_runs_on_the_selected_backend(backend, dtype):
    requires(backend, dispatcher=True)
    assert mf_kernels.backends.backend_for("f2m_attention", torch.device(backend.device),
                                           dtype) == backend.name



def test_beyond_32_bit_offsets(backend):
    """More than 2^31 elements: the last image must be addressed with 64-bit offsets."""
    op_backends.require_cuda_device(backend, free_bytes=12 * 2 ** 30)
    x = torch.randn(2, 64, 4096, 4097, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(2, 6, 64, device="cuda", dtype=torch.float16) for _ in range(2))
    y = backend.fn("f2m_attention")(x, k, v, 2)
    expected = reference.f2m_attention(x[-1:].float(), k[-1:].float(), v[-1:].float(), 2)[0]
    torch.testing.assert_close(y[-1].float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("tokens", [6, 100])
def test_cuda_and_triton_agree(dtype, layout, tokens):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, k, v, heads = make_inputs((2, 40, 13, 11, tokens, 2), dtype, layout, device)
    op_backends.assert_cuda_and_triton_agree("f2m_attention", [x, k, v, heads], NAMES)
