"""Per-variant configuration of the seven ImageNet Mobile-Former models, as data.

Each variant is a :class:`VariantConfig`; its ``blocks`` list follows the block tables of the
spec (section 16.3) row by row. Block 0 is always the bneck-lite. The numbers are the authors'
released configurations; nothing here is derived, so a reader can check them against the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class BlockConfig:
    """One row of a block table.

    kind:
        ``"lite"`` (bneck-lite, block 0), ``"s1"`` (stride-1 Mobile-Former block) or
        ``"down"`` (stride-2 Mobile-Former down-sampling block).
    expansion:
        lite: depthwise channel multiplier; s1: hidden width n = expansion * C_in;
        down: the first expansion (n1 = expansion * C_in; n2 = 4 * C_out always).
    out_channels: C_out.
    stride: 1 or 2 (lite and down; s1 is always 1).
    """

    kind: str
    expansion: int
    out_channels: int
    stride: int = 1


@dataclass(frozen=True)
class VariantConfig:
    name: str
    stem: int
    num_tokens: int
    token_dim: int
    head_width: int
    groups: int
    blocks: Tuple[BlockConfig, ...]
    madds_millions: int  # the number in the variant's name, for the MAdds check

    @property
    def last_channels(self) -> int:
        return self.blocks[-1].out_channels


def _lite(e: int, c: int, s: int) -> BlockConfig:
    return BlockConfig("lite", e, c, s)


def _s1(e: int, c: int) -> BlockConfig:
    return BlockConfig("s1", e, c, 1)


def _down(c: int) -> BlockConfig:
    # Every released down block expands by 6 (dw, stride 2) and then by 4 x C_out.
    return BlockConfig("down", 6, c, 2)


# Second expansion of the down block: n2 = DOWN_SECOND_EXPANSION * C_out (spec section 12).
DOWN_SECOND_EXPANSION = 4

_WIDE_BLOCKS = {
    # variant: (lite C, per-block C_out...) for the 12-block variants share one shape of table.
    "508m": (24, [(_down, 40), (_s1, 3, 40), (_down, 72), (_s1, 3, 72), (_down, 128), (_s1, 4, 128),
                  (_s1, 6, 176), (_s1, 6, 176), (_down, 240), (_s1, 6, 240), (_s1, 6, 240)]),
    "294m": (16, [(_down, 24), (_s1, 4, 24), (_down, 48), (_s1, 4, 48), (_down, 96), (_s1, 4, 96),
                  (_s1, 6, 128), (_s1, 6, 128), (_down, 192), (_s1, 6, 192), (_s1, 6, 192)]),
    "214m": (12, [(_down, 20), (_s1, 3, 20), (_down, 40), (_s1, 4, 40), (_down, 80), (_s1, 4, 80),
                  (_s1, 6, 112), (_s1, 6, 112), (_down, 160), (_s1, 6, 160), (_s1, 6, 160)]),
    "151m": (12, [(_down, 16), (_s1, 3, 16), (_down, 32), (_s1, 3, 32), (_down, 64), (_s1, 4, 64),
                  (_s1, 6, 88), (_s1, 6, 88), (_down, 128), (_s1, 6, 128), (_s1, 6, 128)]),
}


def _blocks(rows) -> Tuple[BlockConfig, ...]:
    return tuple(make(*args) for make, *args in rows)


VARIANTS: Dict[str, VariantConfig] = {
    "mobileformer_508m": VariantConfig(
        "mobileformer_508m", stem=24, num_tokens=6, token_dim=192, head_width=1920, groups=1,
        blocks=(_lite(2, 24, 1),) + _blocks(_WIDE_BLOCKS["508m"][1]), madds_millions=508),
    "mobileformer_294m": VariantConfig(
        "mobileformer_294m", stem=16, num_tokens=6, token_dim=192, head_width=1920, groups=1,
        blocks=(_lite(2, 16, 1),) + _blocks(_WIDE_BLOCKS["294m"][1]), madds_millions=294),
    "mobileformer_214m": VariantConfig(
        "mobileformer_214m", stem=12, num_tokens=6, token_dim=192, head_width=1600, groups=1,
        blocks=(_lite(2, 12, 1),) + _blocks(_WIDE_BLOCKS["214m"][1]), madds_millions=214),
    "mobileformer_151m": VariantConfig(
        "mobileformer_151m", stem=12, num_tokens=6, token_dim=192, head_width=1280, groups=1,
        blocks=(_lite(2, 12, 1),) + _blocks(_WIDE_BLOCKS["151m"][1]), madds_millions=151),
    "mobileformer_96m": VariantConfig(
        "mobileformer_96m", stem=12, num_tokens=4, token_dim=128, head_width=1280, groups=1,
        blocks=_blocks([(_lite, 2, 12, 1), (_down, 16), (_down, 32), (_s1, 3, 32), (_down, 64),
                        (_s1, 4, 64), (_s1, 6, 88), (_down, 128), (_s1, 6, 128)]),
        madds_millions=96),
    "mobileformer_52m": VariantConfig(
        "mobileformer_52m", stem=8, num_tokens=3, token_dim=128, head_width=1024, groups=1,
        blocks=_blocks([(_lite, 3, 12, 2), (_s1, 3, 12), (_down, 24), (_s1, 3, 24), (_down, 48),
                        (_s1, 4, 48), (_s1, 6, 64), (_down, 96), (_s1, 6, 96)]),
        madds_millions=52),
}
# MF-26M is MF-52M with every pointwise conv in 4 groups and channel shuffles (spec section 14).
VARIANTS["mobileformer_26m"] = VariantConfig(
    "mobileformer_26m", stem=8, num_tokens=3, token_dim=128, head_width=1024, groups=4,
    blocks=VARIANTS["mobileformer_52m"].blocks, madds_millions=26)

VARIANT_NAMES: List[str] = list(VARIANTS)


# The authors' names: their timm registry (mobile_former_294m) and their command lines
# (mobile-former-294m).
AUTHORS_NAMES: Dict[str, str] = {
    "mobile_former_" + name.split("_")[1]: name for name in VARIANT_NAMES}


def canonical_name(name: str) -> str:
    """This project's name of a variant given ours or the authors' (either spelling)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a variant name (str), got {type(name).__name__}")
    if name in VARIANTS:
        return name
    authors = name.replace("-", "_")
    if authors in AUTHORS_NAMES:
        return AUTHORS_NAMES[authors]
    raise ValueError(
        f"unknown Mobile-Former variant {name!r}; expected one of {VARIANT_NAMES} "
        f"(or the authors' names {list(AUTHORS_NAMES)})")


def get_config(name: str) -> VariantConfig:
    return VARIANTS[canonical_name(name)]
