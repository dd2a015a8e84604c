"""Where the three ops are called in the seven Mobile-Former variants, read off the models.

Each variant runs once at 224x224 (batch 1, no grad) with ``mobileformer.functional``'s three
ops wrapped to record their per-sample shapes. The developer tools use these to compile and
report exactly the kernel configurations a real model launches.

    python tools/model_sites.py
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Dict, List, NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


class DynamicReluSite(NamedTuple):
    C: int
    H: int
    W: int
    K: int


class AttentionSite(NamedTuple):
    C: int
    H: int
    W: int
    M: int      # tokens
    heads: int


class Sites(NamedTuple):
    dynamic_relu: List[DynamicReluSite]
    m2f_attention: List[AttentionSite]
    f2m_attention: List[AttentionSite]


@contextlib.contextmanager
def _recording(functional, record: Dict[str, list]):
    originals = {name: getattr(functional, name) for name in record}

    def wrap(name, fn):
        def recorder(x, *args):
            *tensors, last = args
            if name == "dynamic_relu":
                slope = args[0]
                site = DynamicReluSite(*x.shape[1:], slope.shape[-1])
            else:
                site = AttentionSite(*x.shape[1:], args[0].shape[1], last)
            if site not in record[name]:
                record[name].append(site)
            return fn(x, *args)
        return recorder

    try:
        for name, fn in originals.items():
            setattr(functional, name, wrap(name, fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(functional, name, fn)


@functools.lru_cache(maxsize=None)
def model_sites(size: int = 224) -> Sites:
    """Distinct per-sample shapes of every call of the three ops in all seven variants."""
    import torch

    import mobileformer
    from mobileformer import functional

    record: Dict[str, list] = {"dynamic_relu": [], "m2f_attention": [], "f2m_attention": []}
    with _recording(functional, record), torch.no_grad():
        for name in mobileformer.VARIANT_NAMES:
            mobileformer.create_model(name).eval()(torch.zeros(1, 3, size, size))
    return Sites(*(sorted(record[k], reverse=True) for k in Sites._fields))


if __name__ == "__main__":
    for field, sites in zip(Sites._fields, model_sites()):
        print(f"{field}: {len(sites)} sites")
        for s in sites:
            print("   ", s)
