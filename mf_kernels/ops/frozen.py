"""Fake implementations of the frozen CPU path's ops (csrc/cpu/frozen/), so that a frozen model
traces under ``torch.compile(fullgraph=True)``, and :func:`cpu_isa`.

``frozen_mobileformer`` is inference only: it has no autograd (freeze sets requires_grad off).
The kernel-level ops (``frozen_linear``, ``frozen_depthwise``, ``frozen_attention``,
``frozen_gelu``) exist so that the tests can check each kernel against ATen.
"""
from __future__ import annotations

import torch

from .. import _extension


def cpu_isa() -> str:
    """The instruction-set build of the frozen CPU kernels that runs on this machine:
    ``"avx512"``, ``"avx2"`` or ``"baseline"`` (chosen at run time; ``MF_KERNELS_CPU_ISA``
    caps it). ``"unavailable"`` without the C++ extension."""
    if not _extension.LOADED:
        return "unavailable"
    return torch.ops.mf_kernels.cpu_isa()


if _extension.LOADED:
    @torch.library.register_fake("mf_kernels::frozen_mobileformer")
    def _(x, weights, config, isa=None):
        classes = config[3]
        return x.new_empty((x.shape[0], classes))

    @torch.library.register_fake("mf_kernels::frozen_linear")
    def _(x, packed, bias, act, slopes, residual, column_map, isa=None):
        return x.new_empty((x.shape[0], bias.shape[0]))

    @torch.library.register_fake("mf_kernels::frozen_depthwise")
    def _(x, weight, bias, stride, act, slopes, isa=None):
        height, width, channels = x.shape
        return x.new_empty(((height - 1) // stride + 1, (width - 1) // stride + 1, channels))

    @torch.library.register_fake("mf_kernels::frozen_attention")
    def _(x, tokens, values, heads, isa=None):
        return x.new_empty(tokens.shape if values is None else x.shape)

    @torch.library.register_fake("mf_kernels::frozen_gelu")
    def _(x, isa=None):
        return torch.empty_like(x, memory_format=torch.contiguous_format)
