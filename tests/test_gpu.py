"""GPU-only behaviour of the cuda and triton backends that the CPU cannot show: inductor traces
through the ops (fullgraph), CUDA graphs replay them (``mode="reduce-overhead"``, forward and
backward), and they run on the current stream, not the default one.

Part of the curated GPU tier (``-m gpu``, run by bench/gpu/run.sh with TRITON_INTERPRET=0).
Without a GPU every test skips; CUDA is first touched inside a fixture, never at collection.
"""
import os

import pytest
import torch

import mf_kernels
from mf_kernels import backends
from mf_kernels.checking import numerics
from mobileformer import functional as reference

pytestmark = pytest.mark.gpu

BACKENDS = ("cuda", "triton")
DTYPES = (torch.float32, torch.bfloat16)


@pytest.fixture(params=BACKENDS)
def backend(request):
    name = request.param
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU is available")
    if name == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("compiled Triton: run with TRITON_INTERPRET=0")
    why = backends.reasons("dynamic_relu", name, "cuda", torch.float32)
    if why:
        pytest.skip("; ".join(why))
    return name


def bridge(x, z_q, z_k, z_v, slope):
    """A Mobile-Former block's three fused ops in a row: tokens read the map, the map reads the
    tokens, then the dynamic ReLU (the functions are those of `ops`, or of the reference)."""
    tokens = mf_kernels.ops.m2f_attention(x, z_q, 2)
    y = mf_kernels.ops.f2m_attention(x, z_k + tokens, z_v, 2)
    return mf_kernels.ops.dynamic_relu(y, slope), tokens


def reference_bridge(x, z_q, z_k, z_v, slope):
    tokens = reference.m2f_attention(x, z_q, 2)
    y = reference.f2m_attention(x, z_k + tokens, z_v, 2)
    return reference.dynamic_relu(y, slope), tokens


def inputs(dtype, batch=4, channels=64, size=14, tokens=6, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(batch, channels, size, size, device="cuda", generator=g).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    z = [torch.randn(batch, tokens, channels, device="cuda", generator=g).to(dtype)
         for _ in range(3)]
    slope = torch.randn(batch, channels, 2, device="cuda", generator=g).to(dtype)
    return [x, *z, slope]


def forward_backward(fn, tensors, grad_seed=1):
    leaves = [numerics.leaf(t) for t in tensors]
    y, tokens = fn(*leaves)
    g = torch.Generator(device="cuda").manual_seed(grad_seed)
    gy = torch.randn(y.shape, device="cuda", generator=g).to(y.dtype)
    gt = torch.randn(tokens.shape, device="cuda", generator=g).to(y.dtype)
    grads = torch.autograd.grad((y, tokens), leaves, (gy, gt))
    return [y.detach().clone(), tokens.detach().clone()] + [g.clone() for g in grads]


def assert_close_to_reference(got, tensors, what):
    dtype = tensors[0].dtype
    names = ["y", "tokens", "grad_x", "grad_q", "grad_k", "grad_v", "grad_slope"]
    if dtype in numerics.LOW_PRECISION:
        low = forward_backward(reference_bridge, tensors)
        high = forward_backward(reference_bridge, [t.float() for t in tensors])
        for name, a, lo, hi in zip(names, got, low, high):
            numerics.assert_within_2x(a, lo, hi, f"{what}: {name}")
    else:
        expected = forward_backward(reference_bridge, [t.double() for t in tensors])
        for name, a, e in zip(names, got, expected):
            numerics.assert_tight(a, e.to(dtype), f"{what}: {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inductor_fullgraph_forward_and_backward(backend, dtype):
    torch._dynamo.reset()
    tensors = inputs(dtype)
    with mf_kernels.use_backend(backend):
        compiled = torch.compile(bridge, fullgraph=True)
        got = forward_backward(compiled, tensors)
    assert_close_to_reference(got, tensors, f"{backend} under torch.compile")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_graphs_reduce_overhead_replays_fresh_inputs(backend, dtype):
    """mode="reduce-overhead": CUDA graphs (cudagraph trees) capture the ops once, then replay
    them; each replay must see the new inputs, forward and backward."""
    torch._dynamo.reset()
    with mf_kernels.use_backend(backend):
        compiled = torch.compile(bridge, mode="reduce-overhead", fullgraph=True)
        for step in range(4):  # warm-up, record, then replays
            torch.compiler.cudagraph_mark_step_begin()
            tensors = inputs(dtype, seed=step)
            got = forward_backward(compiled, tensors, grad_seed=10 + step)
            assert_close_to_reference(got, tensors, f"{backend} CUDA-graph step {step}")


def test_runs_on_the_current_stream_not_the_default_one(backend):
    """The inputs are written on a side stream that is first kept busy; a kernel launched on
    the default stream instead of the current one would read them before they are written
    (NaN poison) and fail the comparison."""
    dtype = torch.float32
    source = inputs(dtype, batch=8, channels=96, size=28)
    poisoned = [torch.full_like(t, float("nan")) for t in source]
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with mf_kernels.use_backend(backend), torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~25 ms of GPU time on the side stream
        for dst, src in zip(poisoned, source):
            dst.copy_(src)
        got = forward_backward(bridge, poisoned)
    side.synchronize()
    assert_close_to_reference(got, source, f"{backend} on a side stream")


def test_device_guard_on_the_inputs_device(backend):
    """Inputs on the current device run; the output lands on the inputs' device."""
    tensors = inputs(torch.float32, batch=2)
    with mf_kernels.use_backend(backend):
        y, tokens = bridge(*tensors)
    assert y.device == tensors[0].device and tokens.device == tensors[0].device
