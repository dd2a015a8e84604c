"""m2f_attention on every backend (tests/op_backends.py) against mobileformer.functional.

out[b,m,hc] = sum_p softmax_p(s <q[b,m,hc], x[b,hc,p]>) x[b,hc,p]; the kernels' forward also
returns the softmax's log-sum-exp (m2f_attention_with_lse), which the backward takes. Every case
runs on every backend that can take it: forward and both gradients, all dtypes and layouts,
odd maps, one token, a detection head's 100, heads 1/2/4, every bridge of the seven variants,
split paths, large logits, empty inputs, bad input, gradcheck, opcheck and torch.compile.
"""
import os
import subprocess
import sys

import pytest
import torch

import mf_kernels
import numerics
import op_backends
from mobileformer import functional as reference
from op_backends import backend, requires, variant_sites  # noqa: F401  (backend: the fixture)

pytest_generate_tests = op_backends.parametrize

NAMES = ("out", "grad_x", "grad_q")
SHAPES = op_backends.ATTENTION_SHAPES


def make_inputs(shape, dtype, layout="contiguous", device="cpu", scale=1.0):
    B, C, H, W, M, heads = shape
    x = numerics.make_feature_map((B, C, H, W), dtype, layout, device, scale=scale)
    return x, torch.randn(B, M, C).to(device, dtype), heads


def check(backend, x, q, heads):
    return numerics.check_against_reference(backend.fn("m2f_attention"), reference.m2f_attention,
                                            [x, q, heads], NAMES)


@pytest.mark.parametrize("layout", numerics.LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, dtype, shape, layout):
    op_backends.interpreter_budget(backend, shape, dtype)
    check(backend, *make_inputs(shape, dtype, layout, backend.device))


