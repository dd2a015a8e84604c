"""Backend selection and the fallback when the extension cannot load."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

import mf_kernels
import mobileformer
from mf_kernels import _extension, backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_available_backends_reports_every_op_and_backend():
    table = mf_kernels.available_backends()
    assert set(table) == set(backends.OPS)
    for op, row in table.items():
        assert set(row) == set(backends.BACKENDS)
        assert row["reference"].available
        for availability in row.values():
            assert availability.available == (not availability.reasons)


def test_set_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend: expected one of"):
        mf_kernels.set_backend("fast")


def test_use_backend_restores_the_previous_selection():
    mf_kernels.set_backend("auto")
    with mf_kernels.use_backend("reference"):
        assert mf_kernels.get_backend() == "reference"
        x, s = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 2)
        torch.testing.assert_close(mf_kernels.ops.dynamic_relu(x, s),
                                   mobileformer.functional.dynamic_relu(x, s))
        assert backends.backend_for("dynamic_relu", x.device) == "reference"
    assert mf_kernels.get_backend() == "auto"


def test_auto_picks_the_cpu_kernel_on_cpu_tensors():
    assert backends.backend_for("dynamic_relu", torch.device("cpu")) == "cpu"


def test_forced_backend_that_cannot_run_lists_the_reasons():
    # a CUDA build refuses CPU tensors; a CPU-only build has no CUDA kernels at all
    reason = ("takes CUDA tensors" if _extension.WITH_CUDA
              else "the extension was built without CUDA kernels")
    with mf_kernels.use_backend("cuda"):
        with pytest.raises(mf_kernels.BackendUnavailableError,
                           match=f"'cuda' cannot run dynamic_relu on cpu tensors.*{reason}"):
            mf_kernels.ops.dynamic_relu(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 2))


def test_environment_variable_selects_the_backend():
    result = run_python("import mf_kernels; print(mf_kernels.get_backend())",
                        MF_KERNELS_BACKEND="reference")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    bad = run_python("import mf_kernels", MF_KERNELS_BACKEND="fastest")
    assert bad.returncode != 0 and "MF_KERNELS_BACKEND: backend: expected one of" in bad.stderr


def test_import_survives_an_unloadable_extension_and_falls_back():
    """A broken _C: import works, warns once with the reason, and the reference runs."""
    code = """
import sys, warnings
sys.modules["mf_kernels._C"] = None  # makes `from . import _C` raise ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import mf_kernels
    import mf_kernels.ops
import torch
messages = [str(w.message) for w in caught if "mf_kernels" in str(w.message)]
print(len(messages)); print(messages[0])
x, s = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2)
from mobileformer import functional
assert torch.equal(mf_kernels.ops.dynamic_relu(x, s), functional.dynamic_relu(x, s))
print(mf_kernels.available_backends()["dynamic_relu"]["cpu"].available)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    count, message, cpu_available = result.stdout.strip().splitlines()
    assert count == "1"
    assert "Falling back to the reference" in message
    assert cpu_available == "False"


