"""Backend selection, one place for every op.

Backends:
* ``"reference"``: the pure-PyTorch functions of :mod:`mobileformer.functional`. Runs anywhere.
* ``"cpu"``: the C++ kernels of the extension, CPU tensors.
* ``"cuda"``: the CUDA C++ kernels of the extension, CUDA tensors.
* ``"triton"``: the Triton kernels, CUDA tensors (CPU tensors too when ``TRITON_INTERPRET=1``).
* ``"auto"`` (default): per op and device, the fastest backend that can run here, falling back
  to the reference; it never fails where the reference would run. On CUDA it takes only
  backends that a committed GPU run has shown correct (``GPU_VERIFIED``); until then it runs
  the reference there. Choosing an unverified backend explicitly works but warns once.

Choose with :func:`set_backend`, the context manager :func:`use_backend`, or the environment
variable ``MF_KERNELS_BACKEND`` (read once, at import). :func:`available_backends` says, per op
and backend, whether it can run here and if not why. A forced backend that cannot take an input
raises :class:`BackendUnavailableError` listing the reasons.

What can run is probed once and cached (never inside a model's forward); probing CUDA happens
only when a CUDA tensor first reaches an op, never at import.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch

from . import _extension

BACKENDS: Tuple[str, ...] = ("reference", "cpu", "cuda", "triton")
OPS: Tuple[str, ...] = ("dynamic_relu", "m2f_attention", "f2m_attention")

# "auto" on each device type: the first backend that can run (and, on CUDA, is in
# GPU_VERIFIED) wins. On CUDA the order should come from committed GPU benchmarks (README,
# "Which backends are verified where"); none exists yet.
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {
    "cpu": ("cpu", "reference"),
    "cuda": ("triton", "cuda", "reference"),
}

# The one place that says which kernels are verified on a GPU: backend -> the committed results
# file of a GPU run of the device script (bench/gpu/run.sh, results under bench/results/) in
# which `mf-kernels check --device cuda` and the GPU test tier passed for that backend.
# No GPU run has been committed yet, so no backend is verified: "auto" runs the reference on
# CUDA tensors, and choosing "triton" or "cuda" explicitly warns once (UnverifiedBackendWarning).
GPU_VERIFIED: Dict[str, str] = {}


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run the op on the given input."""


class UnverifiedBackendWarning(UserWarning):
    """A backend chosen explicitly runs on CUDA tensors but no committed GPU run verifies it."""


class Availability(NamedTuple):
    available: bool
    reasons: Tuple[str, ...]  # empty when available


_loaders: Dict[Tuple[str, str], Callable[[], Callable]] = {}
_resolved: Dict[Tuple[str, str], Callable] = {}
_selected: str = "auto"
_choice_cache: Dict[Tuple, Tuple[str, Callable]] = {}
_warned_unverified: set = set()


def register(op: str, backend: str, loader: Callable[[], Callable]) -> None:
    """Register ``loader``, a zero-argument callable returning the implementation of ``op``.

    Loading is deferred so that, e.g., Triton is imported only when its backend is used.
    """
    assert op in OPS and backend in BACKENDS, (op, backend)
    _loaders[(op, backend)] = loader
    _choice_cache.clear()


def _validate(name: str) -> str:
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"backend: expected one of {BACKENDS + ('auto',)}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Select the backend for every op: one of ``BACKENDS`` or ``"auto"``."""
    global _selected
    _selected = _validate(name)
    _choice_cache.clear()


