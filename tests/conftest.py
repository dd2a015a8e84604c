"""Test configuration.

TRITON_INTERPRET must be set before any Triton kernel is imported: the Triton tests run on
the CPU through the interpreter by default. On a GPU machine run with TRITON_INTERPRET=0 to
test the compiled kernels on CUDA tensors. Collection never touches CUDA.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_restore_backend():
    """Fresh, reproducible random inputs per test, and the backend selection restored."""
    import mf_kernels

    torch.manual_seed(0)
    previous = mf_kernels.get_backend()
    yield
    mf_kernels.set_backend(previous)


def cuda_available() -> bool:
    """Queried lazily, inside tests, never at collection."""
    return torch.cuda.is_available()
