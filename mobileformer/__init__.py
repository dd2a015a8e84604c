"""Mobile-Former (Chen et al., CVPR 2022) in pure PyTorch: the reference for mf_kernels.

Faithful to the authors' released code and checkpoints; see ``create_model``, ``load_official``
and ``count_madds``.
"""
from .bridges import Former, Former2Mobile, Mobile2Former
from .blocks import BneckLite, MobileFormerBlock, MobileFormerDownBlock, Stem
from .config import VARIANT_NAMES, VARIANTS, BlockConfig, VariantConfig, get_config
from .layers import ChannelShuffle, DynamicReLU
from .madds import count_madds
from .model import Head, MobileFormer, create_model
from .weights import (CheckpointMismatchError, deterministic_state_dict, load_official,
                      num_params)

__all__ = [
    "create_model", "load_official", "count_madds", "num_params", "deterministic_state_dict",
    "CheckpointMismatchError", "MobileFormer", "Head", "Stem", "BneckLite", "MobileFormerBlock",
    "MobileFormerDownBlock", "Mobile2Former", "Former", "Former2Mobile", "DynamicReLU",
    "ChannelShuffle", "VARIANTS", "VARIANT_NAMES", "VariantConfig", "BlockConfig", "get_config",
]
