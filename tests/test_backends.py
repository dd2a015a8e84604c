"""Backend selection and the fallback when the extension cannot load."""
import os
import subprocess
import sys

import pytest
import torch

import mf_kernels
import mobileformer
from mf_kernels import backends

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
    with mf_kernels.use_backend("cuda"):
        with pytest.raises(mf_kernels.BackendUnavailableError,
                           match="'cuda' cannot run dynamic_relu on cpu tensors: .*CUDA tensors"):
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
