"""Run the rows of a benchmark plan and produce its record (a JSON-ready dict).

Per row: build the model, count params and MAdds on the uncompiled model, warm up (compiling
when asked), time with :func:`timing.measure`, then check the logits against the variant's
eager reference. A row that fails is recorded with its error and the run goes on.

Runtime rows (ONNX Runtime, OpenVINO; :mod:`.runtimes`) export the reference model once per
shape, build the runtime's session, and go through the same timing and parity check. A runtime
whose packages are missing is skipped with its reason, which is not a failure.
"""
from __future__ import annotations

import contextlib
import functools
import datetime
import gc
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch._dynamo
import torch.nn.functional as F

import mobileformer
import mf_kernels

from . import builders, environment, runtimes
from .plan import RUNTIME_LABELS, BenchConfig, Row, plan_rows
from .progress import Progress
from .memory import CpuPeakMemory
from .timing import cuda_synchronizer, measure

SCHEMA = "mf_kernels.bench/1"


def _cause_line(error: BaseException) -> str:
    """The informative line of an error: for a wrapped compiler error ("backend='inductor'
    raised:"), the underlying "SomethingError: ..." line rather than the wrapper's."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head:
            return line
    return lines[0] if lines else ""


@functools.lru_cache(maxsize=None)
def _mobileformer_counts(variant: str, size: int) -> Tuple[int, int]:
    """Params and MAdds of the *reference* model: every row of a variant does the same math,
    but the fused ops hide their work from the FLOP counter and freezing folds BatchNorm."""
    reference = mobileformer.create_model(variant)
    return builders.count_params(reference), mobileformer.count_madds(reference, size)


@functools.lru_cache(maxsize=None)
def _mobilenet_counts(width: float, size: int) -> Tuple[int, int]:
    model = builders.build_mobilenetv3(width)
    return builders.count_params(model), builders.count_flop_madds(model, size)


def _build(row: Row, config: BenchConfig):
    """(model to run, uncompiled model, params, MAdds) for one row."""
    train = config.mode == "train"
    weights_dtype = "fp32" if config.autocast else config.dtype
    common = dict(dtype=weights_dtype, device=config.device,
                  channels_last=config.channels_last, train=train)
    if row.is_mobileformer:
        raw = builders.build_model(row.model, accelerated=row.kind != "reference",
                                   compiled=False, frozen=row.kind == "frozen", **common)
        params, madds = _mobileformer_counts(row.model, row.size)
    else:
        raw = builders.build_mobilenetv3(row.width, **common)
        params, madds = builders.count_params(raw), builders.count_flop_madds(raw, row.size)
    model = builders.compile_model(raw) if row.compiled else raw
    return model, raw, params, madds


def _step(model, raw, x: torch.Tensor, config: BenchConfig) -> Callable[[], object]:
    """One inference call, or one full training step (forward, loss, backward, optimizer)."""
    if config.mode == "infer":
        return lambda: model(x)
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(0, 1000, (x.shape[0],), generator=generator).to(config.device)
    optimizer_class = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[config.optimizer]
    optimizer = optimizer_class(raw.parameters(), lr=1e-3)
    low = builders.parse_dtype(config.dtype)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(config.device, dtype=low, enabled=config.autocast):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        return loss
    return train_step


@contextlib.contextmanager
def _ieee_fp32(device: str):
    """TF32 off on CUDA for the parity forward. cuDNN convolutions default to TF32 (10-bit
    mantissa), whose rounding alone would exceed a 1e-4 check; the timings keep the default."""
    if device != "cuda":
        yield
        return
    settings = [torch.backends.cudnn.conv, torch.backends.cuda.matmul]
    previous = [backend.fp32_precision for backend in settings]
    try:
        for backend in settings:
            backend.fp32_precision = "ieee"
        yield
    finally:
        for backend, value in zip(settings, previous):
            backend.fp32_precision = value


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    out, reference = out.detach().double().cpu(), reference.detach().double().cpu()
    return float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def _run_row(row: Row, config: BenchConfig,
             references: Dict[str, torch.Tensor], progress: Progress) -> Dict[str, object]:
    result: Dict[str, object] = {
        "id": row.id, "model": row.name, "size": row.size, "kind": row.kind,
        "compiled": row.compiled, "label": row.label, "batch": config.batch,
        "reference_id": row.reference_id}
    cuda = config.device == "cuda"
    model, raw, result["params"], result["madds"] = _build(row, config)
    input_dtype = "fp32" if config.autocast else config.dtype  # autocast casts inside
    x = builders.build_input(config.batch, row.size, input_dtype, config.device,
                             config.channels_last)
    step = _step(model, raw, x, config)
    cpu_memory = CpuPeakMemory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    elif config.mode == "train":  # memory is reported for training steps
        cpu_memory.start()
    timing_options = dict(min_time_s=config.min_time_s, min_repeats=config.min_repeats,
                          max_repeats=config.max_repeats, warmup=config.warmup,
                          synchronize=cuda_synchronizer(config.device))
    with torch.inference_mode(config.mode == "infer"):
        timing = measure(step, **timing_options)
        if config.mode == "infer" and (row.is_mobileformer or not row.compiled):
            if row.compiled:  # switching TF32 would recompile: compiled rows are informative
                logits = model(x)
            else:
                with _ieee_fp32(config.device):
                    logits = model(x)
            if row.parity_reference_id is None:  # a reference: the others are checked on it
                references[row.id] = logits.detach().clone()
            elif row.parity_reference_id in references:
                _note_parity(result, logits, references[row.parity_reference_id], row, config,
                             progress)
    result.update(timing.summary_ms())
    if row.compiled:
        # the first call compiles; less one ordinary call, it is the compile time
        result["compile_s"] = max(0.0, timing.first_call_s - timing.median_s)
    result["images_per_s"] = config.batch / timing.median_s
    # CPU: the resident-set peak above the start of the row (model and input already built).
    result["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if cuda
                                else cpu_memory.peak_mib())
    return result


def _note_parity(result: Dict[str, object], logits, reference: torch.Tensor, row: Row,
                 config: BenchConfig, progress: Progress) -> None:
    result["rel_err"] = _relative_error(torch.as_tensor(logits), reference)
    if not row.compiled:  # said at once: no need to wait for the table
        progress.note(f"parity: {row.name} {row.size}px {row.label} vs reference: "
                      f"rel err {result['rel_err']:.1e} "
                      f"(gated at {config.parity_tolerance:g} in fp32)")


def _run_runtime_row(row: Row, config: BenchConfig, references: Dict[str, torch.Tensor],
                     progress: Progress, exports: runtimes.OnnxExports) -> Dict[str, object]:
    """Export the reference (once per shape), build the runtime's session, time it with the
    same machinery as the torch rows, and check its logits against the reference's."""
    result: Dict[str, object] = {
        "id": row.id, "model": row.name, "size": row.size, "kind": row.kind,
        "compiled": False, "label": row.label, "batch": config.batch,
        "reference_id": row.reference_id}
    # the same images as the torch rows, as the NCHW array the exported graph takes
    x = builders.build_input(config.batch, row.size, "fp32", "cpu")

    def build():
        model = (builders.build_model(row.model, accelerated=False, compiled=False)
                 if row.is_mobileformer else builders.build_mobilenetv3(row.width))
        return model, x

    path, result["onnx"], exported = exports.get((row.name, config.batch, row.size), build)
    if exported:
        result["export_s"] = result["onnx"]["export_s"]
        progress.note(f"export: {row.name} {row.size}px batch {config.batch} to ONNX in "
                      f"{result['export_s']:.0f} s")
    session = runtimes.make_session(row.kind, path, config.threads)
    result["runtime"] = session.info
    result["params"], result["madds"] = (_mobileformer_counts(row.model, row.size)
                                         if row.is_mobileformer
                                         else _mobilenet_counts(row.width, row.size))
    array = x.numpy()
    timing = measure(lambda: session(array), min_time_s=config.min_time_s,
                     min_repeats=config.min_repeats, max_repeats=config.max_repeats,
                     warmup=config.warmup)
    if row.parity_reference_id in references:
        _note_parity(result, torch.from_numpy(session(array)),
                     references[row.parity_reference_id], row, config, progress)
    result.update(timing.summary_ms())
    result["images_per_s"] = config.batch / timing.median_s
    result["peak_memory_mb"] = None  # measured for training steps only
    return result