def get_backend() -> str:
    return _selected


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Select a backend for the duration of a ``with`` block."""
    previous = _selected
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _cuda_available() -> bool:
    # torch.cuda.is_available() is cheap after its first call and constant-folded by Dynamo;
    # it is first called when a CUDA tensor reaches an op, never at import.
    return torch.cuda.is_available()


def _probe_machine() -> Dict[str, Tuple[str, ...]]:
    """Why each backend cannot run on this machine at all (empty when it can).

    Probed once at import, without touching CUDA (find_spec does not import Triton), so that
    nothing is probed while torch.compile traces a forward.
    """
    reasons: Dict[str, Tuple[str, ...]] = {backend: () for backend in BACKENDS}
    if not _extension.LOADED:
        reasons["cpu"] = reasons["cuda"] = (_extension.LOAD_ERROR or "the extension is not loaded",)
    elif not _extension.WITH_CUDA:
        reasons["cuda"] = ("the extension was built without CUDA kernels (CPU-only build)",)
    if importlib.util.find_spec("triton") is None:
        reasons["triton"] = ("Triton is not installed (pip install triton)",)
    return reasons


_MACHINE_REASONS = _probe_machine()


def _device_reasons(backend: str, device_type: str) -> Tuple[str, ...]:
    """Why ``backend`` cannot take tensors on ``device_type`` (empty when it can)."""
    if backend == "reference":
        return ()
    if backend == "cpu" and device_type != "cpu":
        return (f"the cpu backend takes CPU tensors, got {device_type} tensors",)
    if backend == "cuda":
        if device_type != "cuda":
            return (f"the cuda backend takes CUDA tensors, got {device_type} tensors",)
        if not _cuda_available():
            return ("no CUDA GPU is available",)
    if backend == "triton":
        if device_type == "cpu" and not _triton_interpreted():
            return ("Triton takes CPU tensors only under TRITON_INTERPRET=1",)
        if device_type not in ("cpu", "cuda"):
            return (f"Triton takes CUDA tensors, got {device_type} tensors",)
        if device_type == "cuda" and not _cuda_available():
            return ("no CUDA GPU is available",)
    return ()


def _dtype_reasons(backend: str, dtype: Optional[torch.dtype]) -> Tuple[str, ...]:
    if backend == "triton" and dtype == torch.float64:
        return ("the triton backend takes fp32, fp16 and bf16, got float64",)
    return ()


def _reasons(op: str, backend: str, device_type: Optional[str],
             dtype: Optional[torch.dtype] = None) -> Tuple[str, ...]:
    reasons = _MACHINE_REASONS[backend]
    if (op, backend) not in _loaders:
        # a CPU-only build registers no cuda kernels: say why, not just that they are missing
        return reasons or (f"{op} has no {backend} implementation",)
    if device_type is not None:
        reasons += _device_reasons(backend, device_type)
    return reasons + _dtype_reasons(backend, dtype)


def available_backends() -> Dict[str, Dict[str, Availability]]:
    """Per op and backend: can it run here (on this machine's default device), and if not why.

    The device considered is CUDA for "cuda"/"triton" and the CPU for "cpu"; the reference
    always runs.
    """
    table: Dict[str, Dict[str, Availability]] = {}
    for op in OPS:
        table[op] = {}
        for backend in BACKENDS:
            device = {"cpu": "cpu", "cuda": "cuda", "reference": None}.get(backend)
            if backend == "triton":
                device = "cuda" if _cuda_available() or not _triton_interpreted() else "cpu"
            reasons = _reasons(op, backend, device)
            table[op][backend] = Availability(not reasons, reasons)
    return table


def _load(op: str, backend: str) -> Callable:
    key = (op, backend)
    if key not in _resolved:
        _resolved[key] = _loaders[key]()
    return _resolved[key]


def unverified_on_gpu(backend: str) -> Tuple[str, ...]:
    """Why ``auto`` does not take ``backend`` for CUDA tensors: empty when a committed GPU run
    verifies it (``GPU_VERIFIED``), and for the reference."""
    if backend == "reference" or backend in GPU_VERIFIED:
        return ()
    return (f"not verified on a GPU yet: no committed GPU run shows the {backend} kernels "
            "correct (GPU_VERIFIED in mf_kernels/backends.py)",)


def reasons(op: str, backend: str, device_type: str,
            dtype: Optional[torch.dtype] = None) -> Tuple[str, ...]:
    """Why ``backend`` cannot run ``op`` on ``device_type`` tensors of ``dtype`` here (empty
    when it can). GPU verification is apart: see :func:`unverified_on_gpu`."""
    _validate(backend)
    return _reasons(op, backend, device_type, dtype)


def explain_auto(op: str, device_type: str, dtype: Optional[torch.dtype] = None
                 ) -> Tuple[str, List[Tuple[str, Tuple[str, ...]]]]:
    """What ``"auto"`` picks for ``op`` on ``device_type`` tensors of ``dtype``, and why: the
    backend, and each backend before it in ``AUTO_ORDER`` with the reasons it was passed over."""
    passed_over: List[Tuple[str, Tuple[str, ...]]] = []
    for backend in AUTO_ORDER.get(device_type, ("reference",)):
        why = _reasons(op, backend, device_type, dtype)
        if not why and device_type == "cuda":
            why = unverified_on_gpu(backend)
        if not why:
            return backend, passed_over
        passed_over.append((backend, why))
    return "reference", passed_over


def _choose(op: str, device_type: str, dtype: Optional[torch.dtype]) -> str:
    if _selected != "auto":
        why = _reasons(op, _selected, device_type, dtype)
        if why:
            raise BackendUnavailableError(
                f"mf_kernels: backend {_selected!r} cannot run {op} on {device_type} tensors"
                f"{'' if dtype is None else f' of {dtype}'}: " + "; ".join(why)
                + ". Use set_backend('auto') to fall back.")
        return _selected
    return explain_auto(op, device_type, dtype)[0]


def _warn_unverified(backend: str, stacklevel: int = 5) -> None:
    _warned_unverified.add(backend)
    tested = ("through Triton's interpreter" if backend == "triton"
              else "in a CPU emulation of the CUDA execution model")
    warnings.warn(
        f"mf_kernels: backend {backend!r} on CUDA tensors: its kernels are not verified on a GPU "
        f"yet (tested on the CPU only, {tested}). Check them on this GPU with "
        "`mf-kernels check --device cuda`; set_backend('auto') runs the reference on CUDA "
        "until a committed GPU run verifies them.", UnverifiedBackendWarning, stacklevel=stacklevel)


def note_direct_use(backend: str, device: torch.device) -> None:
    """For code that calls a backend's kernels directly, bypassing the selection (the frozen
    model calls the extension's ops): warns once, as an explicit choice does, when they run on
    CUDA tensors unverified on GPUs."""
    if (device.type == "cuda" and backend not in _warned_unverified
            and unverified_on_gpu(backend) and not torch.compiler.is_compiling()):
        _warn_unverified(backend, stacklevel=4)


def _choice(op: str, device: torch.device, dtype: Optional[torch.dtype]) -> Tuple[str, Callable]:
    key = (op, _selected, device.type, dtype)
    choice = _choice_cache.get(key)
    if choice is None:
        backend = _choose(op, device.type, dtype)
        if (device.type == "cuda" and backend not in _warned_unverified
                and unverified_on_gpu(backend)):
            if torch.compiler.is_compiling():
                # No warning from inside a trace, and no caching: the first eager call warns.
                return backend, _load(op, backend)
            _warn_unverified(backend)
        choice = _choice_cache[key] = (backend, _load(op, backend))
    return choice


def implementation(op: str, device: torch.device,
                   dtype: Optional[torch.dtype] = None) -> Callable:
    """The implementation of ``op`` for tensors on ``device`` (of ``dtype``) under the current
    selection."""
    return _choice(op, device, dtype)[1]


def backend_for(op: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """The name of the backend :func:`implementation` picks."""
    return _choice(op, device, dtype)[0]


def uses_extension(op: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> bool:
    """Whether ``op`` runs the extension's kernels ("cpu" or "cuda"), so that the module-level
    composite ops of the extension (which call those kernels) may be used."""
    return _choice(op, device, dtype)[0] in ("cpu", "cuda")


def _backend_from_environment() -> None:
    name = os.environ.get("MF_KERNELS_BACKEND")
    if name:
        try:
            set_backend(name)
        except ValueError as error:
            raise ValueError(f"MF_KERNELS_BACKEND: {error}") from None


_backend_from_environment()

__all__: List[str] = ["BACKENDS", "OPS", "AUTO_ORDER", "GPU_VERIFIED", "Availability",
                      "BackendUnavailableError", "UnverifiedBackendWarning",
                      "available_backends", "get_backend", "set_backend", "use_backend",
                      "implementation", "backend_for", "uses_extension", "register", "reasons",
                      "explain_auto", "unverified_on_gpu", "note_direct_use"]
