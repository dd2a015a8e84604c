"""Per-module CPU benchmarks: each reference module against its drop-in (mf_kernels.nn), at
every distinct shape it sees in MF-294M at 224x224, batch 1 and 32, inference.

Run: pytest bench/test_cpu_modules.py --benchmark-only   (MF_BENCH_THREADS=1 by default)
The summary at the end prints each fused/reference ratio measured in the same run.
"""
import copy

import pytest
import torch

import mf_kernels
import mobileformer
from shapes import module_input_shapes

VARIANT = "mobileformer_294m"
BATCHES = (1, 32)
MODULES = {
    "Mobile2Former": mobileformer.Mobile2Former,
    "Former2Mobile": mobileformer.Former2Mobile,
    "Former": mobileformer.Former,
    "DynamicReLU": mobileformer.DynamicReLU,
}


def reference_module(kind, shapes):
    d = shapes[-1][-1]
    if kind == "Former":
        return mobileformer.Former(d)
    channels = shapes[0][0]
    if kind == "DynamicReLU":
        return mobileformer.DynamicReLU(channels, d)
    return MODULES[kind](d, channels)


CASES = [(kind, shapes) for kind, cls in MODULES.items()
         for shapes in module_input_shapes(VARIANT, cls)]


def case_id(case):
    kind, shapes = case
    return f"{kind}-" + "-".join("x".join(map(str, s)) for s in shapes)


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_module(benchmark, case, batch, impl):
    kind, shapes = case
    module = reference_module(kind, shapes).eval()
    if impl == "fused":
        module = mf_kernels.accelerate(copy.deepcopy(module))
    inputs = [torch.randn(batch, *shape) for shape in shapes]
    benchmark.group = f"{case_id(case)} b{batch}"
    benchmark.extra_info["impl"] = impl
    with torch.inference_mode():
        benchmark(module, *inputs)
