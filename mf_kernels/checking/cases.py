"""One comparison of ``mf-kernels check``: an op on one backend, dtype, layout and shape,
forward and every gradient, against :mod:`mobileformer.functional` on fresh random inputs.

The expected values: fp32 and fp64 against the reference computed in fp64 (cast down), by the
tight rule; fp16 and bf16 by the 2x rule (the reference in fp32 and again in the dtype). The
output and grad_x must also follow the layout rule (channels_last in, channels_last out).
"""
from __future__ import annotations

import math
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

import mobileformer.functional as reference

from . import numerics
from .sites import Site

DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16,
                                  "bf16": torch.bfloat16, "fp64": torch.float64}
# The names of the compared tensors: the output, then the gradient of every tensor input.
OUTPUT_NAMES = {"dynamic_relu": ("out", "grad_x", "grad_slope"),
                "m2f_attention": ("out", "grad_x", "grad_q"),
                "f2m_attention": ("out", "grad_x", "grad_k", "grad_v")}


class Case(NamedTuple):
    op: str
    backend: str
    dtype: str      # a key of DTYPES
    layout: str     # one of numerics.LAYOUTS
    batch: int
    site: Site
    group: str      # which set of shapes it belongs to, e.g. "sites", "training", "detection"

    def describe(self) -> str:
        return (f"{self.op} on {self.backend}, {self.dtype}, {self.layout}, "
                f"{self.site.describe(self.batch)} ({self.group})")


@dataclass
class Result:
    case: Case
    status: str                       # "pass", "fail", "skip" or "error"
    message: str = ""                 # why it failed, errored or was skipped
    worst: str = ""                   # the tensor with the largest error / allowed
    error: float = float("nan")
    allowed: float = float("nan")
    forward_us: Optional[float] = None
    forward_backward_us: Optional[float] = None
    verdicts: Dict[str, Tuple[float, float]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "error")


class _Inputs(NamedTuple):
    tensors: Tuple[Tensor, ...]   # fp32 masters: x (possibly a wide tensor to slice), tokens
    heads: int


def _make_inputs(case: Case, device: torch.device, generator: torch.Generator) -> _Inputs:
    """fp32 masters of the op's tensor inputs. The feature map is built in its layout by
    ``_cast``; tokens and slopes are plain [B, ., .] tensors (sliced in the "sliced" layout)."""
    site, B = case.site, case.batch
    C, H, W = site.chw

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=device)

    wide = case.layout == "sliced"
    x = randn(B, 2 * C + 1, H, W + 1) if wide else randn(B, C, H, W)
    if site.op == "dynamic_relu":
        # The authors' slopes: a1 around 1, a2 around 0 (h-sigmoid of a hyper-MLP, rescaled).
        slope = torch.stack((1 + 0.5 * randn(B, C), 0.5 * randn(B, C)), -1)[..., :site.pieces]
        if site.pieces > 2:
            slope = randn(B, C, site.pieces)
        others = (torch.cat((slope, slope), 1) if wide else slope,)
    else:
        count = 1 if site.op == "m2f_attention" else 2
        others = tuple(randn(B, site.tokens, 2 * C if wide else C) for _ in range(count))
    return _Inputs((x,) + others, site.heads)


def _cast(inputs: _Inputs, case: Case, dtype: torch.dtype) -> List[Tensor]:
    """The inputs in ``dtype``, the feature map in the case's layout, as autograd leaves."""
    x, *others = inputs.tensors
    x = x.to(dtype)
    if case.layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif case.layout == "sliced":
        x = x[:, 1::2, :, 1:]
    leaves = [x.detach().requires_grad_(True)]
    for t in others:
        t = t.to(dtype)
        if case.layout == "sliced":  # every other channel: non-contiguous tokens/slopes too
            t = t[:, ::2] if case.op == "dynamic_relu" else t[..., ::2]
        leaves.append(t.detach().requires_grad_(True))
    return leaves


def _call(fn: Callable, case: Case, leaves: Sequence[Tensor], heads: int) -> Tensor:
    if case.op == "dynamic_relu":
        return fn(leaves[0], leaves[1])
    return fn(*leaves, heads)


def _run(fn: Callable, case: Case, leaves: Sequence[Tensor], heads: int,
         grad_out: Tensor) -> List[Tensor]:
    out = _call(fn, case, leaves, heads)
    return [out.detach()] + [g.detach() for g in
                             numerics.grads(out, leaves, grad_out.to(out.dtype))]


