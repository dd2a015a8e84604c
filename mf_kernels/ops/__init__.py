"""Typed entry points of the fused ops. Each routes through :mod:`mf_kernels.backends`."""
from .dynamic_relu import dynamic_relu

__all__ = ["dynamic_relu"]
