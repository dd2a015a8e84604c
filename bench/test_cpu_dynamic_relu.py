"""The dynamic_relu op on the CPU: reference.dynamic_relu against mf_kernels.ops.dynamic_relu
on given slopes, at every MF-294M site, batch 1 and 32. (The whole module, hyper-MLP included,
is in test_cpu_modules.py.) Run: pytest bench/test_cpu_dynamic_relu.py --benchmark-only
"""
import pytest
import torch

import mf_kernels
import mobileformer
from mobileformer import functional as reference
from shapes import module_input_shapes

SITES = module_input_shapes("mobileformer_294m", mobileformer.DynamicReLU)
BATCHES = (1, 32)


def site_id(site):
    (C, H, W), (d,) = site
    return f"{C}x{H}x{W}"


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("site", SITES, ids=site_id)
def test_op(benchmark, site, batch, impl):
    (C, H, W), _ = site
    x, slope = torch.randn(batch, C, H, W), torch.rand(batch, C, 2) * 2 - 0.5
    fn = reference.dynamic_relu if impl == "reference" else mf_kernels.ops.dynamic_relu
    benchmark.group = f"dynamic_relu op {site_id(site)} b{batch}"
    benchmark.extra_info["impl"] = impl
    with torch.inference_mode():
        benchmark(fn, x, slope)