def _check_parity(results: List[Dict[str, object]], config: BenchConfig) -> Dict[str, object]:
    """The accelerated model must reproduce the reference logits (gated in fp32 and fp64 only:
    in bf16/fp16 the reference itself rounds differently, so the error is reported, not
    judged). Compiled rows are reported too, for information."""
    gated = config.mode == "infer" and config.dtype in ("fp32", "fp64")
    tolerance = config.parity_tolerance if config.dtype == "fp32" else 1e-9
    checks = []
    for result in results:
        if result["kind"] in ("accelerated", "frozen", *RUNTIME_LABELS) and (
                not result["compiled"]):
            error = result.get("rel_err")
            ok = None if not gated else (error is not None and error <= tolerance)
            result["parity_ok"] = ok
            checks.append({"id": result["id"], "rel_err": error, "ok": ok})
    return {"tolerance": tolerance, "gated": gated, "checks": checks,
            "ok": all(c["ok"] is not False for c in checks),
            "note": None if gated else (
                "not checked in train mode" if config.mode == "train" else
                f"reported, not gated, in {config.dtype}")}


def _add_ratios(results: List[Dict[str, object]], rows: List[Row]) -> None:
    medians = {r["id"]: r.get("median_ms") for r in results}
    for result, row in zip(results, rows):
        for key, other in (("ratio_to_eager_reference", row.reference_id),
                           ("ratio_to_ort", row.ort_id)):
            if result.get("median_ms") and medians.get(other):
                result[key] = result["median_ms"] / medians[other]


