"""Test configuration.

TRITON_INTERPRET must be set before any Triton kernel is imported: the Triton tests run on
the CPU through the interpreter by default. On a GPU machine run with TRITON_INTERPRET=0 to
test the compiled kernels on CUDA tensors. Collection never touches CUDA.
"""
import hashlib
import os
import pathlib

os.environ.setdefault("TRITON_INTERPRET", "1")


def _compile_cache_tag() -> str:
    """A fingerprint of this checkout's ops (their Python registrations and the built extension).

    torch.compile's on-disk caches (inductor's FX graph cache, AOTAutograd's cache) key a graph
    by the traced code and torch's own sources, not by what a custom op decomposes into or how
    its autograd is registered: a graph compiled against another build of these ops (another
    worktree on the same machine, an older commit) would be reused, e.g. calling a backward op
    with its old schema. Tagging the cache key with this fingerprint keeps them apart."""
    digest = hashlib.sha256()
    package = pathlib.Path(__file__).resolve().parent.parent / "mf_kernels"
    for path in sorted(package.rglob("*.py")) + sorted(package.glob("_C*.so")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return "mf_kernels-" + digest.hexdigest()[:16]


# The environment variable reaches the tests' subprocesses too (torchrun, the CLI).
os.environ.setdefault("TORCH_COMPILE_CACHE_KEY_TAG", _compile_cache_tag())

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.compiler.config  # noqa: E402

# In case torch was imported (by a plugin) before the variable was set.
torch.compiler.config.cache_key_tag = os.environ["TORCH_COMPILE_CACHE_KEY_TAG"]


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


# The fast tier (`pytest -m fast`): what CI runs against the oldest tested torch (2.13.0), a
# few minutes on two cores: the C++ kernels against the reference, the drop-in modules, the
# reference model, the accelerated model's logits, and the timm registration. Test files (or
# single tests) by node-id prefix, so that a new test in a listed file joins the tier without a
# marker of its own; tests marked `slow` stay out.
FAST_TIER = (
    "test_dynamic_relu.py", "test_m2f_attention.py", "test_f2m_attention.py",
    "test_modules.py", "test_model.py", "test_timm.py",
    "test_accelerate.py::test_swaps_in_place_and_keeps_the_state_dict",
    "test_accelerate.py::test_accelerated_model_reproduces_reference_logits",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        in_tier = item.nodeid.rsplit("/", 1)[-1].startswith(FAST_TIER)
        if in_tier and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.fast)
