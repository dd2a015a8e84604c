"""The backends every op's test suite runs on, as one pytest parameter.

A test in tests/test_<op>.py that takes the ``backend`` fixture runs once per backend, and one
that also takes ``dtype`` (or ``low_dtype``: fp16/bf16) once per backend and dtype that backend
supports. So every backend is held to the same cases:

* ``cpu``: the C++ CPU kernels (csrc/cpu); CPU tensors, fp32/fp64/fp16/bf16; wherever the
  extension is built.
* ``triton-interp``: the Triton kernels through Triton's interpreter; CPU tensors,
  fp32/fp16/bf16; under TRITON_INTERPRET=1 (the tests' default), small shapes
  (``sites_for``, ``interpreter_budget``).
* ``cuda``: the CUDA kernels (csrc/cuda); CUDA tensors, all four dtypes; a GPU and the CUDA
  build. Marker ``gpu``.
* ``triton``: the compiled Triton kernels; CUDA tensors, fp32/fp16/bf16; a GPU and
  TRITON_INTERPRET=0. Marker ``gpu``.
* ``cuda-emu``: the CUDA kernels compiled for the CPU emulation of tools/cuda_emu; CPU tensors,
  all four dtypes; opt-in with MF_TEST_CUDA_EMU=1 (numerical cases: the emulated ops have no
  fake implementation).

The GPU tier is a selection of the same suites: ``TRITON_INTERPRET=0 python -m pytest -m gpu``.
A backend that cannot run here skips with the reason; nothing is queried at import or
collection (CUDA is probed inside the fixture).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import os
from typing import Callable, Dict, Optional, Tuple

import pytest
import torch

import mf_kernels
from mf_kernels import _extension

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
ALL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOW = (torch.float16, torch.bfloat16)
# The dispatcher ops of each op besides the one named after it.
OTHER_OPS = {"dynamic_relu": ("dynamic_relu_backward",),
                "m2f_attention": ("m2f_attention_with_lse", "m2f_attention_backward"),
                "f2m_attention": ("f2m_attention_backward",)}


@dataclasses.dataclass(frozen=True)
class Backend:
    id: str
    name: Optional[str]           # mf_kernels backend (set_backend); None: not routed there
    device: str
    dtypes: Tuple[torch.dtype, ...]
    gpu: bool = False
    interpreted: bool = False     # Triton's interpreter: slow, keep shapes small

    def skip_reason(self) -> Optional[str]:
        return _SKIP_REASONS[self.id]()

    @property
    def op_prefix(self) -> str:
        return "triton_" if self.id.startswith("triton") else ""

    def ops(self, op: str) -> Dict[str, object]:
        """The dispatcher ops of ``op`` on this backend: name -> OpOverloadPacket."""
        if self.id == "cuda-emu":
            namespace = emulated_ops()
        else:
            namespace = torch.ops.mf_kernels
            if self.op_prefix:
                importlib.import_module(f"mf_kernels.triton.{op}")  # registers the triton ops
        names = (op,) + OTHER_OPS[op]
        return {name: getattr(namespace, self.op_prefix + name) for name in names
                if hasattr(namespace, self.op_prefix + name)}

    def fn(self, op: str) -> Callable:
        """The typed entry point of ``op`` (autograd included), run on this backend. The
        ``backend`` fixture selects the backend for the whole test."""
        if self.id == "cuda-emu":
            return _emulated_entry_points()[op]
        return getattr(mf_kernels.ops, op)

    @property
    def compile_backend(self) -> str:
        """The interpreter cannot be traced into (the op stays opaque) and inductor on the CPU
        costs a C++ compile per graph: aot_eager checks capture, fake tensors and autograd
        there; on a GPU inductor compiles the graph."""
        return "inductor" if self.device == "cuda" else "aot_eager"


def _cuda_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    return None


def _extension_reason(cuda: bool) -> Optional[str]:
    if not _extension.LOADED:
        return f"the extension is not loaded: {_extension.LOAD_ERROR}"
    if cuda and not _extension.WITH_CUDA:
        return "the extension was built without CUDA kernels (CPU-only build)"
    return None


def _triton_reason(device: str) -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if device == "cpu" and not INTERPRETED:
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
    if device == "cuda" and INTERPRETED:
        return "compiled Triton: run with TRITON_INTERPRET=0"
    return _cuda_reason() if device == "cuda" else None


def _emu_reason() -> Optional[str]:
    if os.environ.get("MF_TEST_CUDA_EMU", "0") in ("", "0"):
        return ("the CUDA kernels' CPU emulation is opt-in: MF_TEST_CUDA_EMU=1 builds it "
                "(tools/cuda_emu, a few minutes) and runs the numerical cases through it")
    return None


_SKIP_REASONS = {
    "cpu": lambda: _extension_reason(cuda=False),
    "triton-interp": lambda: _triton_reason("cpu"),
    "cuda": lambda: _extension_reason(cuda=True) or _cuda_reason(),
    "triton": lambda: _triton_reason("cuda"),
    "cuda-emu": _emu_reason,
}

BACKENDS = (
    Backend("cpu", "cpu", "cpu", ALL_DTYPES),
    Backend("triton-interp", "triton", "cpu", TRITON_DTYPES, interpreted=True),
    Backend("cuda", "cuda", "cuda", ALL_DTYPES, gpu=True),
    Backend("triton", "triton", "cuda", TRITON_DTYPES, gpu=True),
    Backend("cuda-emu", None, "cpu", ALL_DTYPES),
)
DTYPE_ARGS = {"dtype": ALL_DTYPES, "low_dtype": LOW}


def _dtype_id(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16",
            torch.bfloat16: "bf16"}[dtype]


def parametrize(metafunc) -> None:
    """``pytest_generate_tests`` of the op suites: (backend[, dtype]) pairs, GPU ones marked."""
    if "backend" not in metafunc.fixturenames:
        return
    dtype_arg = next((a for a in DTYPE_ARGS if a in metafunc.fixturenames), None)
    params = []
    for b in BACKENDS:
        marks = [pytest.mark.gpu] if b.gpu else []
        if dtype_arg is None:
            params.append(pytest.param(b, id=b.id, marks=marks))
            continue
        for dtype in DTYPE_ARGS[dtype_arg]:
            if dtype in b.dtypes:
                params.append(pytest.param(b, dtype, id=f"{b.id}-{_dtype_id(dtype)}", marks=marks))
    argnames = ["backend"] + ([dtype_arg] if dtype_arg else [])
    metafunc.parametrize(argnames, params, indirect=["backend"])


@pytest.fixture
def backend(request) -> Backend:
    """The backend of this test run, selected for the whole test (conftest restores it)."""
    b: Backend = request.param
    reason = b.skip_reason()
    if reason:
        pytest.skip(f"{b.id}: {reason}")
    if b.name is not None:
        mf_kernels.set_backend(b.name)
    return b


def requires(backend: Backend, *, fp64: bool = False, dispatcher: bool = False,
             small: bool = True) -> None:
    """Skips what a backend cannot be asked, saying why."""
    if dispatcher and backend.id == "cuda-emu":
        pytest.skip("cuda-emu: the emulated ops have no fake implementation or registered "
                    "autograd (numerical cases only)")
    if fp64 and torch.float64 not in backend.dtypes:
        pytest.skip(f"{backend.id}: no float64 kernels")
    if not small and backend.interpreted:
        pytest.skip(f"{backend.id}: too slow under the interpreter (runs on the GPU)")


# ----------------------------------------------------------------------------------------
# The CUDA kernels in the CPU emulation: mf_emu::* ops with autograd wrappers.

@functools.lru_cache(maxsize=None)
def emulated_ops():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "cuda_emu_build", os.path.join(root, "tools", "cuda_emu", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load()


@functools.lru_cache(maxsize=None)
def _emulated_entry_points() -> Dict[str, Callable]:
    from mf_kernels.ops import _checks

    ops = emulated_ops()

    class DynamicRelu(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, slope, intercept):
            ctx.save_for_backward(x, slope, intercept)
            return ops.dynamic_relu(x, slope, intercept)

        @staticmethod
        def backward(ctx, grad_y):
            x, slope, intercept = ctx.saved_tensors
            gx, gs, gt = ops.dynamic_relu_backward(grad_y, x, slope, intercept)
            return gx, gs, gt if intercept is not None else None

    class M2f(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, q, heads):
            out, lse = ops.m2f_attention_with_lse(x, q, heads)
            ctx.heads = heads
            ctx.save_for_backward(x, q, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad_out):
            x, q, out, lse = ctx.saved_tensors
            gx, gq = ops.m2f_attention_backward(grad_out, x, q, out, lse, ctx.heads)
            return gx, gq, None

    class F2m(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, k, v, heads):
            ctx.heads = heads
            ctx.save_for_backward(x, k, v)
            return ops.f2m_attention(x, k, v, heads)

        @staticmethod
        def backward(ctx, grad_y):
            x, k, v = ctx.saved_tensors
            return (*ops.f2m_attention_backward(grad_y, x, k, v, ctx.heads), None)

    def dynamic_relu(x, slope, intercept=None):
        _checks.check_dynamic_relu(x, slope, intercept)
        return DynamicRelu.apply(x, slope, intercept)

    def m2f_attention(x, q, heads):
        _checks.check_m2f_attention(x, q, heads)
        return M2f.apply(x, q, heads)

    def f2m_attention(x, k, v, heads):
        _checks.check_f2m_attention(x, k, v, heads)
        return F2m.apply(x, k, v, heads)

    return {"dynamic_relu": dynamic_relu, "m2f_attention": m2f_attention,
            "f2m_attention": f2m_attention}


# ----------------------------------------------------------------------------------------
# Helpers shared by the op suites.

@functools.lru_cache(maxsize=None)
def variant_sites():
    """The call sites of the three ops in the seven variants (tools/model_sites.py)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "model_sites", os.path.join(root, "tools", "model_sites.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model_sites()


@contextlib.contextmanager
def threads(count: int):
    """torch's intra-op threads set to ``count`` (the CPU kernels split work by it)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def require_cuda_device(backend: Backend, free_bytes: int = 0) -> None:
    """For the GPU-only cases (64-bit offsets; tests/test_gpu.py has inductor, CUDA graphs and
    streams)."""
    if backend.device != "cuda":
        pytest.skip(f"{backend.id}: a GPU-only case")
    if free_bytes and torch.cuda.mem_get_info()[0] < free_bytes:
        pytest.skip(f"needs {free_bytes / 2 ** 30:.0f} GiB of free GPU memory")


def assert_cuda_and_triton_agree(op: str, inputs, names) -> None:
    """The CUDA and the compiled Triton kernels agree on CUDA inputs: tightly in fp32, in
    fp16/bf16 within the sum of what the 2x rule lets each differ from the fp32 reference
    (4x the reference's own error). Skips unless both run here."""
    import numerics
    from mobileformer import functional as reference

    for b in BACKENDS:
        if b.id in ("cuda", "triton") and b.skip_reason():
            pytest.skip(f"{b.id}: {b.skip_reason()}")
    results = {}
    for name in ("cuda", "triton"):
        with mf_kernels.use_backend(name):
            results[name], grad_output = numerics.outputs_and_grads(getattr(mf_kernels.ops, op),
                                                                    inputs)
    dtype = next(t for t in inputs if isinstance(t, torch.Tensor)).dtype
    low, _ = numerics.outputs_and_grads(getattr(reference, op), inputs, grad_output)
    high, _ = numerics.outputs_and_grads(getattr(reference, op), inputs, grad_output,
                                         torch.float32)
    for a, b, lo, hi, name in zip(results["cuda"], results["triton"], low, high, names):
        if dtype in numerics.LOW_PRECISION:
            diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
            err = (lo.double() - hi.double()).abs().max().item() if a.numel() else 0.0
            assert diff <= 4 * err + 2e-6, (f"{name}: cuda and triton differ by {diff:.3g}, more "
                                            f"than 4x the reference's own error {err:.3g}")
        else:
            numerics.assert_tight(a, b, name)


# (B, C, H, W, M, heads) of both attention suites: odd maps, one token, a detection head's 100
# queries (several token chunks on every backend), 1/2/4 heads, 20 channels per head, 2 channels
# per head, a 1x1 map, and a map spanning several tiles with a partial last one.
ATTENTION_SHAPES = [
    (2, 16, 7, 9, 6, 2),
    (1, 40, 7, 9, 6, 2),
    (2, 24, 5, 6, 1, 4),
    (1, 32, 8, 8, 100, 4),
    (3, 12, 4, 5, 6, 1),
    (2, 6, 3, 3, 3, 3),
    (2, 40, 1, 1, 6, 2),
    (1, 40, 23, 29, 6, 2),
]
# Maps large enough to split positions across programs/blocks (M = 40: several token chunks).
LARGE_ATTENTION_SHAPES = [(2, 64, 56, 56, 6, 2), (1, 40, 28, 28, 40, 2), (4, 192, 14, 14, 6, 2)]


# What the interpreter (every tl op a numpy call, programs one after another) is given: the
# model's call sites up to 14x14 maps (every head width and token count occurs there; the larger
# maps run on the cpu backend here and on the GPU), and fp16/bf16 on the shapes with at most
# 2000 token-position pairs (fp32 takes every shape).
INTERPRETER_MAX_SITE_POSITIONS = 196
INTERPRETER_MAX_LOW_PRECISION_PAIRS = 2000


def sites_for(backend: Backend, sites):
    """The model's call sites a backend is held to (all but the interpreter's largest maps)."""
    if not backend.interpreted:
        return list(sites)
    return [s for s in sites if s.H * s.W <= INTERPRETER_MAX_SITE_POSITIONS]


def interpreter_budget(backend: Backend, shape, dtype) -> None:
    """Skips an fp16/bf16 case of an attention shape (B, C, H, W, M, heads) too large for the
    interpreter (its fp32 case runs)."""
    if (backend.interpreted and dtype in LOW
            and shape[2] * shape[3] * shape[4] > INTERPRETER_MAX_LOW_PRECISION_PAIRS):
        pytest.skip(f"{backend.id}: fp16/bf16 on the small shapes only (time); fp32 runs here")


def on_device(args, device: str) -> list:
    """Test inputs moved to the backend's device (a tensor deliberately elsewhere stays)."""
    return [a.to(device) if isinstance(a, torch.Tensor) and a.device.type == "cpu" else a
            for a in args]


def bad_input_target(backend: Backend, op: str, route: str) -> Callable:
    """What a bad-input case calls: the typed entry point, or the dispatcher op itself (the
    extension's ops check their arguments in C++; the triton_* ops are internal)."""
    if route == "entry_point":
        return backend.fn(op)
    requires(backend, dispatcher=True)
    if backend.op_prefix:
        pytest.skip("the triton_* ops are internal: their entry point checks the input")
    return backend.ops(op)[op]


def check_float64_refused(backend: Backend, op: str, args) -> None:
    """A backend without fp64 kernels refuses fp64 input clearly: the Triton function with a
    TypeError naming x, the entry point with BackendUnavailableError."""
    if torch.float64 in backend.dtypes:
        pytest.skip(f"{backend.id} takes float64")
    fn = getattr(importlib.import_module(f"mf_kernels.triton.{op}"), op)
    with pytest.raises(TypeError, match="^x: .*float64"):
        fn(*args)
    with pytest.raises(mf_kernels.BackendUnavailableError, match="float64"):
        getattr(mf_kernels.ops, op)(*args)
