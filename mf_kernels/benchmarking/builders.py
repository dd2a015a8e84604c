"""Models and inputs for every benchmark: the CLI and the pytest-benchmark suites in ``bench/``.

One place builds them so that a number from ``mf-kernels bench`` and one from
``pytest bench/`` measure the same thing: same weights, same input, same layout.

Mobile-Former weights are the spec's deterministic weights (seeded per state_dict key), so the
reference and accelerated models of a variant are identical and runs are reproducible across
processes. MobileNetV3 gets torchvision's random init under a fixed seed.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

import mobileformer

import mf_kernels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}
Device = Union[str, torch.device]


def parse_dtype(name: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def normalize_variant(name: str) -> str:
    """'mobileformer_214m', '214m', 'MF-214M' -> 'mobileformer_214m'; ValueError if unknown."""
    key = name.strip().lower().replace("-", "_")
    for prefix in ("mobileformer_", "mf_"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    full = f"mobileformer_{key}"
    if full not in mobileformer.VARIANT_NAMES:
        raise ValueError(f"unknown variant {name!r}; expected one of "
                         f"{', '.join(mobileformer.VARIANT_NAMES)}")
    return full


def _deterministic_weights(model: nn.Module) -> None:
    entries = [(key, list(value.shape), str(value.dtype).replace("torch.", ""))
               for key, value in model.state_dict().items()]
    model.load_state_dict(mobileformer.deterministic_state_dict(entries), strict=True)


def _place(model: nn.Module, dtype: torch.dtype, device: Device, channels_last: bool,
           train: bool) -> nn.Module:
    model = model.to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train(train)
    if not train:
        model.requires_grad_(False)  # inference: no autograd bookkeeping on the weights
    return model


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` with static shapes: each benchmarked shape gets its own graph, as a
    deployment with a fixed input size would."""
    return torch.compile(model, dynamic=False)


def build_model(variant: str, accelerated: bool, compiled: bool, *, frozen: bool = False,
                dtype: Union[str, torch.dtype] = torch.float32, device: Device = "cpu",
                channels_last: bool = False, train: bool = False) -> nn.Module:
    """A Mobile-Former variant, reference or accelerated, eager or compiled.

    ``frozen`` applies ``mf_kernels.freeze`` (inference-only BN folding) when the package has
    it, and raises otherwise. ``compiled`` returns the ``torch.compile`` wrapper: compilation
    itself happens on the first call.
    """
    model = mobileformer.create_model(normalize_variant(variant))
    _deterministic_weights(model)
    if accelerated:
        mf_kernels.accelerate(model)
    model = _place(model, parse_dtype(dtype), device, channels_last, train)
    if frozen:
        if not hasattr(mf_kernels, "freeze"):
            raise NotImplementedError("mf_kernels.freeze is not available in this version")
        if train:
            raise ValueError("frozen: BN folding is inference-only, got train=True")
        model = mf_kernels.freeze(model) or model  # in place or returning the model: both work
    return compile_model(model) if compiled else model


def build_input(batch: int, size: int, dtype: Union[str, torch.dtype] = torch.float32,
                device: Device = "cpu", channels_last: bool = False, seed: int = 0) -> Tensor:
    """A reproducible batch of images [batch, 3, size, size] (drawn on the CPU, then moved, so
    the values do not depend on the device)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device=device,
                                                                  dtype=parse_dtype(dtype))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def build_mobilenetv3(width: float, *, dtype: Union[str, torch.dtype] = torch.float32,
                      device: Device = "cpu", channels_last: bool = False, train: bool = False,
                      compiled: bool = False, seed: int = 0) -> nn.Module:
    """torchvision's MobileNetV3-Large at ``width`` (1.0 or 1.25), random weights."""
    import torchvision  # optional dependency (the "test" extra): imported only when needed

    # fork_rng(devices=[]) so that seeding never initializes CUDA.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.mobilenet_v3_large(width_mult=width)
    model = _place(model, parse_dtype(dtype), device, channels_last, train)
    return compile_model(model) if compiled else model


def count_flop_madds(model: nn.Module, size: int) -> int:
    """MAdds of one image by torch's FlopCounterMode (2 FLOPs per multiply-add). Used for
    MobileNetV3, whose element-wise layers the paper's count leaves out as well."""
    param = next(model.parameters())
    image = torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["DTYPES", "parse_dtype", "normalize_variant", "build_model", "build_input",
           "build_mobilenetv3", "compile_model", "count_flop_madds", "count_params"]
