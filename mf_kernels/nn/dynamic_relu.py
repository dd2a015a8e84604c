"""Drop-in DynamicReLU: the reference module's parameters, the fused op's speed."""
from __future__ import annotations

import torch
from torch import Tensor

import mobileformer

from .. import backends, ops


class DynamicReLU(mobileformer.DynamicReLU):
    """Same constructor and state_dict as :class:`mobileformer.DynamicReLU`.

    With the extension's kernels, the hyper-MLP, the slopes and y = max(a1 x, a2 x) run as one
    call (``mf_kernels::hyper_dynamic_relu``); otherwise the slopes are computed here and the
    activation goes through :func:`mf_kernels.ops.dynamic_relu` (e.g. on Triton).
    """

    def forward(self, x: Tensor, token: Tensor) -> Tensor:
        if backends.uses_extension("dynamic_relu", x.device):
            first, second = self.hyper[0], self.hyper[2]
            return torch.ops.mf_kernels.hyper_dynamic_relu(
                x, token, first.weight, first.bias, second.weight, second.bias)
        return ops.dynamic_relu(x, self.slopes(token))
