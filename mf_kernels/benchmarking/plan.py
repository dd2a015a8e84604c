"""What one benchmark run measures: its settings (``BenchConfig``) and its rows (``Row``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

DEFAULT_VARIANTS = ("mobileformer_214m", "mobileformer_294m")
DEFAULT_SIZES = (224,)
FIGURE5_VARIANTS = ("mobileformer_214m",)
FIGURE5_SIZES = (224, 320, 448, 512, 640, 768, 896, 1024)
MOBILENET_WIDTHS = (1.0, 1.25)
FIGURE5_MOBILENET_WIDTHS = (1.0,)  # the paper plots MF-214M against MobileNetV3-Large 1.0x


@dataclass
class BenchConfig:
    """Every setting of a run, resolved (no None left once the CLI has filled it)."""

    device: str = "cpu"
    threads: int = 1
    batch: int = 1
    variants: Tuple[str, ...] = DEFAULT_VARIANTS
    sizes: Tuple[int, ...] = DEFAULT_SIZES
    dtype: str = "fp32"          # the weights' and inputs' dtype (infer); autocast's (train)
    mode: str = "infer"          # "infer" or "train"
    compile: bool = True
    figure5: bool = False
    channels_last: bool = False
    optimizer: str = "sgd"       # train mode: "sgd" or "adamw"
    min_time_s: float = 1.0      # time budget of each row, after warm-up
    min_repeats: int = 5
    max_repeats: int = 10_000
    warmup: int = 2
    mobilenet_widths: Tuple[float, ...] = MOBILENET_WIDTHS
    parity_tolerance: float = 1e-4  # relative, max |acc - ref| / max |ref|, fp32 logits
    progress: bool = True

    @property
    def autocast(self) -> bool:
        """Training in bf16/fp16 runs under autocast with fp32 weights (mixed precision)."""
        return self.mode == "train" and self.dtype in ("bf16", "fp16")


@dataclass(frozen=True)
class Row:
    """One line of the table: a model, an image size, and how it runs."""

    model: str                   # a Mobile-Former variant, or "mobilenet_v3_large"
    size: int
    kind: str                    # "reference", "accelerated", "frozen", "mobilenetv3"
    compiled: bool = False
    width: Optional[float] = None  # MobileNetV3's width multiplier
    variant_for_ratio: str = field(default="", compare=False)

    @property
    def is_mobileformer(self) -> bool:
        return self.kind != "mobilenetv3"

    @property
    def width_text(self) -> str:
        """1.0 -> "1.0x", 1.25 -> "1.25x" (the paper's spelling)."""
        text = f"{self.width:.2f}".rstrip("0")
        return (text + "0" if text.endswith(".") else text) + "x"

    @property
    def name(self) -> str:
        return f"{self.model}_{self.width_text}" if self.width is not None else self.model

    @property
    def label(self) -> str:
        how = "torch.compile" if self.compiled else "eager"
        if self.kind == "mobilenetv3":
            return f"MobileNetV3-Large {self.width_text} ({how})"
        kind = {"frozen": "accelerated + frozen"}.get(self.kind, self.kind)
        return f"{kind} ({how})"

    @property
    def id(self) -> str:
        """Stable key of the row across records (``compare`` matches rows by it)."""
        return f"{self.name}/{self.size}/{self.kind}/{'compiled' if self.compiled else 'eager'}"

    @property
    def reference_id(self) -> str:
        """The row this one's ratio is taken against: its variant's eager reference."""
        return f"{self.variant_for_ratio or self.model}/{self.size}/reference/eager"


def plan_rows(config: BenchConfig, has_freeze: bool) -> List[Row]:
    """Reference eager first in every group: the others are checked and compared against it."""
    rows: List[Row] = []
    for size in config.sizes:
        for variant in config.variants:
            rows.append(Row(variant, size, "reference"))
            if config.compile:
                rows.append(Row(variant, size, "reference", compiled=True))
            rows.append(Row(variant, size, "accelerated"))
            if config.compile:
                rows.append(Row(variant, size, "accelerated", compiled=True))
            if has_freeze and config.mode == "infer":
                rows.append(Row(variant, size, "frozen"))
        for width in config.mobilenet_widths:
            # MobileNetV3's ratio is against the first variant (MF-214M by default), its peer
            rows.append(Row("mobilenet_v3_large", size, "mobilenetv3", width=width,
                            variant_for_ratio=config.variants[0]))
    return rows