def _layout_problem(case: Case, got: List[Tensor], x: Tensor) -> Optional[str]:
    from mf_kernels.ops._checks import output_memory_format

    fmt = output_memory_format(x)
    names = OUTPUT_NAMES[case.op]
    for name, t in zip(names, got):
        is_map = t.dim() == 4
        if is_map and not t.is_contiguous(memory_format=fmt):
            return f"{name}: strides {t.stride()} are not {fmt} (the layout rule)"
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_us(fn: Callable[[], object], device: torch.device, budget_s: float,
            max_repeats: int = 50) -> float:
    """Median microseconds of ``fn`` (already warmed up): at least 3 calls, more while the
    budget lasts. CUDA calls are timed with events around each call."""
    times: List[float] = []
    started = time.perf_counter()
    while len(times) < 3 or (len(times) < max_repeats
                             and time.perf_counter() - started < budget_s):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) * 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def run_case(case: Case, device: torch.device, seed: int, timing_budget_s: float = 0.0) -> Result:
    """Run ``case`` on ``device``: fresh inputs from ``seed``, forward and every gradient on the
    case's backend against the reference; then, if ``timing_budget_s`` > 0, time the backend's
    forward and forward+backward."""
    import mf_kernels
    from mf_kernels import backends

    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        inputs = _make_inputs(case, device, generator)
        dtype = DTYPES[case.dtype]
        leaves = _cast(inputs, case, dtype)
        out_shape = leaves[0].shape if case.op != "m2f_attention" else leaves[1].shape
        grad_out = torch.randn(out_shape, generator=generator, device=device)
        op = getattr(mf_kernels.ops, case.op)
        with mf_kernels.use_backend(case.backend):
            got = _run(op, case, leaves, inputs.heads, grad_out)
            ran_on = backends.backend_for(case.op, device, dtype)
        if ran_on != case.backend:  # cannot happen with a forced backend; guards the check
            return Result(case, "error", f"ran on {ran_on}, not {case.backend}")
        problem = _layout_problem(case, got, leaves[0])
        high = torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32
        verdicts: Dict[str, numerics.Verdict] = {}
        if dtype in numerics.LOW_PRECISION:
            # flash-attention's rule: the reference in fp32 on the very inputs the kernel got
            # (rounded to the dtype, grad_out too), so that both errors are computing errors.
            # Against the unrounded fp32 masters, the rounding of the inputs, common to both,
            # can nearly cancel the reference's own error at its worst element: then even the
            # exact result on the rounded inputs, correctly rounded, fails (measured: m2f's
            # out on 1 of 100 seeds, grad_x on 2, on a 112x112 site in bf16).
            grad_out = grad_out.to(dtype)
            truth_inputs = [t.detach().to(high).requires_grad_(True) for t in leaves]
            expected = _run(getattr(reference, case.op), case, truth_inputs, inputs.heads,
                            grad_out)
            low = _run(getattr(reference, case.op), case, _cast(inputs, case, dtype),
                       inputs.heads, grad_out)
            for name, a, lo, hi in zip(OUTPUT_NAMES[case.op], got, low, expected):
                verdicts[name] = numerics.within_2x(a, lo, hi)
        else:
            expected = _run(getattr(reference, case.op), case, _cast(inputs, case, high),
                            inputs.heads, grad_out)
            for name, a, e in zip(OUTPUT_NAMES[case.op], got, expected):
                verdicts[name] = numerics.tight(a, e.to(dtype))
    except Exception as error:  # reported as a failed case, with its cause; never hidden
        last = traceback.extract_tb(error.__traceback__)[-1]
        return Result(case, "error", f"{type(error).__name__}: {error} "
                                     f"(at {last.filename.rsplit('/', 1)[-1]}:{last.lineno})")
    worst = max(verdicts, key=lambda n: _badness(verdicts[n]))
    result = Result(case, "pass", worst=worst, error=verdicts[worst].error,
                    allowed=verdicts[worst].allowed,
                    verdicts={n: (v.error, v.allowed) for n, v in verdicts.items()})
    failing = [n for n, v in verdicts.items() if not v.ok]
    if failing or problem:
        result.status = "fail"
        result.message = "; ".join(
            [f"{n}: error {verdicts[n].error:.3g} > allowed {verdicts[n].allowed:.3g}"
             for n in failing] + ([problem] if problem else []))
    if timing_budget_s > 0 and result.status == "pass":
        _time(result, op, inputs, leaves, grad_out, device, timing_budget_s)
    return result


def _badness(verdict: numerics.Verdict) -> float:
    return math.inf if math.isnan(verdict.error) else verdict.ratio


def _time(result: Result, op: Callable, inputs: _Inputs, leaves: List[Tensor],
          grad_out: Tensor, device: torch.device, budget_s: float) -> None:
    import mf_kernels

    case = result.case
    grad_out = grad_out.to(leaves[0].dtype)
    with mf_kernels.use_backend(case.backend):
        def forward():
            _call(op, case, leaves, inputs.heads)
            _sync(device)

        def forward_backward():
            out = _call(op, case, leaves, inputs.heads)
            torch.autograd.grad(out, leaves, grad_out)
            _sync(device)

        result.forward_us = time_us(forward, device, budget_s / 2)
        result.forward_backward_us = time_us(forward_backward, device, budget_s / 2)


__all__ = ["DTYPES", "OUTPUT_NAMES", "Case", "Result", "run_case", "time_us"]