def test_lse_is_the_log_sum_exp(backend, dtype):
    """lse[b,h,m] = log sum_p exp(s <q, x>), in fp32 (fp64 for fp64), [B, heads, M]."""
    x, q, heads = make_inputs((2, 24, 5, 7, 7, 3), dtype, "channels_last", backend.device)
    out, lse = backend.ops("m2f_attention")["m2f_attention_with_lse"](x, q, heads)
    high = numerics.high_precision(dtype)
    B, C, H, W = x.shape
    D = C // heads
    scores = torch.einsum("bmhd,bhdp->bhmp", q.to(high).view(B, -1, heads, D),
                          x.to(high).reshape(B, heads, D, H * W)) * D ** -0.5
    assert lse.dtype == high and lse.shape == (B, heads, q.shape[1])
    numerics.assert_tight(lse, scores.logsumexp(-1), "lse")
    assert out.shape == q.shape and out.dtype == dtype


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_variant_bridge(backend, layout):
    """Every Mobile->Former bridge of the seven variants at 224x224 (batch 1, fp32; the
    interpreter takes the maps up to 14x14)."""
    for C, H, W, M, heads in op_backends.sites_for(backend, variant_sites().m2f_attention):
        check(backend, *make_inputs((1, C, H, W, M, heads), torch.float32, layout,
                                    backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", op_backends.LARGE_ATTENTION_SHAPES, ids=str)
def test_large_maps(backend, shape, layout):
    """Positions split across programs/blocks (and, with M = 40, several token chunks)."""
    requires(backend, small=False)
    check(backend, *make_inputs(shape, torch.float32, layout, backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("split", ["split", "one-split"])
def test_split_and_combine(backend, layout, split, monkeypatch):
    """Work split over positions and merged (online-softmax partials): Triton with 16-position
    tiles and splits (or one split), the CPU with three threads, the CUDA emulation planning
    for 200 SMs (or 1)."""
    if backend.op_prefix:
        from mf_kernels.triton import m2f_attention as module
        monkeypatch.setattr(module, "MAX_BLOCK_P", 16)
        monkeypatch.setattr(module, "POSITIONS_PER_SPLIT", 16 if split == "split" else 1 << 30)
    monkeypatch.setenv("MF_EMU_SMS", "200" if split == "split" else "1")
    with op_backends.threads(3 if split == "split" else 1):
        check(backend, *make_inputs((2, 24, 11, 13, 6, 2), torch.float32, layout,
                                    backend.device))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 8, 1, 5), (2, 8, 5, 1), (1, 8, 3, 4)], ids=str)
def test_strides_of_size1_dims_are_ignored(backend, shape, layout):
    """Still contiguous in its layout: the kernels must step through positions by the layout's
    strides, not by stride(3)."""
    x = numerics.with_odd_size1_strides(
        numerics.make_feature_map(shape, torch.float32, layout, backend.device))
    check(backend, x, torch.randn(shape[0], 3, shape[1]).to(backend.device), 2)


def test_tokens_with_odd_strides(backend):
    x, q, heads = make_inputs((2, 8, 3, 5, 4, 2), torch.float32, "channels_last", backend.device)
    check(backend, x, q.transpose(0, 1).contiguous().transpose(0, 1), heads)


def test_large_logits_stay_finite(backend, low_dtype):
    """Logits in the hundreds: exp overflows fp16 without the max subtraction in fp32."""
    x, _, heads = make_inputs((2, 32, 9, 11, 6, 2), low_dtype, "contiguous", backend.device, 30.0)
    check(backend, x, (3.0 * torch.randn(2, 6, 32)).to(backend.device, low_dtype), heads)


@pytest.mark.parametrize("seed", range(4))
def test_grad_q_on_a_large_map(backend, low_dtype, seed):
    """grad_q sums dS = A (dA - delta) over all H*W positions. A delta taken from the forward
    output as stored (rounded to fp16/bf16) shifts every dS of a row alike, and the sum then
    carries that shift coherently: in bf16 on this 112x112 site, seeds 0-3 came out 11, 5.8,
    133 and 0.7 ulp off the exact result on these inputs (the bf16 reference's own errors:
    2.4, 2.5, 125, 0.6). The kernels cancel it (sum_p dS = 0 exactly); grad_q must then be
    within twice the reference's error, in ulp of the exact result, or within one ulp (a
    result rounded once from fp32 sums is within half of one)."""
    requires(backend, small=False)
    generator = torch.Generator().manual_seed(seed)
    x, q, grad_out = (torch.randn(shape, generator=generator).to(low_dtype)
                      for shape in ((1, 12, 112, 112), (1, 4, 12), (1, 4, 12)))

    def grad_q(fn, dtype, device):
        q_leaf = q.to(device, dtype).requires_grad_()
        out = fn(x.to(device, dtype), q_leaf, 2)
        return torch.autograd.grad(out, q_leaf, grad_out.to(device, dtype))[0].cpu().double()

    exact = grad_q(reference.m2f_attention, torch.float64, "cpu")
    # The spacing of low_dtype at each exact value: one ulp.
    mantissa_bits = {torch.float16: 10, torch.bfloat16: 7}[low_dtype]
    ulp = torch.exp2(torch.floor(torch.log2(exact.abs())) - mantissa_bits)

    def ulps(result):
        return ((result - exact).abs() / ulp).max().item()

    got = ulps(grad_q(backend.fn("m2f_attention"), low_dtype, backend.device))
    own = ulps(grad_q(reference.m2f_attention, low_dtype, "cpu"))
    assert got <= max(1.0, 2 * own), (f"grad_q is {got:.2f} ulp off the exact result; the "
                                       f"reference in {low_dtype}: {own:.2f} ulp")


@pytest.mark.parametrize("shape", [(0, 8, 3, 3, 4), (2, 8, 3, 3, 0), (2, 8, 0, 3, 4),
                                   (2, 8, 3, 0, 0)], ids=str)
def test_empty(backend, shape):
    B, C, H, W, M = shape
    x, q, _ = make_inputs((B, C, H, W, M, 2), torch.float32, device=backend.device)
    out, grad_x, grad_q = check(backend, x, q, 2)
    assert out.shape == (B, M, C) and not out.any()  # attending to no position gives zeros
    assert grad_x.shape == x.shape and not grad_x.any() and not grad_q.any()


def test_gradcheck(backend):
    requires(backend, fp64=True)
    x, q, heads = make_inputs((2, 8, 3, 5, 3, 2), torch.float64, "channels_last", backend.device)
    fn = backend.fn("m2f_attention")
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, heads),
                                    (numerics.leaf(x), numerics.leaf(q)))


