"""Small building blocks: channel shuffle, the dynamic ReLU with its hyper-MLP."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import functional as MF


class ChannelShuffle(nn.Module):
    """out[:, k] = in[:, (k mod G) * (C / G) + k // G]: view C as G x K, transpose, flatten."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        return x.reshape(B, self.groups, C // self.groups, H, W).transpose(1, 2).reshape(B, C, H, W)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def shuffle_or_placeholder(groups: int) -> nn.Module:
    """A shuffle when there is one (MF-26M), else an empty placeholder.

    The placeholder keeps the sequential positions (and so the state_dict keys) of the
    authors' checkpoints identical across variants.
    """
    return ChannelShuffle(groups) if groups > 1 else nn.Identity()


class DynamicReLU(nn.Module):
    """The authors' dynamic ReLU: two per-channel slopes from token 0, no intercepts.

    theta = h-sigmoid(Linear(d/4 -> 2C)(ReLU(Linear(d -> d/4)(token))))
    a1 = 2 (theta[:C] - 0.5) + 1,  a2 = 2 (theta[C:] - 0.5)
    y[b, c, h, w] = max(a1[b, c] x[b, c, h, w], a2[b, c] x[b, c, h, w])

    ``forward(x, token)`` takes x: [B, C, H, W] and token: [B, d] (token 0 of the block's
    tokens after its Former).
    """

    def __init__(self, channels: int, token_dim: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.hyper = nn.Sequential(
            nn.Linear(token_dim, token_dim // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(token_dim // reduction, 2 * channels),
            nn.Hardsigmoid(),
        )

    def slopes(self, token: Tensor) -> Tensor:
        """The [B, C, 2] slope pairs (a1, a2) for ``token`` [B, d]."""
        theta = self.hyper(token)
        a1 = (theta[:, : self.channels] - 0.5) * 2.0 + 1.0
        a2 = (theta[:, self.channels:] - 0.5) * 2.0
        return torch.stack((a1, a2), dim=-1)

    def forward(self, x: Tensor, token: Tensor) -> Tensor:
        return MF.dynamic_relu(x, self.slopes(token))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
