"""The token side of Mobile-Former: the two bridges and the Former.

Tokens are batch-first, [B, M, d], in every public signature.
"""
from __future__ import annotations

from torch import Tensor, nn

from . import functional as MF

BRIDGE_HEADS = 2
FORMER_HEADS = 4


class Mobile2Former(nn.Module):
    """Mobile->Former bridge: the tokens read the feature map (spec section 8).

    Q = q(Z);  O = m2f_attention(x, Q, heads);  O <- O * 2 h-sigmoid(alpha(Z))
    Z <- LayerNorm(Z + proj(O))

    ``forward(x, z)``: x [B, C, H, W], z [B, M, d]; returns the new tokens [B, M, d].
    """

    def __init__(self, dim: int, channels: int, heads: int = BRIDGE_HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.alpha = nn.Sequential(nn.Linear(dim, channels), nn.Hardsigmoid())
        self.q = nn.Linear(dim, channels)
        self.proj = nn.Linear(channels, dim)
        self.layer_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        out = MF.m2f_attention(x, self.q(z), self.heads)
        out = out * (self.alpha(z) * 2.0)  # the gate reads the *input* tokens
        return self.layer_norm(z + self.proj(out))


class Former(nn.Module):
    """Token self-attention and FFN, post-LN, with no key/value projection (spec section 9).

    Z <- LN1(Z + channel_mlp(MHA(q(Z), Z, Z)));  Z <- LN2(Z + ffn(Z)),  ffn = Linear-GELU-Linear.
    """

    def __init__(self, dim: int, heads: int = FORMER_HEADS, ffn_ratio: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim * ffn_ratio), nn.GELU(), nn.Linear(dim * ffn_ratio, dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.channel_mlp = nn.Linear(dim, dim)
        self.layer_norm = nn.LayerNorm(dim)

    def attention(self, z: Tensor) -> Tensor:
        B, M, d = z.shape
        ch = d // self.heads
        q = self.q(z).reshape(B, M, self.heads, ch).transpose(1, 2)
        kv = z.reshape(B, M, self.heads, ch).transpose(1, 2)
        attn = MF.softmax_fp32((q @ kv.transpose(-1, -2)) * ch ** -0.5, -1)
        return (attn @ kv).transpose(1, 2).reshape(B, M, d)

    def forward(self, z: Tensor) -> Tensor:
        z = self.layer_norm(z + self.channel_mlp(self.attention(z)))
        return self.ffn_norm(z + self.ffn(z))


class Former2Mobile(nn.Module):
    """Former->Mobile bridge: the feature map reads the tokens (spec section 10).

    K = k(Z), V = proj(Z) (``proj`` is the *value* projection, the authors' name);
    y = x + f2m_attention-update(x, K, V). No output projection, gate or norm.

    ``forward(x, z)``: x [B, C, H, W], z [B, M, d]; returns y [B, C, H, W].
    """

    def __init__(self, dim: int, channels: int, heads: int = BRIDGE_HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.k = nn.Linear(dim, channels)
        self.proj = nn.Linear(dim, channels)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return MF.f2m_attention(x, self.k(z), self.proj(z), self.heads)
