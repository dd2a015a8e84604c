"""Stem, bneck-lite and the two Mobile-Former block types (spec sections 5, 6, 11, 12).

Sequential positions are the authors': parameter-free layers and empty shuffle placeholders
occupy positions too, so the state_dict keys match their checkpoints exactly.
"""
from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn

from .bridges import Former, Former2Mobile, Mobile2Former
from .config import DOWN_SECOND_EXPANSION
from .layers import DynamicReLU, shuffle_or_placeholder


def conv_bn(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            shuffle: int = 1) -> nn.Sequential:
    """conv (no bias) -> BN, then a shuffle or placeholder when ``shuffle`` is not None."""
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    if shuffle is not None:
        layers.append(shuffle_or_placeholder(shuffle))
    return nn.Sequential(*layers)


class Stem(nn.Sequential):
    """conv 3x3 / 2 -> BN -> ReLU6."""

    def __init__(self, out_channels: int, in_channels: int = 3) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, 2, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))


class BneckLite(nn.Module):
    """Block 0: dw3x3 (x expansion) -> BN -> ReLU6 -> [shuffle] -> pw -> BN, identity skip if s=1."""

    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int, groups: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.use_skip = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 3, stride, 1, groups=c_in, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            # A shuffle after a depthwise expansion uses G = C_in (spec section 14).
            shuffle_or_placeholder(c_in if groups > 1 else 1),
            nn.Conv2d(hidden, c_out, 1, 1, 0, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.use_skip else y


class _BridgedBlock(nn.Module):
    """The parts every Mobile-Former block shares: M2F on the input, Former, F2M on the output."""

    def __init__(self, c_in: int, c_out: int, dim: int) -> None:
        super().__init__()
        self.local_global = Mobile2Former(dim, c_in)
        self.global_block = Former(dim)
        self.global_local = Former2Mobile(dim, c_out)

    def tokens(self, x: Tensor, z: Tensor) -> Tensor:
        return self.global_block(self.local_global(x, z))


class MobileFormerBlock(_BridgedBlock):
    """Stride-1 block: pw -> DY-ReLU -> dw -> DY-ReLU -> pw, identity skip, then F2M."""

    def __init__(self, c_in: int, c_out: int, expansion: int, dim: int, groups: int) -> None:
        super().__init__(c_in, c_out, dim)
        hidden = c_in * expansion
        shuffle = 4 if groups > 1 else 1
        self.use_skip = c_in == c_out
        self.conv1 = conv_bn(c_in, hidden, groups=groups, shuffle=shuffle)
        self.hyper1 = DynamicReLU(hidden, dim)
        self.conv2 = conv_bn(hidden, hidden, 3, groups=hidden, shuffle=None)
        self.hyper2 = DynamicReLU(hidden, dim)
        self.conv3 = conv_bn(hidden, c_out, groups=groups, shuffle=shuffle)

    def forward(self, x: Tensor, z: Tensor) -> Tuple[Tensor, Tensor]:
        z = self.tokens(x, z)
        token = z[:, 0]
        y = self.hyper1(self.conv1(x), token)
        y = self.hyper2(self.conv2(y), token)
        y = self.conv3(y)
        if self.use_skip:
            y = y + x
        return self.global_local(y, z), z


class MobileFormerDownBlock(_BridgedBlock):
    """Stride-2 block: dw/2 -> DY-ReLU -> pw (= r) -> dw -> DY-ReLU -> pw, + r, then F2M."""

    def __init__(self, c_in: int, c_out: int, expansion: int, dim: int, groups: int) -> None:
        super().__init__(c_in, c_out, dim)
        n1, n2 = c_in * expansion, c_out * DOWN_SECOND_EXPANSION
        grouped = groups > 1
        self.conv1 = conv_bn(c_in, n1, 3, 2, groups=c_in, shuffle=c_in if grouped else 1)
        self.hyper1 = DynamicReLU(n1, dim)
        self.conv2 = conv_bn(n1, c_out, groups=groups, shuffle=None)
        self.conv3 = conv_bn(c_out, n2, 3, groups=c_out, shuffle=c_out if grouped else 1)
        self.hyper3 = DynamicReLU(n2, dim)  # the authors' name: there is no hyper2 here
        self.conv4 = conv_bn(n2, c_out, groups=groups, shuffle=None)

    def forward(self, x: Tensor, z: Tensor) -> Tuple[Tensor, Tensor]:
        z = self.tokens(x, z)
        token = z[:, 0]
        r = self.conv2(self.hyper1(self.conv1(x), token))
        y = self.conv4(self.hyper3(self.conv3(r), token)) + r
        return self.global_local(y, z), z
