"""Drop-in Former: token self-attention and FFN in one call when the extension is loaded."""
from __future__ import annotations

import torch
from torch import Tensor

import mobileformer

from .. import _extension


class Former(mobileformer.Former):
    """Same constructor and state_dict as :class:`mobileformer.Former`.

    The Former has no fused kernel of its own: its tensors are [B, M, d] with M <= 6, so its
    cost is per-op overhead. ``mf_kernels::former`` runs the reference's ATen ops from C++ in
    one call (autograd and torch.compile see through it); without the extension this is the
    reference module.
    """

    def forward(self, z: Tensor) -> Tensor:
        if not _extension.LOADED:
            return super().forward(z)
        ffn1, ffn2 = self.ffn[0], self.ffn[2]
        return torch.ops.mf_kernels.former(
            z, self.q.weight, self.q.bias, self.channel_mlp.weight, self.channel_mlp.bias,
            self.layer_norm.weight, self.layer_norm.bias, ffn1.weight, ffn1.bias, ffn2.weight,
            ffn2.bias, self.ffn_norm.weight, self.ffn_norm.bias, self.heads)
