"""The shapes at which Mobile-Former calls each fused op, read off the reference model.

Nothing is hand-copied: :func:`variant_sites` builds a variant from ``mobileformer/config.py``
(on the CPU: under a second for all seven; the ``meta`` device would cost more, in importing
torch's reference implementations), runs one 224x224 forward at batch 1 with the three
functions of :mod:`mobileformer.functional` wrapped to record their arguments' shapes, and
returns the distinct call sites in network order.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

import mobileformer
from mobileformer import functional

OPS = ("dynamic_relu", "m2f_attention", "f2m_attention")
IMAGE_SIZE = 224
# A detection head (DETR-style, as in the paper's COCO experiments) reads the feature maps with
# 100 object queries instead of the classifier's 3 to 6 tokens.
DETECTION_TOKENS = 100


class Site(NamedTuple):
    """One call of ``op`` per image: x is [C, H, W]; tokens is M (0 for dynamic_relu); heads
    the attention heads (0 for dynamic_relu); pieces the K of dynamic_relu (0 otherwise)."""

    op: str
    chw: Tuple[int, int, int]
    tokens: int = 0
    heads: int = 0
    pieces: int = 0

    def describe(self, batch: int) -> str:
        C, H, W = self.chw
        text = f"{batch}x{C}x{H}x{W}"
        if self.op == "dynamic_relu":
            return text + f" K{self.pieces}"
        return text + f" M{self.tokens} h{self.heads}"


@contextlib.contextmanager
def _recording(calls: List[Site]) -> Iterator[None]:
    originals = {op: getattr(functional, op) for op in OPS}

    def recorder(op: str):
        def record(x, *args):
            chw = tuple(x.shape[1:])
            if op == "dynamic_relu":
                calls.append(Site(op, chw, pieces=args[0].shape[-1]))
            else:
                calls.append(Site(op, chw, tokens=args[0].shape[1], heads=args[-1]))
            return originals[op](x, *args)
        return record

    for op in OPS:
        setattr(functional, op, recorder(op))
    try:
        yield
    finally:
        for op, original in originals.items():
            setattr(functional, op, original)


@functools.lru_cache(maxsize=None)
def variant_sites(variant: str, size: int = IMAGE_SIZE) -> Tuple[Site, ...]:
    """Every distinct call site of the three ops in ``variant`` at ``size`` x ``size``."""
    calls: List[Site] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only spin (and cost 10x under load)
    try:
        with _recording(calls):
            model = mobileformer.create_model(variant).eval()
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
    finally:
        torch.set_num_threads(threads)
    return tuple(dict.fromkeys(calls))


def all_sites(variants: Optional[Tuple[str, ...]] = None) -> Dict[Site, List[str]]:
    """Distinct sites over ``variants`` (default: all seven), each with the variants using it."""
    table: Dict[Site, List[str]] = {}
    for variant in variants or tuple(mobileformer.VARIANT_NAMES):
        for site in variant_sites(variant):
            table.setdefault(site, []).append(variant)
    return table


def detection_sites(variant: str = "mobileformer_294m") -> Tuple[Site, ...]:
    """The bridge sites of ``variant`` with M = 100 tokens (a detection head's queries)."""
    return tuple(dict.fromkeys(site._replace(tokens=DETECTION_TOKENS)
                               for site in variant_sites(variant) if site.tokens))


__all__ = ["OPS", "Site", "variant_sites", "all_sites", "detection_sites", "DETECTION_TOKENS"]
