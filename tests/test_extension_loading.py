"""mf_kernels._extension: an extension that loads but was built from older sources (it lacks
ops that the Python side registers) is treated as not loaded, with the reason, instead of
breaking `import mf_kernels`."""
import warnings

import pytest

import mf_kernels
from mf_kernels import _extension


def _reload_extension_module(source: str) -> dict:
    namespace = {"__name__": "mf_kernels._extension", "__package__": "mf_kernels",
                 "__file__": _extension.__file__}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(source, _extension.__file__, "exec"), namespace)
    namespace["warnings_caught"] = [str(w.message) for w in caught]
    return namespace


@pytest.mark.skipif(not _extension.LOADED, reason="needs the built extension")
def test_a_build_without_an_expected_op_is_reported_as_out_of_date():
    with open(_extension.__file__) as f:
        source = f.read()
    assert '"frozen_mobileformer", "cpu_isa")' in source
    stale = _reload_extension_module(
        source.replace('"frozen_mobileformer", "cpu_isa")',
                       '"frozen_mobileformer", "cpu_isa", "an_op_from_the_future")'))
    assert stale["LOADED"] is False
    assert "out of date" in stale["LOAD_ERROR"] and "an_op_from_the_future" in stale["LOAD_ERROR"]
    assert any("Falling back to the reference" in w for w in stale["warnings_caught"])
    fresh = _reload_extension_module(source)
    assert fresh["LOADED"] is True and fresh["LOAD_ERROR"] is None


def test_every_expected_op_exists_in_this_build():
    if not _extension.LOADED:
        pytest.skip(f"the extension is not loaded: {_extension.LOAD_ERROR}")
    import torch
    for op in _extension.EXPECTED_OPS:
        assert hasattr(torch.ops.mf_kernels, op), op
    assert mf_kernels.cpu_isa() in ("baseline", "avx2", "avx512")
