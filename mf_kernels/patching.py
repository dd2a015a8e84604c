"""Swap the reference modules of a model for their fused drop-ins, in place."""
from __future__ import annotations

from typing import Dict, Type

from torch import nn

import mobileformer

from . import nn as fused

# reference class -> drop-in class. Each drop-in subclasses its reference and adds no
# parameters or buffers, so swapping the class of a live module keeps every parameter, buffer,
# hook and state_dict key as it is.
ACCELERATED: Dict[Type[nn.Module], Type[nn.Module]] = {
    mobileformer.DynamicReLU: fused.DynamicReLU,
    mobileformer.Mobile2Former: fused.Mobile2Former,
    mobileformer.Former: fused.Former,
    mobileformer.Former2Mobile: fused.Former2Mobile,
}


def accelerate(model: nn.Module) -> nn.Module:
    """Replace, in place, every module of ``model`` that mf_kernels can accelerate.

    Works on any model containing the reference modules (not only MobileFormer). Parameters,
    buffers and state_dict keys are unchanged; returns ``model`` for chaining.
    """
    for module in model.modules():
        replacement = ACCELERATED.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    return model
