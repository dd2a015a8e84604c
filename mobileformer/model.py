"""The whole Mobile-Former network and its factory (spec sections 3, 4, 13)."""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from .blocks import BneckLite, MobileFormerBlock, MobileFormerDownBlock, Stem
from .bridges import Mobile2Former
from .config import VariantConfig, get_config
from .layers import shuffle_or_placeholder

FEATURE_STRIDES = (4, 8, 16, 32)


class Head(nn.Module):
    """[shuffle] -> pw x6 -> BN -> ReLU6 -> pool -> h-swish -> concat token 0 -> FC -> BN1d
    -> h-swish -> dropout -> FC."""

    def __init__(self, channels: int, dim: int, width: int, num_classes: int, groups: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        expanded = channels * 6
        self.conv = nn.Sequential(
            shuffle_or_placeholder(4 if groups > 1 else 1),
            nn.Conv2d(channels, expanded, 1, bias=False, groups=groups),
            nn.BatchNorm2d(expanded),
            nn.ReLU6(inplace=True),
        )
        self.fc = nn.Sequential(nn.Linear(expanded + dim, width), nn.BatchNorm1d(width),
                                nn.Hardswish())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x: Tensor, token: Tensor) -> Tensor:
        pooled = F.hardswish(self.conv(x).mean(dim=(2, 3)))
        return self.classifier(self.fc(torch.cat((pooled, token), dim=1)))


class MobileFormer(nn.Module):
    """Mobile-Former for image classification.

    ``forward(images)`` -> logits [B, num_classes];
    ``forward_features(images)`` -> (feature maps at strides 4, 8, 16, 32; tokens [B, M, d]).
    """

    def __init__(self, config: VariantConfig, num_classes: int = 1000, dropout: float = 0.0,
                 in_chans: int = 3):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.in_chans = in_chans
        d, g = config.token_dim, config.groups
        self.tokens = nn.Embedding(config.num_tokens, d)
        self.stem = Stem(config.stem, in_chans)
        blocks: List[nn.Module] = []
        c_in = config.stem
        for block in config.blocks:
            if block.kind == "lite":
                blocks.append(BneckLite(c_in, block.out_channels, block.expansion, block.stride, g))
            elif block.kind == "s1":
                blocks.append(MobileFormerBlock(c_in, block.out_channels, block.expansion, d, g))
            else:
                blocks.append(MobileFormerDownBlock(c_in, block.out_channels, block.expansion, d, g))
            c_in = block.out_channels
        self.features = nn.ModuleList(blocks)
        self.local_global = Mobile2Former(d, c_in)
        self.classifier = Head(c_in, d, config.head_width, num_classes, g, dropout)

    def initial_tokens(self, batch: int) -> Tensor:
        """Every sample starts from the same learned tokens; their gradient sums over the batch."""
        return self.tokens.weight.unsqueeze(0).expand(batch, -1, -1)

    def _run_blocks(self, x: Tensor) -> Iterator[Tuple[int, Tensor, Tensor]]:
        """Yield (stride so far, feature map, tokens) after each block."""
        z = self.initial_tokens(x.shape[0])
        x = self.stem(x)
        stride = 2
        for block, cfg in zip(self.features, self.config.blocks):
            if isinstance(block, BneckLite):
                x = block(x)
            else:
                x, z = block(x, z)
            stride *= cfg.stride
            yield stride, x, z

    def forward_features(self, x: Tensor) -> Tuple[List[Tensor], Tensor]:
        """The last feature map at each of the strides 4, 8, 16, 32, and the tokens after the
        last block (before the head's final Mobile->Former), for use as a detection backbone."""
        by_stride: Dict[int, Tensor] = {}
        for stride, x, z in self._run_blocks(x):
            by_stride[stride] = x
        return [by_stride[s] for s in FEATURE_STRIDES], z

    def forward(self, x: Tensor) -> Tensor:
        for _, x, z in self._run_blocks(x):
            pass
        z = self.local_global(x, z)
        return self.classifier(x, z[:, 0])


def create_model(name: str, num_classes: int = 1000, **kwargs) -> MobileFormer:
    """Build a Mobile-Former variant by name (``mobileformer_508m`` ... ``mobileformer_26m``;
    the authors' spellings ``mobile_former_294m`` and ``mobile-former-294m`` are accepted too).

    Keyword arguments go to :class:`MobileFormer` (``dropout``: classifier dropout, 0 by default;
    the authors trained with 0.1 to 0.3; ``in_chans``: image channels, 3 by default). Weights
    get PyTorch's default initialisation; :func:`mobileformer.init_weights` applies the
    authors' (what their training from scratch used).
    """
    return MobileFormer(get_config(name), num_classes=num_classes, **kwargs)
