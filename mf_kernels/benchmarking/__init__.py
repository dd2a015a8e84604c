"""Benchmarks of mf_kernels: shared builders and timing, the ``mf-kernels`` command.

* :mod:`.builders`: models and inputs (also imported by the pytest-benchmark suites in bench/)
* :mod:`.timing`: warm-up, time-budgeted repeats, median and spread
* :mod:`.plan`, :mod:`.runner`: what a run measures, and running it into a record
* :mod:`.runtimes`: the reference exported to ONNX, run by ONNX Runtime and OpenVINO
* :mod:`.report`, :mod:`.figure`: table, JSON, Markdown, compare; the latency/size figure
* :mod:`.environment`, :mod:`.isa`: the machine, the software, which instruction set ran
* :mod:`.cli`: ``mf-kernels bench`` and ``mf-kernels compare``

Importing this package imports neither torchvision, matplotlib, onnxruntime nor openvino: they
load when used.
"""
from .builders import build_input, build_mobilenetv3, build_model
from .timing import Timing, measure

__all__ = ["build_model", "build_input", "build_mobilenetv3", "measure", "Timing"]
