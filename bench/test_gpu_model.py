"""Whole-model GPU benchmarks of MF-294M at 224x224, built by the same builders as
``mf-kernels bench`` (mf_kernels.benchmarking.builders: deterministic weights, same input).

* Inference latency, fp16, batch 1 and 8, eval mode under ``torch.inference_mode()``: the
  reference eager ("reference"), under ``torch.compile`` (default and max-autotune), the
  accelerated model (``mf_kernels.accelerate``), the frozen model (``mf_kernels.freeze``), and
  each of the last two replayed from a CUDA graph (one forward captured with a static input
  and output, after a warm-up on a side stream).
* Training step, batch 256 and 128, bf16 autocast, channels_last, SGD: the reference and the
  accelerated model, eager and compiled. One step is forward, cross-entropy on random labels,
  backward, ``optimizer.step()`` and ``zero_grad(set_to_none=True)``; each row reports
  ``extra_info["images/s"]`` (batch / median step) and ``extra_info["peak MiB"]``.

Every timed call ends in ``torch.cuda.synchronize()``. Without a GPU everything skips.
Run: TRITON_INTERPRET=0 pytest bench/test_gpu_model.py --benchmark-only
(``-k "not max-autotune"`` leaves out the slowest build, many minutes of autotuning.)
"""
import gc
import os

import pytest
import torch
import torch.nn.functional as F

import mf_kernels
from mf_kernels.benchmarking.builders import build_input, build_model

VARIANT = "mobileformer_294m"
SIZE = 224
NUM_CLASSES = 1000  # mobileformer.create_model's default
INFER_BATCHES = (1, 8)
TRAIN_BATCHES = (256, 128)
INFER_IMPLS = ("reference", "reference compiled", "reference compiled max-autotune",
               "accelerated", "accelerated + CUDA graph", "frozen", "frozen + CUDA graph")
TRAIN_IMPLS = ("reference", "reference compiled", "accelerated", "accelerated compiled")
INFER_ROUNDS = int(os.environ.get("MF_BENCH_ROUNDS", "100"))
TRAIN_ROUNDS = 20


@pytest.fixture
def cuda_device():
    # Never at import or collection: only here, when a test runs.
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU is available")
    yield torch.device("cuda")
    torch._dynamo.reset()  # drops compiled graphs (and inductor's CUDA graph pools)
    gc.collect()
    torch.cuda.empty_cache()


def _skip_unless_frozen_runs():
    # The frozen blocks call torch.ops.mf_kernels.* directly: they need the CUDA kernels of the
    # extension, whatever backend is selected.
    availability = mf_kernels.available_backends()["dynamic_relu"]["cuda"]
    if not availability.available:
        pytest.skip("the frozen model needs the extension's CUDA kernels: "
                    + "; ".join(availability.reasons))


def _triton_interpreted():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def inference_model(impl, device):
    if impl.startswith("frozen"):
        _skip_unless_frozen_runs()
    if impl.startswith("accelerated") and _triton_interpreted():
        pytest.skip("TRITON_INTERPRET is set: the accelerated rows would time the interpreter")
    # create_model(VARIANT), deterministic weights, .half().cuda(), eval, no grad on weights
    model = build_model(VARIANT, accelerated=not impl.startswith("reference"), compiled=False,
                        frozen=impl.startswith("frozen"), dtype=torch.float16, device=device)
    if impl.startswith("reference compiled"):
        torch._dynamo.reset()
        mode = "max-autotune" if impl.endswith("max-autotune") else None
        model = torch.compile(model, mode=mode)
    return model


def capture(model, x):
    """One forward captured into a CUDA graph: returns a replay function (static input x)."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (Triton JIT, backend choice) off the capture
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            static_out = model(static_x)
    except RuntimeError as error:
        pytest.fail(f"CUDA graph capture of the forward failed: {error}")

    def replay(graph=graph, keep_alive=(static_x, static_out)):
        graph.replay()

    return replay


@pytest.mark.parametrize("impl", INFER_IMPLS)
@pytest.mark.parametrize("batch", INFER_BATCHES, ids=lambda b: f"b{b}")
def test_inference(benchmark, cuda_device, batch, impl):
    benchmark.group = f"inference {VARIANT} {SIZE}px fp16 b{batch}"
    benchmark.extra_info["impl"] = impl
    model = inference_model(impl, cuda_device)
    x = build_input(batch, SIZE, torch.float16, cuda_device)
    with torch.inference_mode():
        if impl.endswith("CUDA graph"):
            run = capture(model, x)
        else:
            def run():
                model(x)
        for _ in range(3):  # compilation (first call), JIT, autotuning: before timing
            run()
        torch.cuda.synchronize()

        def timed():
            run()
            torch.cuda.synchronize()

        benchmark.pedantic(timed, rounds=INFER_ROUNDS, iterations=1, warmup_rounds=5)
    benchmark.extra_info["device"] = torch.cuda.get_device_name(cuda_device)


def _train_step_row(benchmark, device, batch, impl):
    if impl.startswith("accelerated") and _triton_interpreted():
        pytest.skip("TRITON_INTERPRET is set: the accelerated rows would time the interpreter")
    compiled = impl.endswith("compiled")
    if compiled:
        torch._dynamo.reset()
    model = build_model(VARIANT, accelerated=impl.startswith("accelerated"), compiled=compiled,
                        dtype=torch.float32, device=device, channels_last=True, train=True)
    x = build_input(batch, SIZE, torch.float32, device, channels_last=True)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device,
                           generator=torch.Generator(device=device).manual_seed(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    for _ in range(3):  # compilation of forward and backward, JIT, momentum buffers
        step()
    torch.cuda.reset_peak_memory_stats(device)
    benchmark.pedantic(step, rounds=TRAIN_ROUNDS, iterations=1, warmup_rounds=2)
    peak = torch.cuda.max_memory_allocated(device)
    benchmark.extra_info["peak MiB"] = round(peak / 2**20, 1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images/s"] = round(batch / stats.stats.median, 1)


@pytest.mark.parametrize("impl", TRAIN_IMPLS)
@pytest.mark.parametrize("batch", TRAIN_BATCHES, ids=lambda b: f"b{b}")
def test_train_step(benchmark, cuda_device, batch, impl):
    benchmark.group = f"train step {VARIANT} {SIZE}px bf16 b{batch}"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["device"] = torch.cuda.get_device_name(cuda_device)
    out_of_memory = None
    try:
        _train_step_row(benchmark, cuda_device, batch, impl)
    except torch.cuda.OutOfMemoryError as error:
        out_of_memory = str(error).splitlines()[0]
    if out_of_memory is not None:  # outside the except: the row's tensors are freed by now
        gc.collect()
        torch.cuda.empty_cache()
        pytest.skip(f"CUDA out of memory at batch {batch} ({impl}): {out_of_memory}")
