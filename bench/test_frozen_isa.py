"""The frozen CPU path per instruction set: the whole-network engine (``frozen_mobileformer``)
forced to each kernel set this CPU can run (``baseline``, ``avx2``, ``avx512``), beside the
frozen model's block-by-block path (ATen convolutions with our fused ops between them: what
``freeze`` ran before the engine existed) and the eager reference, batch 1 at 224x224.

Why: machines differ, and the engine picks its kernels at run time. The portable ``baseline``
kernels must never be slower than the block-by-block path on a machine without AVX2; to see
that on an AVX-512 machine, cap ATen, oneDNN and MKL to SSE4 as well, so that the block path
loses its AVX-512 convolutions exactly as it would on such a machine:

    ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 \\
        pytest bench/test_frozen_isa.py --benchmark-only

Run: pytest bench/test_frozen_isa.py --benchmark-only (MF_BENCH_THREADS, default 1).
"""
import copy

import pytest
import torch

import mf_kernels
from mf_kernels import _extension
from mf_kernels.benchmarking.builders import build_input, build_model

VARIANTS = ("mobileformer_508m", "mobileformer_214m", "mobileformer_26m")
SIZE, BATCH = 224, 1
ISAS = ("baseline", "avx2", "avx512")


def _usable_isas():
    best = mf_kernels.cpu_isa()
    return ISAS[:ISAS.index(best) + 1] if best in ISAS else ("baseline",)


def _run(benchmark, call, variant, impl):
    benchmark.group = f"frozen {variant} {SIZE}px b{BATCH}"
    benchmark.extra_info["impl"] = impl
    with torch.inference_mode():
        call()  # warm-up: workspaces, packed weights in cache
        benchmark(call)


@pytest.fixture(scope="module", params=VARIANTS)
def models(request):
    if not _extension.LOADED:
        pytest.skip(f"the C++ extension is not loaded: {_extension.LOAD_ERROR}")
    reference = build_model(request.param, accelerated=False, compiled=False, frozen=False,
                            device="cpu")
    frozen = mf_kernels.freeze(copy.deepcopy(reference))
    return request.param, reference, frozen


@pytest.mark.parametrize("impl", ("reference", "frozen blocks") + ISAS)
def test_frozen_isa(benchmark, models, impl):
    variant, reference, frozen = models
    x = build_input(BATCH, SIZE, torch.float32, "cpu")
    if impl == "reference":
        call = lambda: reference(x)  # noqa: E731
    elif impl == "frozen blocks":
        # the block-by-block path: the frozen model's modules, without the engine
        call = lambda: super(type(frozen), frozen).forward(x)  # noqa: E731
    else:
        if impl not in _usable_isas():
            pytest.skip(f"this CPU cannot run the {impl} kernels (best: {mf_kernels.cpu_isa()})")
        weights, config = frozen._engine
        call = lambda: torch.ops.mf_kernels.frozen_mobileformer(x, weights, config, impl)  # noqa: E731
    _run(benchmark, call, variant, f"engine {impl}" if impl in ISAS else impl)
