"""Whole models, inference: reference, accelerated and frozen Mobile-Former against
MobileNetV3-Large 1.0x and 1.25x, batch 1 at 224x224, built by the same builders as
``mf-kernels bench`` (mf_kernels.benchmarking.builders), so the two agree on what they measure.

Run: pytest bench/test_whole_model.py --benchmark-only
Environment: MF_BENCH_THREADS (default 1), MF_BENCH_DEVICE=cuda for the GPU,
MF_BENCH_COMPILE=1 to add torch.compile'd models (minutes of compilation per model).
The summary at the end prints each model's ratio to the reference measured in the same run.
"""
import os

import pytest
import torch

import mf_kernels
from mf_kernels.benchmarking.builders import build_input, build_mobilenetv3, build_model

VARIANTS = ("mobileformer_214m", "mobileformer_294m")
SIZE, BATCH = 224, 1
DEVICE = os.environ.get("MF_BENCH_DEVICE", "cpu")
COMPILED = (False, True) if os.environ.get("MF_BENCH_COMPILE") == "1" else (False,)
IMPLS = ["reference", "accelerated"] + (["frozen"] if hasattr(mf_kernels, "freeze") else [])


def _device():
    # checked inside the test, never at collection (CONTRIBUTING: no CUDA at collection)
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("MF_BENCH_DEVICE=cuda but no CUDA GPU is available")
    return DEVICE


def _run(benchmark, model, group, impl):
    device = _device()
    x = build_input(BATCH, SIZE, torch.float32, device)
    benchmark.group = group
    benchmark.extra_info["impl"] = impl

    def call():
        out = model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    with torch.inference_mode():
        call()  # warm-up outside the timings (and compilation, when compiled)
        benchmark(call)


@pytest.mark.parametrize("compiled", COMPILED, ids=lambda c: "compiled" if c else "eager")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_mobileformer(benchmark, variant, impl, compiled):
    model = build_model(variant, accelerated=impl != "reference", compiled=compiled,
                        frozen=impl == "frozen", device=_device())
    name = impl + (" compiled" if compiled else "")
    _run(benchmark, model, f"whole model {variant} {SIZE}px b{BATCH}", name)


@pytest.mark.parametrize("width", (1.0, 1.25))
def test_mobilenetv3_large(benchmark, width):
    # grouped with MF-214M, its peer in MAdds, so the summary prints the ratio to its reference
    model = build_mobilenetv3(width, device=_device())
    _run(benchmark, model, f"whole model {VARIANTS[0]} {SIZE}px b{BATCH}",
         f"mobilenet_v3_large {width:g}x")