def opcheck_samples(device, dtype):
    x, q, _ = make_inputs((2, 8, 5, 3, 4, 2), dtype, device=device)
    xcl, qcl, _ = make_inputs((1, 16, 4, 4, 3, 4), dtype, "channels_last", device)
    x1, q1, _ = make_inputs((1, 16, 6, 6, 1, 1), dtype, "sliced", device)
    return [(x, q, 2), (x.clone().requires_grad_(), q, 2), (x, q.clone().requires_grad_(), 4),
            (xcl.requires_grad_(), qcl.requires_grad_(), 4), (x1, q1, 1)]


@pytest.mark.parametrize("sample", range(5))
def test_opcheck(backend, sample):
    requires(backend, dispatcher=True)
    ops = backend.ops("m2f_attention")
    dtype = torch.float64 if torch.float64 in backend.dtypes and sample == 4 else torch.float32
    x, q, heads = opcheck_samples(backend.device, dtype)[sample]
    torch.library.opcheck(ops["m2f_attention_with_lse"], (x, q, heads))
    if "m2f_attention" in ops:  # the extension's CompositeImplicitAutograd out-only op
        torch.library.opcheck(ops["m2f_attention"], (x, q, heads))
    out, lse = ops["m2f_attention_with_lse"](x.detach(), q.detach(), heads)
    torch.library.opcheck(ops["m2f_attention_backward"],
                          (torch.randn_like(out), x.detach(), q.detach(), out, lse, heads))


def test_compile_fullgraph_both_attention_ops(backend):
    requires(backend, dispatcher=True)
    m2f, f2m = backend.fn("m2f_attention"), backend.fn("f2m_attention")

    def block(x, q, k, v):
        o = m2f(x, q, 2)
        return f2m(x, k + o, v, 2).square().sum() + o.square().sum()

    inputs = [numerics.make_feature_map((2, 16, 5, 7), torch.float32, "channels_last",
                                        backend.device)]
    inputs += [torch.randn(2, 6, 16).to(backend.device) for _ in range(3)]
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend.compile_backend)
    eager, grad = numerics.outputs_and_grads(block, inputs)
    got, _ = numerics.outputs_and_grads(compiled, inputs, grad)
    for name, a, b in zip(["loss", "grad_x", "grad_q", "grad_k", "grad_v"], got, eager):
        numerics.assert_tight(a, b, f"compiled {name}")


def bad_inputs():
    x = torch.randn(2, 8, 3, 3)
    q = torch.randn(2, 4, 8)
    return [  # (x, q, heads), exception, fragment of the message
        ((x[0], q, 2), ValueError, "x: expected a 4-D tensor"),
        ((x.int(), q.int(), 2), TypeError, "x: expected a floating-point tensor"),
        ((x, q, 0), ValueError, "heads: expected a positive number"),
        ((x, q, -2), ValueError, "heads: expected a positive number"),
        ((x, q, 3), ValueError, "heads: x has 8 channels"),
        ((x, q[0], 2), ValueError, "q: expected a 3-D tensor"),
        ((x, torch.randn(3, 4, 8), 2), ValueError, "q: expected shape [B, M, C]"),
        ((x, torch.randn(2, 4, 6), 2), ValueError, "q: expected shape [B, M, C]"),
        ((x, q.double(), 2), TypeError, "q: expected dtype"),
        ((x, q.to("meta"), 2), ValueError, "q: expected device"),
    ]


