"""accelerate(): in-place swaps that keep the state_dict and reproduce the reference logits."""
import pytest
import torch

import mf_kernels
import mobileformer
from mf_kernels.patching import ACCELERATED
from reference_data import (deterministic_model, load_json, reference_input, relative_error)


def test_swaps_in_place_and_keeps_the_state_dict():
    model = mobileformer.create_model("mobileformer_26m")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {name: p for name, p in model.named_parameters()}
    assert mf_kernels.accelerate(model) is model
    swapped = [m for m in model.modules() if type(m) in ACCELERATED.values()]
    assert swapped, "nothing was accelerated"
    assert not any(type(m) in ACCELERATED for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(p is params[name] for name, p in model.named_parameters())


@pytest.mark.parametrize("variant", ["mobileformer_26m", "mobileformer_294m"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accelerated_model_reproduces_reference_logits(variant, dtype):
    logits = load_json(f"logits_{variant.split('_')[1]}.json")["logits_fp64"]
    model = mf_kernels.accelerate(deterministic_model(variant, dtype))
    with torch.no_grad():
        out = model(reference_input(dtype))[0]
    bound = 1e-12 if dtype == torch.float64 else 1e-4
    assert relative_error(out, torch.tensor(logits, dtype=torch.float64)) < bound


@pytest.mark.parametrize("variant", mobileformer.VARIANT_NAMES)
def test_every_variant_matches_its_reference(variant):
    """Random weights, batch 2, a small image: accelerated == reference, forward and backward."""
    torch.manual_seed(0)
    reference = mobileformer.create_model(variant).eval().double()
    accelerated = mobileformer.create_model(variant).eval().double()
    accelerated.load_state_dict(reference.state_dict())
    mf_kernels.accelerate(accelerated)
    images = torch.randn(2, 3, 96, 64, dtype=torch.float64)
    expected, out = reference(images), accelerated(images)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(accelerated.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)
