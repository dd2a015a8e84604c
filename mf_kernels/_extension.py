"""Loads the compiled extension, mf_kernels._C, or explains why it could not.

Importing ``_C`` runs the C++ ``TORCH_LIBRARY`` registrations (schemas and CPU/CUDA kernels).
If that fails, :mod:`mf_kernels` still imports: it warns once with the reason and every op
falls back to the reference implementation.
"""
from __future__ import annotations

import json
import os
import warnings

import torch

LOADED = False
LOAD_ERROR = None  # why the extension is unavailable, for available_backends() and errors
WITH_CUDA = False  # whether the extension holds CUDA kernels

_BUILD_INFO_PATH = os.path.join(os.path.dirname(__file__), "_build_info.json")


def _build_info():
    try:
        with open(_BUILD_INFO_PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _explain(error: BaseException) -> str:
    info = _build_info()
    if info is None:
        return ("the C++ extension is not built (run `pip install --no-build-isolation -e .`); "
                f"import said: {error}")
    if info.get("torch") != torch.__version__:
        return (f"the extension was built for torch {info.get('torch')}, you have torch "
                f"{torch.__version__}; rebuild it (`pip install --no-build-isolation -e .`). "
                f"import said: {error}")
    return f"the extension failed to load: {error}"


# Ops the Python side registers fake implementations or autograd for. An extension built from
# older sources loads but lacks some of them; it is then treated as not loaded.
EXPECTED_OPS = ("dynamic_relu", "m2f_attention", "f2m_attention", "block_tokens",
                "frozen_mobileformer", "cpu_isa")


class _StaleBuild(ImportError):
    pass


try:
    from . import _C  # noqa: F401  (registers the ops)

    _missing = [op for op in EXPECTED_OPS if not hasattr(torch.ops.mf_kernels, op)]
    if _missing:
        raise _StaleBuild(f"it lacks the ops {', '.join(_missing)}: it was built from older "
                          "sources; rebuild it (`pip install --no-build-isolation -e .`)")
    LOADED = True
    WITH_CUDA = bool((_build_info() or {}).get("with_cuda"))
except _StaleBuild as _error:
    LOAD_ERROR = f"the extension is out of date: {_error}"
    warnings.warn(f"mf_kernels: {LOAD_ERROR}. Falling back to the reference PyTorch "
                  "implementation for every op.", RuntimeWarning, stacklevel=2)
except (ImportError, OSError) as _error:
    LOAD_ERROR = _explain(_error)
    warnings.warn(f"mf_kernels: {LOAD_ERROR}. Falling back to the reference PyTorch "
                  "implementation for every op.", RuntimeWarning, stacklevel=2)
