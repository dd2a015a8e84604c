"""What one benchmark run measures: its settings (``BenchConfig``) and its rows (``Row``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

DEFAULT_VARIANTS = ("mobileformer_214m", "mobileformer_294m")
DEFAULT_SIZES = (224,)
FIGURE5_VARIANTS = ("mobileformer_214m",)
FIGURE5_SIZES = (224, 320, 448, 512, 640, 768, 896, 1024)
MOBILENET_WIDTHS = (1.0, 1.25)
FIGURE5_MOBILENET_WIDTHS = (1.0,)  # the paper plots MF-214M against MobileNetV3-Large 1.0x
RUNTIMES = ("onnxruntime", "openvino")  # the reference exported to ONNX, run by each
FIGURE5_RUNTIMES = ("onnxruntime",)     # the figure's runtime curves: the strongest one
RUNTIME_LABELS = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


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
    runtimes: Tuple[str, ...] = RUNTIMES  # asked for; those unavailable are skipped, with why
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
    # "reference", "accelerated", "frozen", "mobilenetv3" (torch, eager or compiled), or a
    # runtime ("onnxruntime", "openvino") running the exported reference / MobileNetV3
    kind: str
    compiled: bool = False
    width: Optional[float] = None  # MobileNetV3's width multiplier
    variant_for_ratio: str = field(default="", compare=False)

    @property
    def is_mobileformer(self) -> bool:
        return self.model.startswith("mobileformer")

    @property
    def is_runtime(self) -> bool:
        return self.kind in RUNTIME_LABELS

    @property
    def how(self) -> str:
        """How the model runs: "eager", "compiled" (torch.compile), "exported" (a runtime)."""
        return "exported" if self.is_runtime else "compiled" if self.compiled else "eager"

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
        how = RUNTIME_LABELS.get(self.kind) or ("torch.compile" if self.compiled else "eager")
        if not self.is_mobileformer:
            return f"MobileNetV3-Large {self.width_text} ({how})"
        if self.is_runtime:
            return f"{how} (exported reference)"
        kind = {"frozen": "accelerated + frozen"}.get(self.kind, self.kind)
        return f"{kind} ({how})"

    @property
    def id(self) -> str:
        """Stable key of the row across records (``compare`` matches rows by it)."""
        return f"{self.name}/{self.size}/{self.kind}/{self.how}"

    @property
    def reference_id(self) -> str:
        """The row this one's ratio is taken against: its variant's eager reference."""
        return f"{self.variant_for_ratio or self.model}/{self.size}/reference/eager"

    @property
    def ort_id(self) -> str:
        """The row of the "vs ORT" ratio: ONNX Runtime running the same variant (MobileNetV3
        rows: the first variant, as for ``reference_id``)."""
        return f"{self.variant_for_ratio or self.model}/{self.size}/onnxruntime/exported"

    @property
    def parity_reference_id(self) -> Optional[str]:
        """The row whose logits this one must reproduce: the variant's eager reference; for
        MobileNetV3 run by a runtime, torchvision's model in eager mode. None: not checked."""
        if self.is_mobileformer:
            return None if self.kind == "reference" and not self.compiled else (
                self.reference_id)
        if self.is_runtime:
            return f"{self.name}/{self.size}/mobilenetv3/eager"
        return None


def plan_rows(config: BenchConfig, has_freeze: bool,
              runtimes: Sequence[str] = ()) -> List[Row]:
    """Reference eager first in every group: the others are checked and compared against it.
    ``runtimes``: those to measure (the available ones of ``config.runtimes``); with
    ``--figure5`` MobileNetV3-Large gets a row per runtime too (its curve)."""
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
            rows += [Row(variant, size, runtime) for runtime in runtimes]
        for width in config.mobilenet_widths:
            # MobileNetV3's ratio is against the first variant (MF-214M by default), its peer
            rows.append(Row("mobilenet_v3_large", size, "mobilenetv3", width=width,
                            variant_for_ratio=config.variants[0]))
            if config.figure5:
                rows += [Row("mobilenet_v3_large", size, runtime, width=width,
                             variant_for_ratio=config.variants[0]) for runtime in runtimes]
    return rows
