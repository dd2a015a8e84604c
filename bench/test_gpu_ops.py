"""Per-op GPU benchmarks at training shapes: dynamic_relu, m2f_attention and f2m_attention at
every distinct shape each sees in MF-294M at 224x224, batch 128 and 256, bf16, x channels_last.

Modes: "forward" (inputs require grad, as in training: the forward saves what the backward
needs), "backward" (only the backward: the graph is built once, then each call runs
``torch.autograd.grad(out, inputs, grad_out, retain_graph=True)``) and "forward+backward".
Implementations: "reference" (mobileformer.functional, eager), "compiled" (torch.compile of the
reference function, compiled before timing), "triton" and "cuda" (mf_kernels.ops under
``mf_kernels.use_backend``; skipped with the reason when the backend cannot run here).

Every timed call ends in ``torch.cuda.synchronize()``, so a row's time is the GPU time plus one
launch and one sync (a few microseconds, which dominate the smallest shapes). Each row reports
``extra_info["GB/s"]``: the bytes the op must move at least (below) over the median time, and
``"fraction of copy bw"``: that over the device's measured copy bandwidth (``"copy GB/s"``).

Run (GPU only; everything skips without one):
    TRITON_INTERPRET=0 pytest bench/test_gpu_ops.py --benchmark-only
Environment: MF_BENCH_ROUNDS (timed rounds per row, default 100).
"""
import contextlib
import os
import statistics

import pytest
import torch

import mf_kernels
import mobileformer
from mobileformer import functional as reference
from mobileformer.bridges import BRIDGE_HEADS
from shapes import module_input_shapes

VARIANT = "mobileformer_294m"
BATCHES = (128, 256)
DTYPE = torch.bfloat16
MODES = ("forward", "backward", "forward+backward")
IMPLS = ("reference", "compiled", "triton", "cuda")
ROUNDS = int(os.environ.get("MF_BENCH_ROUNDS", "100"))
WARMUP_ROUNDS = 10
OP_MODULES = {
    "dynamic_relu": mobileformer.DynamicReLU,     # inputs ((C, H, W), (d,))
    "m2f_attention": mobileformer.Mobile2Former,  # inputs ((C, H, W), (M, d))
    "f2m_attention": mobileformer.Former2Mobile,  # inputs ((C, H, W), (M, d))
}


def _cases():
    """(op, (C, H, W), M) for every distinct shape, in network order (M = 0 for dynamic_relu,
    which takes slopes [B, C, 2] computed from token 0)."""
    cases = []
    for op, module_type in OP_MODULES.items():
        for shapes in module_input_shapes(VARIANT, module_type):
            chw = tuple(shapes[0])
            tokens = shapes[1][0] if op != "dynamic_relu" else 0
            if (op, chw, tokens) not in cases:
                cases.append((op, chw, tokens))
    return cases


CASES = _cases()  # CPU only: module_input_shapes runs the model on the CPU


def case_id(case):
    op, chw, tokens = case
    return f"{op}-" + "x".join(map(str, chw)) + (f"-M{tokens}" if tokens else "")


@pytest.fixture(scope="session")
def cuda_device():
    # Never at import or collection: only here, when a test runs.
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU is available")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def copy_bandwidth(cuda_device):
    """The device's copy bandwidth in GB/s: a 1 GiB ``dst.copy_(src)``, median of 10 runs
    timed by CUDA events, counting the read and the write (2 x bytes)."""
    size = 1 << 30
    src = torch.empty(size, dtype=torch.uint8, device=cuda_device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)  # ms -> s
    del src, dst
    torch.cuda.empty_cache()
    return 2 * size / statistics.median(times) / 1e9


def make_inputs(op, chw, tokens, batch, device):
    """The op's tensor inputs (all requiring grad) and its other arguments."""
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device, dtype=DTYPE)

    channels = chw[0]
    x = randn(batch, *chw).contiguous(memory_format=torch.channels_last)
    if op == "dynamic_relu":
        tensors, extra = (x, randn(batch, channels, 2)), ()
    elif op == "m2f_attention":
        tensors, extra = (x, randn(batch, tokens, channels)), (BRIDGE_HEADS,)
    else:
        tensors = (x, randn(batch, tokens, channels), randn(batch, tokens, channels))
        extra = (BRIDGE_HEADS,)
    return tuple(t.requires_grad_(True) for t in tensors), extra


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def min_bytes(mode, inputs, out):
    """Bytes the op must move at least. Forward: read the inputs, write the output. Backward:
    read grad_out and the inputs, write a gradient per input."""
    forward = nbytes(*inputs) + nbytes(out)
    backward = nbytes(out) + 2 * nbytes(*inputs)
    return {"forward": forward, "backward": backward,
            "forward+backward": forward + backward}[mode]


def op_function(op, impl):
    """The function to time for ``impl``; skips when its backend cannot run here."""
    if impl == "reference":
        return getattr(reference, op)
    if impl == "compiled":
        torch._dynamo.reset()  # one fresh graph per row, never the recompile limit
        return torch.compile(getattr(reference, op), dynamic=False)
    availability = mf_kernels.available_backends()[op][impl]
    if not availability.available:
        pytest.skip(f"the {impl} backend cannot run {op} here: "
                    + "; ".join(availability.reasons))
    if impl == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set: the Triton rows would time the interpreter")
    return getattr(mf_kernels.ops, op)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_op(benchmark, cuda_device, copy_bandwidth, case, batch, mode, impl):
    op, chw, tokens = case
    fn = op_function(op, impl)
    inputs, extra = make_inputs(op, chw, tokens, batch, cuda_device)
    shape = "x".join(map(str, chw)) + (f" M{tokens}" if tokens else "")
    benchmark.group = f"{op} {mode} {shape} b{batch}"
    benchmark.extra_info["impl"] = impl

    def call():
        return fn(*inputs, *extra)

    with contextlib.ExitStack() as stack:
        if impl in ("triton", "cuda"):
            stack.enter_context(mf_kernels.use_backend(impl))  # held for every timed call
        if impl == "compiled" and mode == "backward":
            # a compiled backward that donates its buffers refuses retain_graph=True
            stack.enter_context(torch._functorch.config.patch(donated_buffer=False))
        out = call()  # compiles the forward (compiled) and picks the backend
        grad_out = torch.randn_like(out)

        if mode == "forward":
            def timed():
                call()
                torch.cuda.synchronize()
        elif mode == "backward":
            def timed():
                torch.autograd.grad(out, inputs, grad_out, retain_graph=True)
                torch.cuda.synchronize()
        else:
            def timed():
                torch.autograd.grad(call(), inputs, grad_out)
                torch.cuda.synchronize()

        timed()  # compiles the backward (compiled), Triton JIT, autotuning: all before timing
        benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)

    moved = min_bytes(mode, inputs, out)
    benchmark.extra_info["bytes"] = moved
    benchmark.extra_info["copy GB/s"] = round(copy_bandwidth, 1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        gbps = moved / stats.stats.median / 1e9
        benchmark.extra_info["GB/s"] = round(gbps, 1)
        benchmark.extra_info["fraction of copy bw"] = round(gbps / copy_bandwidth, 3)
