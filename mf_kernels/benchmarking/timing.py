"""The timing core: warm up, then repeat for a fixed time budget, and summarize by the median.

Why a time budget rather than a fixed count: one default run covers rows from ~10 ms (MF-26M)
to ~1 s (1024x1024 images), on machines from a loaded 2-core VM to an H100. Repeating each row
until ``min_time_s`` has elapsed (and at least ``min_repeats`` times) keeps every row's cost
bounded and gives fast rows many samples. The median resists the outliers a shared machine
produces; the interquartile range and min/max are kept as the spread.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


def cuda_synchronizer(device: str) -> Optional[Callable[[], None]]:
    """``torch.cuda.synchronize`` for CUDA runs (kernels launch asynchronously, so a clock read
    without it measures the launch, not the work); None on the CPU, touching nothing."""
    return torch.cuda.synchronize if device == "cuda" else None


@dataclass
class Timing:
    """Per-call seconds of one benchmarked callable."""

    samples_s: List[float]
    first_call_s: float  # the first warm-up call: includes torch.compile's compilation
    warmup_calls: int
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    def quartiles_s(self):
        if len(self.samples_s) < 2:
            return self.samples_s[0], self.samples_s[0]
        q1, _, q3 = statistics.quantiles(self.samples_s, n=4, method="inclusive")
        return q1, q3

    def summary_ms(self) -> Dict[str, float]:
        """The numbers a record keeps, in milliseconds."""
        q1, q3 = self.quartiles_s()
        ms = 1e3
        return {"median_ms": self.median_s * ms, "q1_ms": q1 * ms, "q3_ms": q3 * ms,
                "iqr_ms": (q3 - q1) * ms, "min_ms": min(self.samples_s) * ms,
                "max_ms": max(self.samples_s) * ms, "repeats": len(self.samples_s),
                "first_call_s": self.first_call_s, "warmup_calls": self.warmup_calls}


def measure(step: Callable[[], object], *, min_time_s: float = 1.0, min_repeats: int = 5,
            max_repeats: int = 10_000, warmup: int = 2,
            synchronize: Optional[Callable[[], None]] = None) -> Timing:
    """Time ``step()``: ``warmup`` untimed calls (the first one timed apart, as it compiles),
    then repeats until ``min_time_s`` has passed and at least ``min_repeats`` were made, at
    most ``max_repeats``. ``synchronize`` runs before each clock read (CUDA)."""
    sync = synchronize or (lambda: None)
    warmup = max(1, warmup)
    sync()
    start = time.perf_counter()
    step()
    sync()
    first_call_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    sync()

    samples: List[float] = []
    budget_start = time.perf_counter()
    while len(samples) < max_repeats and (
            len(samples) < min_repeats or time.perf_counter() - budget_start < min_time_s):
        start = time.perf_counter()
        step()
        sync()
        samples.append(time.perf_counter() - start)
    return Timing(samples, first_call_s, warmup)


__all__ = ["Timing", "measure", "cuda_synchronizer"]
