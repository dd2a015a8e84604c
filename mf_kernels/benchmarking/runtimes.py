"""ONNX Runtime and OpenVINO, the runtimes a CPU deployment would reach for, measured beside
our rows: export the *reference* model to ONNX, then run it as a deployment would.

* Export: ``torch.onnx.export(model, (x,), path, dynamo=True)``, torch's current exporter at its
  defaults (``optimize=True``: the ONNX graph is cleaned by onnxscript's optimizer). One static
  export per (model, batch, image size), like the static ``torch.compile`` rows: a fixed-size
  deployment would export that way, and the runtimes get their best case (shapes known at
  session creation). The files live in a temporary directory for the run; the ONNX Runtime and
  OpenVINO rows of one shape share one export.
* ONNX Runtime: CPUExecutionProvider, graph optimisations at ORT_ENABLE_ALL (its default for
  deployment), sequential execution, ``intra_op_num_threads`` = the run's ``--threads``,
  ``inter_op_num_threads`` = 1.
* OpenVINO: CPU device, ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS`` = ``--threads``
  and ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AVX512_BF16 or AMX its default is bf16,
  which would time another precision (and miss the parity check by ~1e-2).

The packages are optional (the ``compare`` extra): each is imported only when used, and
:func:`unavailable_reason` says in one line why a runtime cannot run.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .plan import RUNTIMES

EXPORTER = "torch.onnx.export(model, (x,), path, dynamo=True)"
INSTALL_HINT = "pip install -e '.[compare]'"
# What each runtime needs: the runtime itself, and what torch's exporter imports.
_REQUIRES = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"),
             "openvino": ("openvino", "onnx", "onnxscript")}


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def unavailable_reason(runtime: str, device: str = "cpu", dtype: str = "fp32",
                       mode: str = "infer") -> Optional[str]:
    """None when ``runtime`` can be measured in a run with these settings, else one line."""
    if runtime not in _REQUIRES:
        raise ValueError(f"runtime: expected one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if mode != "infer":
        return "inference only (--mode train)"
    if device != "cpu":
        return f"CPU runtimes, not compared on --device {device}"
    if dtype != "fp32":
        return f"the export is timed in fp32 only, this run is {dtype}"
    missing = [module for module in _REQUIRES[runtime] if not _importable(module)]
    if missing:
        return f"{', '.join(missing)} not installed ({INSTALL_HINT})"
    return None


def versions() -> Dict[str, Optional[str]]:
    """Installed versions of the runtimes and the exporter's packages (None: not installed);
    read from the package metadata, so nothing is imported."""
    found: Dict[str, Optional[str]] = {}
    for package in ("onnxruntime", "openvino", "onnx", "onnxscript"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def export_onnx(model: nn.Module, x: torch.Tensor, path: str) -> Dict[str, object]:
    """Export ``model`` at the static shape of ``x`` to ``path``; return what the record keeps."""
    import onnx

    model.eval()
    started = time.perf_counter()
    torch.onnx.export(model, (x,), path, dynamo=True, verbose=False)
    export_s = time.perf_counter() - started
    graph = onnx.load(path, load_external_data=False)
    opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    # the exporter writes the weights beside the graph (external_data=True, its default)
    files = [path] + [path + ".data"] * os.path.exists(path + ".data")
    return {"exporter": EXPORTER, "export_s": export_s, "opset": opset,
            "nodes": len(graph.graph.node), "input_shape": list(x.shape),
            "file_mb": sum(os.path.getsize(f) for f in files) / 2**20}


class OnnxExports:
    """The ONNX files of one run, one per key (model, batch, size), in a temporary directory
    removed by :meth:`close`."""

    def __init__(self) -> None:
        self._directory: Optional[str] = None
        self._files: Dict[Tuple, Tuple[str, Dict[str, object]]] = {}
        self._failed: Dict[Tuple, str] = {}  # a failed export is not retried by the next row

    def get(self, key: Tuple, build: Callable[[], Tuple[nn.Module, torch.Tensor]]
            ) -> Tuple[str, Dict[str, object], bool]:
        """(path, export info, whether this call exported it). ``build`` makes the model and
        its example input, only when the key has no file yet."""
        if key in self._files:
            path, info = self._files[key]
            return path, info, False
        if key in self._failed:
            raise RuntimeError(f"the ONNX export failed for an earlier row: {self._failed[key]}")
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="mf-kernels-onnx-")
        path = os.path.join(self._directory, "-".join(map(str, key)) + ".onnx")
        try:
            model, x = build()
            info = export_onnx(model, x, path)
        except Exception as error:  # remembered, then raised again: the row records it
            self._failed[key] = f"{type(error).__name__}: {str(error).strip()[:300]}"
            raise
        self._files[key] = (path, info)
        return path, info, True

    def close(self) -> None:
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._directory, self._files, self._failed = None, {}, {}


class Session:
    """A compiled model of one runtime: ``session(x)`` runs it on a contiguous fp32 array."""

    run: Callable[[np.ndarray], np.ndarray]
    info: Dict[str, object]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


def onnxruntime_session(path: str, threads: int) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    started = time.perf_counter()
    inference = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    session = Session()
    session.info = {
        "runtime": "onnxruntime", "version": ort.__version__,
        "session_s": time.perf_counter() - started,
        "execution_providers": inference.get_providers(),  # the ones that ran, in order
        "graph_optimization_level": "ORT_ENABLE_ALL", "intra_op_num_threads": threads,
        "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL"}
    name = inference.get_inputs()[0].name
    session.run = lambda x: inference.run(None, {name: x})[0]
    return session


def _plain(value) -> str:
    """An OpenVINO property as text: element types by their short name ("f32"), lists joined."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(_plain, value))
    name = getattr(value, "get_type_name", None)
    return name() if callable(name) else str(value)


def openvino_session(path: str, threads: int) -> Session:
    import openvino

    core = openvino.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}
    started = time.perf_counter()
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    session = Session()
    session.info = {"runtime": "openvino", "version": importlib.metadata.version("openvino"),
                    "build": openvino.__version__, "session_s": time.perf_counter() - started}
    # what the compiled model really uses, read back rather than assumed
    for key in ("EXECUTION_DEVICES", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
                "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT"):
        session.info[key.lower()] = _plain(compiled.get_property(key))

    def run(x: np.ndarray) -> np.ndarray:
        # share_inputs: the request reads the array in place, as ONNX Runtime does
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()
    session.run = run
    return session


def make_session(runtime: str, path: str, threads: int) -> Session:
    return {"onnxruntime": onnxruntime_session, "openvino": openvino_session}[runtime](
        path, threads)


__all__ = ["EXPORTER", "unavailable_reason", "versions", "export_onnx",
           "OnnxExports", "Session", "make_session"]