def test_no_cuda_query_at_import():
    code = """
import torch
calls = []
torch.cuda.is_available = lambda: calls.append(1) or False
torch.cuda.device_count = lambda: calls.append(1) or 0
import mf_kernels, mobileformer
print(len(calls))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_forced_triton_rejects_fp64_with_the_reason():
    """Triton takes no fp64: forcing it says so (here under TRITON_INTERPRET=1, set by conftest)."""
    x, s = torch.randn(1, 2, 3, 3, dtype=torch.float64), torch.randn(1, 2, 2, dtype=torch.float64)
    with mf_kernels.use_backend("triton"):
        with pytest.raises(mf_kernels.BackendUnavailableError, match="float64"):
            mf_kernels.ops.dynamic_relu(x, s)


def test_triton_runs_the_public_entry_point_under_the_interpreter():
    x, s = torch.randn(2, 3, 5, 7), torch.randn(2, 3, 2)
    with mf_kernels.use_backend("triton"):
        assert backends.backend_for("dynamic_relu", x.device, x.dtype) == "triton"
        torch.testing.assert_close(mf_kernels.ops.dynamic_relu(x, s),
                                   mobileformer.functional.dynamic_relu(x, s))


@pytest.fixture
def pretend_cuda(monkeypatch):
    """As if a CUDA GPU were visible: backend choice only (no CUDA tensor is made)."""
    monkeypatch.setattr(backends, "_cuda_available", lambda: True)
    monkeypatch.setattr(backends, "_choice_cache", {})
    monkeypatch.setattr(backends, "_warned_unverified", set())
    monkeypatch.setitem(backends._MACHINE_REASONS, "triton", ())
    return torch.device("cuda")


def test_auto_on_cuda_runs_the_reference_until_a_gpu_run_verifies_a_backend(pretend_cuda,
                                                                           monkeypatch):
    monkeypatch.setattr(backends, "GPU_VERIFIED", {})
    for dtype in (torch.float32, torch.bfloat16):
        assert backends.backend_for("m2f_attention", pretend_cuda, dtype) == "reference"
        chosen, passed_over = backends.explain_auto("m2f_attention", "cuda", dtype)
        assert chosen == "reference"
        assert "not verified on a GPU yet" in dict(passed_over)["triton"][0]
    # the CPU is not affected: its kernels are tested in CI
    assert backends.explain_auto("m2f_attention", "cpu", torch.float32)[0] in ("cpu", "reference")


def test_a_verified_backend_is_taken_by_auto(pretend_cuda, monkeypatch):
    monkeypatch.setattr(backends, "GPU_VERIFIED", {"triton": "bench/results/<date>-h200/..."})
    assert backends.backend_for("dynamic_relu", pretend_cuda, torch.float32) == "triton"
    assert backends.explain_auto("dynamic_relu", "cuda", torch.float32) == ("triton", [])
    # fp64 is not Triton's: auto goes on down the order
    chosen, passed_over = backends.explain_auto("dynamic_relu", "cuda", torch.float64)
    assert "float64" in dict(passed_over)["triton"][0]


def test_an_unverified_backend_chosen_explicitly_runs_and_warns_once(pretend_cuda, monkeypatch):
    monkeypatch.setattr(backends, "GPU_VERIFIED", {})
    with mf_kernels.use_backend("triton"):
        with pytest.warns(backends.UnverifiedBackendWarning, match="not verified on a GPU"):
            assert backends.backend_for("dynamic_relu", pretend_cuda, torch.float32) == "triton"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: no second warning, for any op or dtype
            assert backends.backend_for("m2f_attention", pretend_cuda, torch.float16) == "triton"
    # CPU tensors through the interpreter never warn: the warning is about GPUs
    if not backends._triton_interpreted():
        return
    monkeypatch.setattr(backends, "_warned_unverified", set())
    with mf_kernels.use_backend("triton"), warnings.catch_warnings():
        warnings.simplefilter("error")
        x, s = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 2)
        mf_kernels.ops.dynamic_relu(x, s)


def test_every_verification_names_a_committed_results_file():
    for backend, path in backends.GPU_VERIFIED.items():
        assert backend in ("cuda", "triton"), backend
        assert os.path.exists(os.path.join(ROOT, path)), f"{backend}: {path} is not committed"


def test_bench_records_name_the_backend_each_op_ran_on():
    """Regression: records said 'no implementation' for every op (a nonexistent function called
    under a broad except)."""
    from mf_kernels.benchmarking import environment

    choice = environment.describe("cpu", threads=1)["backends"]
    assert choice["selected"] == "auto"
    for op in backends.OPS:
        assert set(choice[op]) == {"fp32", "fp16", "bf16", "fp64"}
        for name, dtype in (("fp32", torch.float32), ("fp64", torch.float64)):
            assert choice[op][name] == backends.backend_for(op, torch.device("cpu"), dtype)
            assert choice[op][name] in backends.BACKENDS
    with mf_kernels.use_backend("reference"):
        assert environment.backend_choice("cpu")["dynamic_relu"]["bf16"] == "reference"
    with mf_kernels.use_backend("triton"):  # CPU tensors: only under TRITON_INTERPRET=1
        choice = environment.backend_choice("cpu")
        if backends._triton_interpreted():
            assert choice["dynamic_relu"]["fp32"] == "triton"
        assert choice["dynamic_relu"]["fp64"].startswith("unavailable: ") \
            and "float64" in choice["dynamic_relu"]["fp64"]


def test_direct_use_of_unverified_kernels_on_cuda_warns_once(pretend_cuda, monkeypatch):
    """The frozen model calls the extension's ops directly, whatever auto says: it warns."""
    monkeypatch.setattr(backends, "GPU_VERIFIED", {})
    with pytest.warns(backends.UnverifiedBackendWarning, match="'cuda'"):
        backends.note_direct_use("cuda", pretend_cuda)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backends.note_direct_use("cuda", pretend_cuda)        # once
        backends.note_direct_use("cuda", torch.device("cpu"))  # never for CPU tensors
    monkeypatch.setattr(backends, "_warned_unverified", set())
    monkeypatch.setattr(backends, "GPU_VERIFIED", {"cuda": "bench/results/..."})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backends.note_direct_use("cuda", pretend_cuda)        # verified: silent
