"""freeze(): BatchNorm folded, one call per block for the tokens; inference only."""
import copy

import pytest
import torch

import mf_kernels
import mobileformer
from mf_kernels import freezing as freeze_module
from reference_data import deterministic_model, load_json, reference_input, relative_error


@pytest.mark.parametrize("variant", ["mobileformer_26m", "mobileformer_294m"])
def test_frozen_model_reproduces_reference_logits(variant):
    logits = load_json(f"logits_{variant.split('_')[1]}.json")["logits_fp64"]
    model = mf_kernels.freeze(deterministic_model(variant))
    with torch.no_grad():
        out = model(reference_input())[0]
    assert relative_error(out, torch.tensor(logits, dtype=torch.float64)) < 1e-5


@pytest.mark.parametrize("variant", mobileformer.VARIANT_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_every_variant_frozen_matches_eval_reference(variant, dtype, memory_format):
    torch.manual_seed(0)
    reference = mobileformer.create_model(variant).to(dtype)
    # Non-trivial BatchNorm statistics, so that folding is actually exercised.
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    reference.eval()
    frozen = mf_kernels.freeze(copy.deepcopy(reference), memory_format=memory_format)
    images = torch.randn(2, 3, 64, 96, dtype=dtype)
    with torch.no_grad():
        expected, out = reference(images), frozen(images)
    assert relative_error(out, expected) < (1e-10 if dtype == torch.float64 else 1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())


def test_frozen_model_refuses_training_mode():
    model = mf_kernels.freeze(mobileformer.create_model("mobileformer_26m"))
    model.train()
    with pytest.raises(RuntimeError, match="for inference only"):
        model(torch.randn(1, 3, 64, 64))


def test_frozen_model_compiles_without_graph_breaks():
    torch._dynamo.reset()
    model = mf_kernels.freeze(mobileformer.create_model("mobileformer_26m"))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        out = torch.compile(model, fullgraph=True, backend="aot_eager")(images)
    torch.testing.assert_close(out, expected)


def test_freeze_without_the_extension_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(freeze_module._extension, "LOADED", False)
    monkeypatch.setattr(freeze_module._extension, "LOAD_ERROR", "not built")
    with pytest.raises(RuntimeError, match="freeze needs the C\\+\\+ extension: not built"):
        mf_kernels.freeze(mobileformer.create_model("mobileformer_26m"))
