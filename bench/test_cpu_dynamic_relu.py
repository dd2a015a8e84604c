"""The dynamic_relu op on the CPU: reference.dynamic_relu against mf_kernels.ops.dynamic_relu
on given slopes, at every MF-294M site, batch 1 and 32. (The whole module, hyper-MLP included,
is in test_cpu_modules.py.) Run: pytest bench/test_cpu_dynamic_relu.py --benchmark-only

* test_op: the forward (inference mode), NCHW.
* test_op_training: forward and backward through autograd (the gradients of x and the slopes),
  NCHW and channels_last: what a training step spends in the op.
* test_backward_op: the fused backward op alone (dynamic_relu_backward), whose CPU kernel was
  once ~100x slower than the forward; no reference row (the reference has no backward op of
  its own: its backward is test_op_training's).
"""
import pytest
import torch

import mf_kernels
import mobileformer
from mobileformer import functional as reference
from shapes import module_input_shapes

SITES = module_input_shapes("mobileformer_294m", mobileformer.DynamicReLU)
BATCHES = (1, 32)
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def site_id(site):
    (C, H, W), (d,) = site
    return f"{C}x{H}x{W}"


def inputs(site, batch, layout="nchw"):
    (C, H, W), _ = site
    x = torch.randn(batch, C, H, W).contiguous(memory_format=LAYOUTS[layout])
    slope = torch.rand(batch, C, 2) * 2 - 0.5
    return x, slope, torch.randn_like(x)


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("site", SITES, ids=site_id)
def test_op(benchmark, site, batch, impl):
    x, slope, _ = inputs(site, batch)
    fn = reference.dynamic_relu if impl == "reference" else mf_kernels.ops.dynamic_relu
    benchmark.group = f"dynamic_relu op {site_id(site)} b{batch}"
    benchmark.extra_info["impl"] = impl
    with torch.inference_mode():
        benchmark(fn, x, slope)


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("site", SITES, ids=site_id)
def test_op_training(benchmark, site, batch, layout, impl):
    x, slope, grad_y = inputs(site, batch, layout)
    x.requires_grad_(True)
    slope.requires_grad_(True)
    fn = reference.dynamic_relu if impl == "reference" else mf_kernels.ops.dynamic_relu

    def forward_backward():
        return torch.autograd.grad(fn(x, slope), (x, slope), grad_y)

    benchmark.group = f"dynamic_relu forward+backward {site_id(site)} b{batch} {layout}"
    benchmark.extra_info["impl"] = impl
    benchmark(forward_backward)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("site", SITES, ids=site_id)
def test_backward_op(benchmark, site, batch, layout):
    x, slope, grad_y = inputs(site, batch, layout)
    benchmark.group = f"dynamic_relu backward op {site_id(site)} b{batch} {layout}"
    benchmark.extra_info["impl"] = "fused"
    benchmark(torch.ops.mf_kernels.dynamic_relu_backward, grad_y, x, slope, None)
