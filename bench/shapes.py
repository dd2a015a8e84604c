"""Shapes the benchmarks measure, read off the reference model itself (one home for them)."""
from __future__ import annotations

import functools
from typing import List, Tuple

import torch

import mobileformer


@functools.lru_cache(maxsize=None)
def module_input_shapes(variant: str, module_type: type, size: int = 224) -> List[Tuple]:
    """Distinct per-sample input shapes ((C, H, W), and the token shape when there is one)
    reaching every ``module_type`` of ``variant`` at ``size`` x ``size``, in network order."""
    model = mobileformer.create_model(variant).eval()
    seen: List[Tuple] = []

    def record(module, inputs, output):
        key = tuple(tuple(t.shape[1:]) for t in inputs if isinstance(t, torch.Tensor))
        if key not in seen:
            seen.append(key)

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if type(m) is module_type]
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return seen
