"""Drop-in Former2Mobile: key/value projections and the fused attention with its residual."""
from __future__ import annotations

import torch
from torch import Tensor

import mobileformer

from .. import backends, ops


class Former2Mobile(mobileformer.Former2Mobile):
    """Same constructor and state_dict as :class:`mobileformer.Former2Mobile`.

    With the extension's kernels, both projections and the attention run as one call
    (``mf_kernels::former2mobile``); otherwise through :func:`mf_kernels.ops.f2m_attention`.
    """

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        if backends.uses_extension("f2m_attention", x.device):
            return torch.ops.mf_kernels.former2mobile(
                x, z, self.k.weight, self.k.bias, self.proj.weight, self.proj.bias, self.heads)
        return ops.f2m_attention(x, self.k(z), self.proj(z), self.heads)
