"""Mobile-Former in timm (mobileformer/timm_models.py): registration under the authors' names
and ours, timm's pretrained-config conventions, loading the authors' checkpoints through
load_official, bad input, and state_dict round trips with the accelerated model."""
import math
import os
import subprocess
import sys

import pytest
import torch

import mf_kernels
import mobileformer
from mobileformer.timm_models import CHECKPOINT_LINKS, TIMM_NAMES
from reference_data import load_json, manifest, reference_input, relative_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHORS = [f"mobile_former_{v.split('_')[1]}" for v in mobileformer.VARIANT_NAMES]
OURS = list(mobileformer.VARIANT_NAMES)


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


def deterministic_checkpoint(variant: str):
    """The spec's deterministic weights under the authors' key names, as the authors' training
    script saves them: nested under "state_dict" and prefixed with "module." (DDP)."""
    state = mobileformer.deterministic_state_dict(manifest(variant)["state_dict"])
    return {"epoch": 450, "state_dict": {"module." + k: v for k, v in state.items()}}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


# --- registration --------------------------------------------------------------------------

def test_lists_the_authors_names_and_ours(timm):
    assert sorted(timm.list_models("mobile_former*")) == sorted(AUTHORS)
    assert sorted(timm.list_models("mobileformer*")) == sorted(OURS)
    assert set(timm.list_models("mobile*former*")) == set(TIMM_NAMES)
    assert timm.list_models("mobile*former*", pretrained=True) == []  # nothing timm can download


@pytest.mark.parametrize("first", ["mobileformer", "timm"])
def test_registered_whichever_is_imported_first(timm, first):
    second = "timm" if first == "mobileformer" else "mobileformer"
    code = (f"import sys, {first}\n"
            # import mobileformer must not pay for importing timm (seconds) by itself
            f"assert {first == 'timm'} or 'timm' not in sys.modules\n"
            f"import {second}\n"
            "model = timm.create_model('mobile_former_26m', num_classes=3)\n"
            "assert type(model) is mobileformer.MobileFormer, type(model)\n"
            "assert len(timm.list_models('mobile*former*')) == 14\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def test_without_timm_nothing_changes_and_nothing_warns():
    # sys.modules["timm"] = None is how Python spells "not importable"; -W error turns any
    # warning into a failure.
    code = ("import sys\nsys.modules['timm'] = None\nimport mobileformer, mf_kernels\n"
            "from mobileformer.timm_models import _RegisterAfterTimmImport as Hook\n"
            "assert not any(isinstance(f, Hook) for f in sys.meta_path)\n"
            "mobileformer.create_model('mobile_former_26m')\n")
    result = run_python(code)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", AUTHORS + OURS)
def test_returns_the_reference_model(timm, name):
    model = timm.create_model(name)
    variant = TIMM_NAMES[name]
    assert type(model) is mobileformer.MobileFormer
    assert model.config is mobileformer.get_config(variant)
    assert mobileformer.num_params(model) == manifest(variant)["num_params"]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {key: tuple(shape) for key, shape, _ in manifest(variant)["state_dict"]}
    assert model.num_classes == 1000


# --- timm's pretrained config ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["mobile_former_294m", "mobileformer_26m"])
def test_pretrained_cfg_follows_the_authors_preprocessing(timm, name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["num_classes"] == 1000
    assert isinstance(model.get_submodule(cfg["classifier"]), torch.nn.Linear)
    assert model.get_submodule(cfg["classifier"]).out_features == 1000
    assert model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert CHECKPOINT_LINKS[TIMM_NAMES[name]] in cfg["notes"][0]
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 0.875
    assert data["interpolation"] == "bilinear" and data["mean"] == (0.485, 0.456, 0.406)


def test_initialised_as_the_authors_did(timm):
    model = timm.create_model("mobile_former_294m")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    conv = model.features[1].conv3[0]  # a 3x3 depthwise conv of a down block
    expected = math.sqrt(2.0 / (9 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    bn = model.features[1].conv3[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # With this init every dynamic ReLU starts as a plain ReLU: slopes a1 ~ 1, a2 ~ 0.
    slopes = model.features[1].hyper1.slopes(torch.randn(4, 192))
    assert torch.allclose(slopes[..., 0], torch.ones(()), atol=0.05)
    assert torch.allclose(slopes[..., 1], torch.zeros(()), atol=0.05)


# --- timm's keyword arguments ----------------------------------------------------------------

def test_num_classes_and_drop_rate(timm):
    model = timm.create_model("mobile_former_26m", num_classes=7, drop_rate=0.3)
    assert model.num_classes == 7
    assert model.classifier.classifier[0].p == 0.3
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_num_classes_zero_returns_the_head_features(timm):
    model = timm.create_model("mobile_former_26m", num_classes=0).eval()
    assert model.num_classes == 0
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1024)  # head width F of MF-26M
    assert not any(k.startswith("classifier.classifier.1.") for k in model.state_dict())


def test_in_chans(timm):
    model = timm.create_model("mobile_former_26m", in_chans=1).eval()
    assert model.stem[0].in_channels == 1 and model.in_chans == 1
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1000)


def test_drop_path_rate_zero_is_the_authors_setting(timm):
    timm.create_model("mobile_former_26m", drop_path_rate=0.0)


def test_drop_path_rate_above_zero_is_refused(timm):
    with pytest.raises(ValueError, match=r"drop_path_rate: expected 0.0, got 0.1.*--drop-path 0.0"):
        timm.create_model("mobile_former_26m", drop_path_rate=0.1)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(global_pool="max"), TypeError, r"unexpected keyword arguments \['global_pool'\]"),
    (dict(num_classes=-1), ValueError, r"num_classes: expected an int >= 0, got -1"),
    (dict(in_chans=0), ValueError, r"in_chans: expected an int >= 1, got 0"),
    (dict(drop_rate=1.5), ValueError, r"drop_rate: expected a probability in \[0, 1\)"),
    (dict(features_only=True), ValueError, r"features_only: not supported.*forward_features"),
])
def test_bad_arguments(timm, kwargs, error, match):
    with pytest.raises(error, match=match):
        timm.create_model("mobile_former_26m", **kwargs)