def run(config: BenchConfig, command: Optional[List[str]] = None) -> Dict[str, object]:
    """Run the whole benchmark and return its record (see ``report.write_record``)."""
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)

    # a run compiles each row's model afresh; the default limit (8) would silently fall back
    # to eager after a few sizes of --figure5 --compile
    previous_limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(previous_limit, 64)
    env = environment.describe(config.device, config.threads)
    skipped = {runtime: runtimes.unavailable_reason(runtime, config.device, config.dtype,
                                                    config.mode)
               for runtime in config.runtimes}
    skipped = {runtime: reason for runtime, reason in skipped.items() if reason}
    rows = plan_rows(config, has_freeze=hasattr(mf_kernels, "freeze"),
                     runtimes=[r for r in config.runtimes if r not in skipped])
    exports = runtimes.OnnxExports()
    progress = Progress(len(rows), enabled=config.progress)
    references: Dict[str, torch.Tensor] = {}
    results: List[Dict[str, object]] = []
    try:
        for row in rows:
            what = ("exporting, then timing" if row.is_runtime else
                    "compiling, then timing" if row.compiled else "timing")
            progress.show(f"{row.name} {row.size}px {row.label}: {what}")
            try:
                results.append(
                    _run_runtime_row(row, config, references, progress, exports)
                    if row.is_runtime else _run_row(row, config, references, progress))
            except Exception as error:  # record it and go on: one broken row spoils no run
                first = _cause_line(error)
                results.append({"id": row.id, "model": row.name, "size": row.size,
                                "kind": row.kind, "compiled": row.compiled, "label": row.label,
                                "batch": config.batch, "reference_id": row.reference_id,
                                "error": f"{type(error).__name__}: {first}"[:500]})
            progress.advance(f"{row.name} {row.size}px {row.label}: done")
            gc.collect()
            if row.compiled:
                torch._dynamo.reset()  # drop the graphs of models that will not run again
    finally:
        progress.close()
        exports.close()
        torch._dynamo.config.recompile_limit = previous_limit
        torch.set_num_threads(previous_threads)
    _add_ratios(results, rows)
    parity = _check_parity(results, config)
    env["load_average_at_end"] = environment.load_average()
    config_block = {k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in vars(config).items()}
    config_block["autocast"] = config.autocast
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "config": config_block,
        "environment": env,
        "timing_method": (f"{config.warmup} warm-up call(s) (the first timed apart: it "
                          "compiles under torch.compile), then "
                          f"repeats for >= {config.min_time_s:g} s and >= {config.min_repeats}"
                          " calls; median, quartiles, min and max per row"),
        "results": results,
        "parity": parity,
        # asked-for runtimes that could not run here, with the one-line reason (not failures)
        "skipped": [{"rows": RUNTIME_LABELS[runtime], "runtime": runtime, "reason": reason}
                    for runtime, reason in skipped.items()],
        "errors": [r["id"] for r in results if "error" in r],
        "wall_s": time.perf_counter() - started,
    }


__all__ = ["SCHEMA", "run"]
