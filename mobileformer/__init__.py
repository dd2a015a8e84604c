"""Mobile-Former (Chen et al., CVPR 2022) in pure PyTorch: the reference for mf_kernels.

Faithful to the authors' released code and checkpoints; see ``create_model``, ``load_official``
and ``count_madds``.
"""
from .bridges import Former, Former2Mobile, Mobile2Former
from .blocks import BneckLite, MobileFormerBlock, MobileFormerDownBlock, Stem
from .config import (AUTHORS_NAMES, VARIANT_NAMES, VARIANTS, BlockConfig, VariantConfig,
                     canonical_name, get_config)
from .layers import ChannelShuffle, DynamicReLU
from .madds import count_madds
from .model import Head, MobileFormer, create_model
from .weights import (CheckpointMismatchError, deterministic_state_dict, init_weights,
                      load_official, num_params)
from . import timm_models

timm_models.install()  # timm.create_model("mobile_former_294m") once timm is imported, if installed

__all__ = [
    "create_model", "load_official", "init_weights", "count_madds", "num_params",
    "deterministic_state_dict", "CheckpointMismatchError", "MobileFormer", "Head", "Stem",
    "BneckLite", "MobileFormerBlock", "MobileFormerDownBlock", "Mobile2Former", "Former",
    "Former2Mobile", "DynamicReLU", "ChannelShuffle", "VARIANTS", "VARIANT_NAMES",
    "AUTHORS_NAMES", "VariantConfig", "BlockConfig", "get_config", "canonical_name",
]
