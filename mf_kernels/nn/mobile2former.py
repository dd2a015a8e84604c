"""Drop-in Mobile2Former: the whole bridge around the fused attention core."""
from __future__ import annotations

import torch
from torch import Tensor

import mobileformer

from .. import backends, ops


class Mobile2Former(mobileformer.Mobile2Former):
    """Same constructor and state_dict as :class:`mobileformer.Mobile2Former`.

    With the extension's kernels, projections, gate, attention, residual and LayerNorm run as
    one call (``mf_kernels::mobile2former``); otherwise around :func:`mf_kernels.ops.m2f_attention`.
    """

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        if backends.uses_extension("m2f_attention", x.device):
            gate, norm = self.alpha[0], self.layer_norm
            return torch.ops.mf_kernels.mobile2former(
                x, z, self.q.weight, self.q.bias, gate.weight, gate.bias, self.proj.weight,
                self.proj.bias, norm.weight, norm.bias, self.heads)
        out = ops.m2f_attention(x, self.q(z), self.heads) * (self.alpha(z) * 2.0)
        return self.layer_norm(z + self.proj(out))
