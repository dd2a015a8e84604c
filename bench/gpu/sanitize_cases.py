"""One small case per CUDA kernel, forward and backward, for compute-sanitizer.

    compute-sanitizer --tool memcheck python bench/gpu/sanitize_cases.py --backend cuda
    python bench/gpu/sanitize_cases.py --device cpu --backend cpu      # the dry run's stand-in

Each case launches every kernel of its op path once: dynamic_relu in NCHW and channels_last
(forward, NCHW backward, channels_last backward, the split-sum kernel), m2f_attention and
f2m_attention with M = 6 (one token chunk) and M = 40 (several chunks: the combine, statistics
and atomic grad_x paths) in both layouts, fp32 and bf16. Shapes are small (the sanitizer slows
kernels 10-100x) but odd, so that tails and partial tiles run. Every result is compared with
the reference (a kernel that writes garbage without a memory error still fails here).

Prints one line per case and exits 1 when any case raises or is wrong: under compute-sanitizer
the tool's own exit code (``--error-exitcode``) reports memory errors and races.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import mf_kernels  # noqa: E402
from mf_kernels.checking import numerics  # noqa: E402
from mf_kernels.checking.cases import Case, run_case  # noqa: E402
from mf_kernels.checking.sites import Site  # noqa: E402

CASES = [
    # (site, batch): odd sizes so tails and partial tiles run
    (Site("dynamic_relu", (37, 9, 11), pieces=2), 2),
    (Site("m2f_attention", (40, 9, 11), tokens=6, heads=2), 2),
    (Site("m2f_attention", (40, 9, 11), tokens=40, heads=2), 2),
    (Site("f2m_attention", (40, 9, 11), tokens=6, heads=2), 2),
    (Site("f2m_attention", (40, 9, 11), tokens=40, heads=2), 2),
]
TINY = [(Site("dynamic_relu", (5, 3, 4), pieces=2), 1),
        (Site("m2f_attention", (8, 3, 5), tokens=6, heads=2), 1),
        (Site("f2m_attention", (8, 3, 5), tokens=6, heads=2), 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("cuda", "triton", "cpu"), default="cuda")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (the dry run)")
    parser.add_argument("--dtypes", default="fp32,bf16")
    args = parser.parse_args()
    device = torch.device(args.device)
    failures = 0
    started = time.perf_counter()
    for site, batch in (TINY if args.tiny else CASES):
        for dtype in args.dtypes.split(","):
            for layout in ("contiguous", "channels_last"):
                case = Case(site.op, args.backend, dtype, layout, batch, site, "sanitizer")
                result = run_case(case, device, seed=len(site.chw) + batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()  # a kernel's fault surfaces here, on its case
                ok = result.status == "pass"
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {case.describe()}"
                      + ("" if ok else f": {result.message}"), flush=True)
    print(f"sanitize_cases: {failures} failed, {time.perf_counter() - started:.1f} s; "
          f"mf_kernels {mf_kernels.__version__}, layouts {numerics.LAYOUTS[:2]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