@pytest.mark.parametrize("route", ["entry_point", "dispatcher"])
@pytest.mark.parametrize("case", range(10))
def test_bad_input_raises(backend, case, route):
    args, error, message = bad_inputs()[case]
    fn = op_backends.bad_input_target(backend, "m2f_attention", route)
    with pytest.raises(error, match=message.replace("[", r"\[")):
        fn(*op_backends.on_device(args, backend.device))


def test_bad_backward_input_raises(backend):
    if backend.op_prefix:
        pytest.skip("the triton_* ops are internal: their entry point checks the input")
    ops = backend.ops("m2f_attention")
    x, q = torch.randn(2, 8, 3, 3).to(backend.device), torch.randn(2, 4, 8).to(backend.device)
    out, lse = ops["m2f_attention_with_lse"](x, q, 2)
    bwd = ops["m2f_attention_backward"]
    for args, error, message in [
            ((out[:, :2], x, q, out, lse, 2), ValueError, "grad_out: expected the shape of q"),
            ((out.double(), x, q, out, lse, 2), TypeError, "grad_out: expected dtype"),
            ((out, x, q, out[:1], lse, 2), ValueError, "out: expected the shape of q"),
            ((out, x, q, out, lse[:, :1], 2), ValueError, "lse: expected shape"),
            ((out, x, q, out, lse.double(), 2), TypeError, "lse: expected dtype"),
            ((out, x, q, out, lse, 5), ValueError, "heads: x has 8 channels")]:
        with pytest.raises(error, match=message):
            bwd(*args)


def test_unsupported_dtype_is_refused(backend):
    op_backends.check_float64_refused(
        backend, "m2f_attention", make_inputs((1, 8, 2, 2, 3, 2), torch.float64,
                                              device=backend.device))


def test_runs_on_the_selected_backend(backend, dtype):
    requires(backend, dispatcher=True)
    assert mf_kernels.backends.backend_for("m2f_attention", torch.device(backend.device),
                                           dtype) == backend.name



def test_beyond_32_bit_offsets(backend):
    """More than 2^31 elements: the last image must be addressed with 64-bit offsets."""
    op_backends.require_cuda_device(backend, free_bytes=8 * 2 ** 30)
    x = torch.randn(2, 64, 4096, 4097, device="cuda", dtype=torch.float16)
    q = torch.randn(2, 6, 64, device="cuda", dtype=torch.float16)
    out = backend.fn("m2f_attention")(x, q, 2)
    expected = reference.m2f_attention(x[-1:].float(), q[-1:].float(), 2)[0]
    torch.testing.assert_close(out[-1].float(), expected, rtol=2e-2, atol=2e-2)


def test_baseline_instruction_set(backend):
    """ATEN_CPU_CAPABILITY=default selects the SSE2/NEON build of the CPU attention kernels;
    everything else here runs the AVX2 build (on a machine that has AVX2). Reruns the numerical
    cases of both attention ops on the baseline build, in a child process (the choice is made
    once per process)."""
    if backend.id != "cpu":
        pytest.skip("the CPU kernels' instruction sets")
    if os.environ.get("ATEN_CPU_CAPABILITY") == "default":
        pytest.skip("this process already runs the baseline build")
    tests = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(tests, f"test_{op}_attention.py") for op in ("m2f", "f2m")]
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *files, "-k",
               "cpu and (matches_reference or large_logits or split_and_combine)"]
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    result = subprocess.run(command, cwd=os.path.dirname(tests), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("tokens", [6, 100])
def test_cuda_and_triton_agree(dtype, layout, tokens):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, q, heads = make_inputs((2, 40, 13, 11, tokens, 2), dtype, layout, device)
    op_backends.assert_cuda_and_triton_agree("m2f_attention", [x, q, heads], NAMES)
