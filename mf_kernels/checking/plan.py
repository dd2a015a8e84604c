"""Which cases ``mf-kernels check`` runs: ops x backends x dtypes x layouts x shapes.

Three sets of shapes (``group``), all read off the reference model (:mod:`.sites`):
* ``sites``: every distinct call site of the chosen variants (default: all seven) at batch 1;
* ``training``: MF-294M's sites at a training batch (128 on CUDA, 8 on the CPU), in the
  training layout (channels_last) and dtypes (fp32, and bf16 as under autocast);
* ``detection``: MF-294M's bridge sites with M = 100 tokens (a detection head), batch 2.

By default every site runs in every dtype, and the layout rotates with the site and the dtype
(site i in dtype j takes layout (i + j) mod 3), so that every site meets every layout and every
dtype meets every layout at a third of the sites: a pairwise design, a third of the cross
product. ``--full`` runs the whole cross product (and the training sites in every dtype and
layout); ``--quick`` takes only MF-294M and MF-26M (6 and 3 tokens), fp32 and bf16, no
training batch and one detection site per op.

Triton on CPU tensors runs through its interpreter (``TRITON_INTERPRET=1``), thousands of times
slower than compiled code: there it takes only the sites of at most ``INTERPRETER_MAX_POSITIONS``
positions and ``INTERPRETER_MAX_TOKENS`` tokens at batch 1 (the real 7x7 sites of the
classifier), untimed, and skips the rest with that reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from . import sites as sites_module
from .cases import DTYPES, Case
from .numerics import LAYOUTS
from .sites import Site

QUICK_VARIANTS = ("mobileformer_294m", "mobileformer_26m")
TRAINING_VARIANT = "mobileformer_294m"
TRAINING_BATCH = {"cpu": 8, "cuda": 128}
DETECTION_BATCH = 2
INTERPRETER_MAX_POSITIONS = 64
INTERPRETER_MAX_TOKENS = 6
DEVICE_BACKENDS = {"cpu": ("cpu", "triton"), "cuda": ("cuda", "triton")}


@dataclass(frozen=True)
class Selection:
    device: str                      # "cpu" or "cuda"
    ops: Tuple[str, ...]
    backends: Tuple[str, ...]
    dtypes: Tuple[str, ...]
    layouts: Tuple[str, ...]
    variants: Tuple[str, ...]
    depth: str = "default"           # "quick", "default" or "full"
    training_batch: Optional[int] = None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _shape_sets(sel: Selection) -> List[Tuple[str, int, Sequence[Site], Tuple[str, ...],
                                              Tuple[str, ...]]]:
    """(group, batch, sites, dtypes, layouts) for the selection's depth."""
    train_batch = sel.training_batch or TRAINING_BATCH[sel.device]
    site_list = list(sites_module.all_sites(sel.variants))
    detection = sites_module.detection_sites(TRAINING_VARIANT)
    sets = [("sites", 1, site_list, sel.dtypes, sel.layouts)]
    if sel.depth == "quick":
        one_per_op = list({s.op: s for s in detection}.values())
        sets.append(("detection", DETECTION_BATCH, one_per_op, sel.dtypes, sel.layouts))
        return sets
    training_dtypes = tuple(d for d in sel.dtypes if d in ("fp32", "bf16"))
    training_layouts = tuple(layout for layout in sel.layouts if layout == "channels_last")
    training_sites = sites_module.variant_sites(TRAINING_VARIANT)
    if sel.depth == "full":
        sets.append(("training", train_batch, training_sites, sel.dtypes, sel.layouts))
    else:
        sets.append(("training", train_batch, training_sites, training_dtypes,
                     training_layouts or sel.layouts[:1]))
    sets.append(("detection", DETECTION_BATCH, detection, sel.dtypes, sel.layouts))
    return sets


def skip_reason(case: Case, device_type: str) -> Optional[str]:
    """Why ``case`` cannot run here (None when it can)."""
    from mf_kernels import backends

    dtype = DTYPES[case.dtype]
    why = backends.reasons(case.op, case.backend, device_type, dtype)
    if why:
        return "; ".join(why)
    if device_type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return f"this GPU ({torch.cuda.get_device_name()}) does not support bf16"
    if case.backend == "triton" and triton_interpreted():
        if device_type == "cuda":
            return ("TRITON_INTERPRET=1 would run Triton's interpreter on CUDA tensors; "
                    "unset it to check the compiled kernels")
        C, H, W = case.site.chw
        if (case.batch > 1 or H * W > INTERPRETER_MAX_POSITIONS
                or case.site.tokens > INTERPRETER_MAX_TOKENS):
            return (f"Triton's interpreter (TRITON_INTERPRET=1) takes seconds per call: here it "
                    f"runs only the sites of at most {INTERPRETER_MAX_POSITIONS} positions and "
                    f"{INTERPRETER_MAX_TOKENS} tokens, at batch 1")
    return None


def plan(sel: Selection) -> List[Case]:
    """Every case of the selection, in a stable order (group, op, backend, dtype, site)."""
    cases: List[Case] = []
    for group, batch, site_list, dtypes, layouts in _shape_sets(sel):
        for op in sel.ops:
            op_sites = [site for site in site_list if site.op == op]
            for backend in sel.backends:
                for j, dtype in enumerate(dtypes):
                    for i, site in enumerate(op_sites):
                        chosen = layouts if sel.depth == "full" else (
                            layouts[(i + j) % len(layouts)],)
                        for layout in chosen:
                            cases.append(Case(op, backend, dtype, layout, batch, site, group))
    return cases


def parse_list(text: Optional[str], allowed: Sequence[str], what: str) -> Optional[Tuple[str, ...]]:
    """'a,b' -> ('a', 'b'), each checked against ``allowed``; None stays None."""
    if text is None:
        return None
    items = tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise ValueError(f"{what}: expected a comma-separated list of {', '.join(allowed)}; "
                         f"got {text!r}")
    return items


__all__ = ["Selection", "plan", "skip_reason", "DEVICE_BACKENDS", "TRAINING_BATCH",
           "QUICK_VARIANTS", "parse_list", "LAYOUTS", "triton_interpreted"]
