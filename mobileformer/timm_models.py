"""Mobile-Former in timm: the seven variants under the authors' names and under ours.

After ``import mobileformer``, as soon as timm is imported too (before or after), ::

    model = timm.create_model("mobile_former_294m", num_classes=100, drop_rate=0.3)

returns the reference :class:`mobileformer.MobileFormer`, initialised as the authors
initialised it for training from scratch (:func:`mobileformer.init_weights`). The authors
registered their models in timm as ``mobile_former_508m`` ... ``mobile_former_26m``; this
project's names ``mobileformer_508m`` ... are registered too. ``timm.list_models("mobile*former*")``
lists all fourteen. Without timm nothing happens: timm is never imported by ``mobileformer``,
and nothing warns.

Arguments (timm's conventions): ``num_classes`` (0: no classifier, the model returns the
head's features), ``drop_rate`` (classifier dropout; the authors used 0.1 to 0.3),
``drop_path_rate`` (0 only: see :data:`DROP_PATH_UNSUPPORTED`), ``in_chans``.
``pretrained=True`` loads the authors' checkpoint from a local file through
:func:`mobileformer.load_official` (strict; a checkpoint that does not fit raises its
:class:`~mobileformer.CheckpointMismatchError`)::

    timm.create_model("mobile_former_294m", pretrained=True,
                      pretrained_cfg_overlay=dict(file="mobile-former-294m.pth"))

A classifier that does not fit ``num_classes`` is left out (the model keeps its own); with
another ``in_chans`` the stem is adapted as timm does (``timm.models.adapt_input_conv``).

Why registration waits for timm's own import: importing timm takes seconds (it imports
torchvision and torch._dynamo), and ``import mobileformer`` must not pay that for users who
never touch timm. So ``import mobileformer`` only checks that timm is installed; the models
are registered right after timm's module finishes executing, or at once if timm is already
imported.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys
import threading
from typing import Callable, Dict, Mapping, Optional

import torch
from torch import nn

from .config import AUTHORS_NAMES, VARIANT_NAMES, get_config
from .model import MobileFormer
from .weights import _unwrap, init_weights, load_official

# The authors' code and their checkpoints (one Google Drive file per variant, linked from their
# README's table); timm cannot download them, so pretrained=True needs a local file.
AUTHORS_REPO = "https://github.com/AAboys/MobileFormer"
CHECKPOINT_LINKS: Dict[str, str] = {
    "mobileformer_508m": "https://drive.google.com/file/d/1bqLIcpbCaxK-Eb4wcxk0iJpFJ1nXfGuF",
    "mobileformer_294m": "https://drive.google.com/file/d/1JBSM7NJ60fN9TgT5sMnbhmbZwrzcBd0r",
    "mobileformer_214m": "https://drive.google.com/file/d/13MOjdIMMBJgqyq_ld-grRhBBHOFU5Ggd",
    "mobileformer_151m": "https://drive.google.com/file/d/1w4QO-zhJ8QI1zGu7iOZ7lXxYJ5G1VXdF",
    "mobileformer_96m": "https://drive.google.com/file/d/1kMbRceswujtliCHKr-nxMFsrkvBrEfrW",
    "mobileformer_52m": "https://drive.google.com/file/d/1ekq_FPl57gjIlYX16Ll0nBuEyB0pjgGt",
    "mobileformer_26m": "https://drive.google.com/file/d/15uWYzx2VWWUjacZQHB56vOHzKxQDlp5O",
}
# Every timm name -> this project's variant name.
TIMM_NAMES: Dict[str, str] = {**AUTHORS_NAMES, **{name: name for name in VARIANT_NAMES}}
CLASSIFIER = "classifier.classifier.1"  # the last Linear (position 0 is the dropout)
FIRST_CONV = "stem.0"
DROP_PATH_UNSUPPORTED = (
    "Mobile-Former here has no drop-path (stochastic depth): the authors trained every "
    "released model with --drop-path 0.0, and the fused kernels compute the residuals it "
    "would drop (inside the bridges and the Former) without it")


def pretrained_cfg(variant: str) -> dict:
    """timm's pretrained config of one variant: the authors' evaluation preprocessing
    (224 px, crop 0.875, bilinear, ImageNet mean/std; spec section 18), our layer names."""
    return dict(
        url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        first_conv=FIRST_CONV, classifier=CLASSIFIER, origin_url=AUTHORS_REPO,
        paper_ids="arXiv:2108.05895",
        paper_name="Mobile-Former: Bridging MobileNet and Transformer",
        notes=(f"The authors' ImageNet checkpoint: {CHECKPOINT_LINKS[variant]} (not downloadable "
               "by timm; pass it with pretrained_cfg_overlay=dict(file=...)).",))


def _missing_checkpoint_message(name: str) -> str:
    variant = TIMM_NAMES[name]
    return (f"{name}: pretrained=True needs the authors' checkpoint as a local file; timm cannot "
            f"download it. Get it from {CHECKPOINT_LINKS[variant]} (linked from {AUTHORS_REPO}), "
            f"then pass it: timm.create_model({name!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth')). A state dict in "
            f"memory works too: pretrained_cfg_overlay=dict(state_dict=...).")


def _build(variant: str, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
           drop_path_rate: float = 0.0, **unexpected) -> MobileFormer:
    """The model class timm's builder instantiates: validates timm's keyword arguments."""
    if unexpected:
        raise TypeError(f"{variant}: unexpected keyword arguments {sorted(unexpected)}; "
                        "Mobile-Former takes num_classes, drop_rate, drop_path_rate (0 only) "
                        "and in_chans")
    if drop_path_rate:
        raise ValueError(f"drop_path_rate: expected 0.0, got {drop_path_rate}. "
                         f"{DROP_PATH_UNSUPPORTED}.")
    for arg, value, least in (("num_classes", num_classes, 0), ("in_chans", in_chans, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{arg}: expected an int >= {least}, got {value!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate: expected a probability in [0, 1), got {drop_rate}")
    model = MobileFormer(get_config(variant), num_classes=max(num_classes, 1), dropout=drop_rate,
                         in_chans=in_chans)
    if num_classes == 0:  # timm's convention: no classifier, forward returns the features
        model.classifier.classifier[1] = nn.Identity()
        model.num_classes = 0
    return init_weights(model)


def _load_checkpoint(model: MobileFormer, name: str, cfg: Mapping) -> None:
    """pretrained=True: the checkpoint named by the resolved pretrained cfg, through
    load_official, adapted to the model's classes and input channels as timm adapts."""
    source = cfg.get("state_dict") or cfg.get("file")
    if not source:
        if cfg.get("url") or cfg.get("hf_hub_id"):
            raise ValueError(f"{name}: pretrained weights load from a local file or a state dict "
                             "only (pretrained_cfg_overlay=dict(file=...) or "
                             "dict(state_dict=...)); download the checkpoint first")
        raise ValueError(_missing_checkpoint_message(name))
    if isinstance(source, (str, os.PathLike)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    state = _unwrap(source)
    # A classifier for other classes than the checkpoint's stays the model's own (timm's rule);
    # one that fits (e.g. a checkpoint fine-tuned on the same classes) loads with the rest.
    own = model.state_dict()
    fits = all(k in state and state[k].shape == own[k].shape
               for k in own if k.startswith(CLASSIFIER + "."))
    skip = () if model.num_classes and fits else (CLASSIFIER + ".",)
    stem_key = FIRST_CONV + ".weight"
    if model.in_chans != cfg["input_size"][0] and stem_key in state:
        from timm.models import adapt_input_conv
        state[stem_key] = adapt_input_conv(model.in_chans, state[stem_key],
                                           base_chans=cfg["input_size"][0])
    load_official(model, state, skip=skip)


def _create(name: str, pretrained: bool = False, **kwargs) -> MobileFormer:
    from timm.models import build_model_with_cfg

    tag = kwargs.get("pretrained_cfg")
    if isinstance(tag, str):
        raise ValueError(f"{name}: unknown pretrained tag {tag!r}; Mobile-Former has one "
                         f"untagged configuration (use {name!r})")
    for option in ("features_only", "out_indices"):
        if option in kwargs:
            raise ValueError(f"{option}: not supported by {name}; model.forward_features(x) "
                             "returns the feature maps at strides 4, 8, 16, 32 and the tokens")
    model = build_model_with_cfg(functools.partial(_build, TIMM_NAMES[name]), name,
                                 pretrained=False, **kwargs)
    if pretrained:
        _load_checkpoint(model, name, model.pretrained_cfg)
    return model


def _entrypoint(name: str) -> Callable[..., MobileFormer]:
    def create(pretrained: bool = False, **kwargs) -> MobileFormer:
        return _create(name, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name  # timm registers a function under its name
    create.__module__ = __name__
    create.__doc__ = (f"Mobile-Former {TIMM_NAMES[name].split('_')[1].upper()} "
                      f"(mobileformer.timm_models), the reference model with timm's arguments.")
    return create


_lock = threading.Lock()
_registered = False


def register() -> None:
    """Register the fourteen names with timm (imports timm). Idempotent; a name that another
    package already registered is left to it."""
    global _registered, default_cfgs
    with _lock:
        if _registered:
            return
        from timm.models import generate_default_cfgs, is_model, model_entrypoint, register_model

        module = sys.modules[__name__]
        default_cfgs = generate_default_cfgs(
            {name: pretrained_cfg(variant) for name, variant in TIMM_NAMES.items()})
        for name in TIMM_NAMES:
            if is_model(name) and model_entrypoint(name).__module__ != __name__:
                continue  # e.g. a future timm with its own Mobile-Former: not overwritten
            fn = _entrypoint(name)
            setattr(module, name, fn)
            register_model(fn)
        _registered = True


class _RegisterAfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``timm`` is first imported, it lets the regular finders
    locate it and wraps that spec's ``exec_module`` so the models are registered right after
    timm's ``__init__`` has run. Removes itself on first use."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register()

        spec.loader.exec_module = exec_then_register  # this spec's own loader instance only
        return spec


def install() -> None:
    """Called by ``import mobileformer``: registers now if timm is imported, defers to timm's
    import if timm is installed, and does nothing (silently) if it is not."""
    timm = sys.modules.get("timm")
    if timm is not None and hasattr(timm, "create_model"):
        register()
    elif importlib.util.find_spec("timm") is not None:
        if not any(isinstance(f, _RegisterAfterTimmImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _RegisterAfterTimmImport())


default_cfgs: Optional[dict] = None  # filled by register(); timm's register_model reads it