def test_unknown_names(timm):
    # timm itself answers for names nobody registered (its own RuntimeError, which we do not
    # patch); the lists of known names are timm.list_models("mobile*former*") and ...
    with pytest.raises(RuntimeError, match=r"Unknown model \(mobile_former_300m\)"):
        timm.create_model("mobile_former_300m")
    # ... mobileformer's own factory, which takes the authors' names too and lists them all.
    with pytest.raises(ValueError, match=r"unknown Mobile-Former variant 'mobile_former_300m'.*"
                                         r"mobileformer_294m.*mobile_former_294m"):
        mobileformer.create_model("mobile_former_300m")
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'in22k'.*one untagged"):
        timm.create_model("mobile_former_26m.in22k")


def test_mobileformer_factory_takes_the_authors_names():
    for spelling in ("mobile_former_96m", "mobile-former-96m", "mobileformer_96m"):
        assert mobileformer.create_model(spelling).config.name == "mobileformer_96m"


# --- the authors' checkpoints ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["mobile_former_26m", "mobileformer_26m"])
def test_pretrained_file_loads_through_load_official(timm, tmp_path, name):
    path = tmp_path / "mobile-former-26m.pth"
    torch.save(deterministic_checkpoint("mobileformer_26m"), path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    with torch.no_grad():
        out = model.eval()(reference_input())[0]
    logits = torch.tensor(load_json("logits_26m.json")["logits_fp64"], dtype=torch.float64)
    assert relative_error(out, logits) < 1e-4  # the authors' model's logits (tests/test_model.py)
    accelerated = mf_kernels.accelerate(model)
    with torch.no_grad():
        assert relative_error(accelerated(reference_input())[0], logits) < 1e-4


def test_pretrained_state_dict_overlay(timm):
    checkpoint = deterministic_checkpoint("mobileformer_26m")
    model = timm.create_model("mobile_former_26m", pretrained=True,
                              pretrained_cfg_overlay=dict(state_dict=checkpoint["state_dict"]))
    for key, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"]["module." + key]), key


def test_pretrained_with_other_classes_keeps_a_fresh_classifier(timm):
    checkpoint = deterministic_checkpoint("mobileformer_26m")["state_dict"]
    model = timm.create_model("mobile_former_26m", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(state_dict=checkpoint))
    for key, value in model.state_dict().items():
        if key.startswith("classifier.classifier.1."):
            assert value.shape[0] == 10
        else:
            assert torch.equal(value, checkpoint["module." + key]), key


def test_pretrained_fine_tuned_checkpoint_keeps_its_classifier(timm):
    tuned = timm.create_model("mobile_former_26m", num_classes=10).state_dict()
    model = timm.create_model("mobile_former_26m", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(state_dict=tuned))
    for key, value in model.state_dict().items():
        assert torch.equal(value, tuned[key]), key


def test_pretrained_with_one_input_channel_sums_the_stem(timm):
    checkpoint = deterministic_checkpoint("mobileformer_26m")["state_dict"]
    model = timm.create_model("mobile_former_26m", pretrained=True, in_chans=1,
                              pretrained_cfg_overlay=dict(state_dict=checkpoint))
    expected = checkpoint["module.stem.0.weight"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.stem[0].weight, expected)


def test_pretrained_without_a_file_says_where_to_get_it(timm):
    with pytest.raises(ValueError) as info:
        timm.create_model("mobile_former_294m", pretrained=True)
    message = str(info.value)
    assert CHECKPOINT_LINKS["mobileformer_294m"] in message
    assert "github.com/AAboys/MobileFormer" in message
    assert "pretrained_cfg_overlay=dict(file=" in message


def test_load_official_skip_is_limited_to_its_prefixes():
    checkpoint = deterministic_checkpoint("mobileformer_26m")["state_dict"]
    model = mobileformer.create_model("mobileformer_26m", num_classes=10)
    with pytest.raises(mobileformer.CheckpointMismatchError, match="classifier.classifier.1"):
        mobileformer.load_official(model, checkpoint)
    mobileformer.load_official(model, checkpoint, skip=("classifier.classifier.1.",))
    del checkpoint["module.stem.0.weight"]
    with pytest.raises(mobileformer.CheckpointMismatchError,
                       match=r"(?s)missing keys \(1\):\s+stem.0.weight"):
        mobileformer.load_official(model, checkpoint, skip=("classifier.classifier.1.",))


def test_mismatching_checkpoint_raises_load_officials_error(timm, tmp_path):
    path = tmp_path / "mobile-former-294m.pth"
    torch.save(deterministic_checkpoint("mobileformer_294m"), path)
    with pytest.raises(mobileformer.CheckpointMismatchError,
                       match=r"(?s)checkpoint does not fit MobileFormer.*shape mismatches"):
        timm.create_model("mobile_former_26m", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))


# --- state_dict round trips ------------------------------------------------------------------

def test_accelerated_state_dict_round_trips(timm, tmp_path):
    """Saved from an accelerated timm model: loads into a plain reference model, into a timm
    model (also through timm's checkpoint_path) and through load_official; same logits."""
    model = mf_kernels.accelerate(timm.create_model("mobile_former_26m", num_classes=5)).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    state = torch.load(path, weights_only=True)["state_dict"]

    plain = mobileformer.create_model("mobileformer_26m", num_classes=5)
    plain.load_state_dict(state)
    official = mobileformer.load_official(mobileformer.create_model("mobile_former_26m", 5), path)
    again = timm.create_model("mobileformer_26m", num_classes=5)
    again.load_state_dict(state)
    by_path = timm.create_model("mobile_former_26m", num_classes=5, checkpoint_path=str(path))
    for other in (plain, official, again, by_path):
        assert type(other) is mobileformer.MobileFormer
        with torch.no_grad():
            torch.testing.assert_close(other.eval()(images), expected, rtol=2e-5, atol=2e-5)
