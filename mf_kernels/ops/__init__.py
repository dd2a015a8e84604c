"""Typed entry points of the fused ops. Each routes through :mod:`mf_kernels.backends`."""
import importlib

from .. import backends
from .dynamic_relu import dynamic_relu
from . import frozen
from .frozen import cpu_isa
from .f2m_attention import f2m_attention
from .m2f_attention import m2f_attention


def _triton_loader(op: str):
    # Imported on first use only: importing Triton costs about a second.
    return lambda: getattr(importlib.import_module(f"mf_kernels.triton.{op}"), op)


for _op in backends.OPS:
    backends.register(_op, "triton", _triton_loader(_op))

__all__ = ["dynamic_relu", "m2f_attention", "f2m_attention", "cpu_isa"]
