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


def _randomised_eval_model(variant, dtype=torch.float32):
    torch.manual_seed(0)
    model = mobileformer.create_model(variant).to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("variant", mobileformer.VARIANT_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
def test_every_variant_frozen_matches_eval_reference(variant, dtype, memory_format):
    # Non-trivial BatchNorm statistics, so that folding is actually exercised.
    reference = _randomised_eval_model(variant, dtype)
    frozen = mf_kernels.freeze(copy.deepcopy(reference), memory_format=memory_format)
    images = torch.randn(2, 3, 64, 96, dtype=dtype)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        expected, out = reference(images), frozen(images)
        assert relative_error(out, expected) < tolerance
        # The block-by-block path (other devices and dtypes, forward_features) in this dtype.
        frozen._engine = None
        assert relative_error(frozen(images), expected) < tolerance
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


# ---- The one-call CPU path (frozen_mobileformer) ----

def _images(batch, size, layout):
    images = torch.randn(batch, 3, size, size)
    if layout == "channels_last":
        return images.to(memory_format=torch.channels_last)
    if layout == "sliced":
        return torch.randn(batch, 4, size, size + 3)[:, 1:, :, 2:-1]
    return images


@pytest.mark.slow
@pytest.mark.parametrize("variant", mobileformer.VARIANT_NAMES)
def test_engine_matches_reference_at_real_and_odd_sizes(variant):
    reference = _randomised_eval_model(variant)
    frozen = mf_kernels.freeze(copy.deepcopy(reference))
    assert frozen._engine is not None
    cases = [(1, 224, "contiguous"), (3, 224, "channels_last"), (1, 193, "channels_last"),
             (3, 257, "contiguous"), (2, 97, "sliced")]
    with torch.no_grad():
        for batch, size, layout in cases:
            images = _images(batch, size, layout)
            expected, out = reference(images), frozen(images)
            assert out.shape == expected.shape
            assert relative_error(out, expected) < 1e-5, (batch, size, layout)


@pytest.mark.parametrize("isa", ["baseline", "avx2", "avx512"])
@pytest.mark.parametrize("variant", ["mobileformer_26m", "mobileformer_151m"])
def test_every_instruction_set_build_matches_reference(isa, variant):
    supported = ("baseline", "avx2", "avx512")
    if supported.index(isa) > supported.index(torch.ops.mf_kernels.cpu_isa()):
        pytest.skip(f"this CPU does not run the {isa} build")
    reference = _randomised_eval_model(variant)
    frozen = mf_kernels.freeze(copy.deepcopy(reference))
    images = torch.randn(2, 3, 75, 61)
    with torch.no_grad():
        out = torch.ops.mf_kernels.frozen_mobileformer(images, *frozen._engine, isa=isa)
        assert relative_error(out, reference(images)) < 1e-5


def test_engine_runs_images_in_parallel_like_one_by_one():
    frozen = mf_kernels.freeze(_randomised_eval_model("mobileformer_52m"))
    images = torch.randn(5, 3, 64, 80)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            together = frozen(images)
            torch.set_num_threads(1)
            alone = torch.cat([frozen(images[i:i + 1]) for i in range(5)])
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(together, alone, rtol=1e-6, atol=1e-6)


def test_engine_takes_an_empty_batch_and_tiny_images():
    frozen = mf_kernels.freeze(_randomised_eval_model("mobileformer_26m"))
    reference = _randomised_eval_model("mobileformer_26m")
    with torch.no_grad():
        assert frozen(torch.randn(0, 3, 224, 224)).shape == (0, 1000)
        images = torch.randn(2, 3, 1, 5)
        assert relative_error(frozen(images), reference(images)) < 1e-5


def test_frozen_model_names_what_it_supports():
    frozen = mf_kernels.freeze(mobileformer.create_model("mobileformer_26m"))
    with pytest.raises(TypeError, match="expected torch.float32 images"):
        frozen(torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        frozen(torch.randn(1, 4, 64, 64))
    with pytest.raises(TypeError, match="float32"):
        torch.ops.mf_kernels.frozen_mobileformer(torch.randn(1, 3, 8, 8).double(),
                                                 *frozen._engine)


def test_engine_rejects_a_mismatched_plan():
    weights, config = mf_kernels.freeze(mobileformer.create_model("mobileformer_26m"))._engine
    with pytest.raises(ValueError, match="weights"):
        torch.ops.mf_kernels.frozen_mobileformer(torch.randn(1, 3, 8, 8), weights[:-1], config)
    with pytest.raises(ValueError, match="format version"):
        torch.ops.mf_kernels.frozen_mobileformer(torch.randn(1, 3, 8, 8), weights,
                                                 [999] + list(config[1:]))


def test_frozen_model_survives_deepcopy_and_pickling(tmp_path):
    frozen = mf_kernels.freeze(_randomised_eval_model("mobileformer_26m"))
    images = torch.randn(1, 3, 64, 64)
    path = tmp_path / "frozen.pt"
    torch.save(frozen, path)
    loaded = torch.load(path, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(frozen)(images), frozen(images))
        torch.testing.assert_close(loaded(images), frozen(images))


def test_frozen_model_converted_to_float64_runs_block_by_block():
    reference = _randomised_eval_model("mobileformer_26m", torch.float64)
    frozen = mf_kernels.freeze(copy.deepcopy(reference))
    assert frozen._engine is None
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(frozen(images), reference(images)) < 1e-10


def test_engine_is_safe_to_call_from_several_python_threads():
    """Each concurrent call takes its own workspace from the pool."""
    import threading

    frozen = mf_kernels.freeze(_randomised_eval_model("mobileformer_26m"))
    inputs = [torch.randn(1, 3, 64 + 8 * i, 64) for i in range(4)]
    with torch.no_grad():
        expected = [frozen(x) for x in inputs]
    results = [None] * len(inputs)

    def run(i):
        with torch.no_grad():
            for _ in range(5):
                results[i] = frozen(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out, ref in zip(results, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
