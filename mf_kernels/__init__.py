"""mf_kernels: fused kernels that make Mobile-Former fast, without rewriting the model.

    import mobileformer, mf_kernels
    model = mf_kernels.accelerate(mobileformer.create_model("mobileformer_294m"))

Ops (``mf_kernels.ops``), drop-in modules (``mf_kernels.nn``), and backend selection
(``set_backend``, ``use_backend``, ``available_backends``).
"""
from . import _extension
from . import ops, nn
from .patching import accelerate
from .freezing import freeze
from .ops import cpu_isa
from .backends import (BACKENDS, BackendUnavailableError, available_backends, get_backend,
                       set_backend, use_backend)

__version__ = "0.1.0"

__all__ = ["ops", "nn", "accelerate", "freeze", "cpu_isa", "set_backend", "get_backend", "use_backend",
           "available_backends", "BackendUnavailableError", "BACKENDS", "__version__"]
