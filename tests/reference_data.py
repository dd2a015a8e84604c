"""The reference data of the spec (copied into tests/data): manifests, logits, stage stats."""
from __future__ import annotations

import functools
import json
import os

import torch

import mobileformer

DATA = os.path.join(os.path.dirname(__file__), "data")
SHORT = {name: name.split("_")[1] for name in mobileformer.VARIANT_NAMES}


@functools.lru_cache(maxsize=None)
def load_json(filename: str):
    with open(os.path.join(DATA, filename)) as f:
        return json.load(f)


def manifest(variant: str):
    return load_json(f"manifest_{SHORT[variant]}.json")


def deterministic_model(variant: str, dtype=torch.float32):
    """The spec's deterministic-weights model (section 20.2), eval mode, in ``dtype``."""
    model = mobileformer.create_model(variant)
    mobileformer.load_official(model, mobileformer.deterministic_state_dict(
        manifest(variant)["state_dict"]))
    return model.eval().to(dtype)


def reference_input(dtype=torch.float32, size: int = 224):
    """The spec's input (section 20.3): seed-0 randn drawn in float32, then converted."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return x.to(dtype)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max_i |y_i - ref_i| / max_i |ref_i| (the spec's measure)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max()).item()
