"""Per-op timings at MF-294M's training shapes: forward and forward+backward, per backend.

Every distinct site of dynamic_relu, m2f_attention and f2m_attention in MF-294M at 224 px (read
off the model: mf_kernels.checking.sites), batch 128, channels_last, in bf16 and fp32, on the
reference (mobileformer.functional, eager) and on the cuda and triton backends. Each row: the
median time of REPEATS calls (CUDA events around each call, after warm-up), the bytes the op
must move at least (forward: read the inputs, write the output; backward: read grad_out and the
inputs, write one gradient per input) over that time in GB/s, and that as a fraction of the
device's copy bandwidth, measured in the same run (a 1 GiB device-to-device copy, read + write).

    python bench/gpu/op_timings.py --json OUT.json
    python bench/gpu/op_timings.py --device cpu --tiny --json OUT.json     # the dry run

Prints a summary per op, dtype and backend (sums over the sites) last.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

import mf_kernels  # noqa: E402
from mf_kernels import backends  # noqa: E402
from mf_kernels.checking import sites  # noqa: E402
from mobileformer import functional as reference  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int,
                   warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """GB/s of a device-to-device copy of ``nbytes``, counting the read and the write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, repeats=10)
    return 2 * nbytes / seconds / 1e9


def make_inputs(site: sites.Site, batch: int, dtype: torch.dtype, device: torch.device):
    g = torch.Generator(device=device).manual_seed(0)
    C, H, W = site.chw

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    x = randn(batch, C, H, W).contiguous(memory_format=torch.channels_last)
    if site.op == "dynamic_relu":
        tensors, extra = [x, randn(batch, C, site.pieces)], []
    else:
        count = 1 if site.op == "m2f_attention" else 2
        tensors, extra = [x] + [randn(batch, site.tokens, C) for _ in range(count)], [site.heads]
    return [t.requires_grad_(True) for t in tensors], extra


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def implementation(op: str, impl: str, device: torch.device):
    """(function, None) or (None, why it cannot run here)."""
    if impl == "reference":
        return getattr(reference, op), None
    why = backends.reasons(op, impl, device.type, torch.float32)
    if impl == "triton" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        why = why + ("TRITON_INTERPRET is set: this would time the interpreter",)
    return (None, "; ".join(why)) if why else (getattr(mf_kernels.ops, op), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--variant", default="mobileformer_294m")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true",
                        help="the dry run: MF-26M's 7x7 sites at batch 2, 3 repeats")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    variant, batch, repeats = args.variant, args.batch, args.repeats
    site_list = list(sites.variant_sites(variant))
    if args.tiny:
        variant, batch, repeats = "mobileformer_26m", 2, 3
        site_list = [s for s in sites.variant_sites(variant) if s.chw[1] == 7]
    impls = ("reference", "cuda" if device.type == "cuda" else "cpu", "triton")
    copy_gbps = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 24))
    print(f"copy bandwidth {copy_gbps:.0f} GB/s (read + write); {variant} sites at batch {batch}, "
          f"channels_last, {repeats} timed calls per row", flush=True)
    rows: List[Dict[str, object]] = []
    skipped: Dict[str, str] = {}
    for op in sites.OPS:
        for dtype_name, dtype in DTYPES.items():
            for impl in impls:
                fn, why = implementation(op, impl, device)
                if fn is None:
                    skipped[impl] = why
                    continue
                for site in (s for s in site_list if s.op == op):
                    row = {"op": op, "dtype": dtype_name, "impl": impl, "batch": batch,
                           "chw": list(site.chw), "tokens": site.tokens}
                    try:
                        row.update(time_site(fn, site, batch, dtype, device, impl, repeats,
                                             copy_gbps))
                    except Exception as error:  # recorded: the summary marks the row failed
                        row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
                        print(f"ERROR {op} {impl} {dtype_name} {site.chw}: {row['error']}",
                              flush=True)
                    rows.append(row)
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                   "copy_GBps": copy_gbps, "variant": variant, "batch": batch,
                   "repeats": repeats, "rows": rows, "skipped": skipped}, f, indent=1)
    print_summary(rows, skipped, copy_gbps)
    return 1 if any("error" in r for r in rows) else 0


def time_site(fn, site, batch, dtype, device, impl, repeats, copy_gbps) -> Dict[str, float]:
    tensors, extra = make_inputs(site, batch, dtype, device)
    with mf_kernels.use_backend(impl if impl != "reference" else "auto"):
        out = fn(*tensors, *extra)
        grad_out = torch.randn_like(out)

        def forward():
            fn(*tensors, *extra)

        def forward_backward():
            torch.autograd.grad(fn(*tensors, *extra), tensors, grad_out)

        fwd = median_seconds(forward, device, repeats)
        both = median_seconds(forward_backward, device, repeats)
    moved_fwd = nbytes(tensors) + nbytes([out])
    moved_both = moved_fwd + nbytes([out]) + 2 * nbytes(tensors)
    return {"forward_us": fwd * 1e6, "forward_backward_us": both * 1e6,
            "forward_bytes": moved_fwd, "forward_backward_bytes": moved_both,
            "forward_GBps": moved_fwd / fwd / 1e9, "forward_backward_GBps": moved_both / both / 1e9,
            "forward_copy_fraction": moved_fwd / fwd / 1e9 / copy_gbps,
            "forward_backward_copy_fraction": moved_both / both / 1e9 / copy_gbps}


def print_summary(rows, skipped, copy_gbps) -> None:
    print(f"\nPer op, dtype and backend, summed over the sites (GB/s = bytes / time; % of the "
          f"{copy_gbps:.0f} GB/s copy):")
    print(f"{'op':<14} {'dtype':<5} {'impl':<10} {'sites':>5} {'fwd µs':>10} {'GB/s':>7} {'%copy':>6}"
          f" {'fwd+bwd µs':>11} {'GB/s':>7} {'%copy':>6}")
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["dtype"], r["impl"]), []).append(r)
    for (op, dtype, impl), members in groups.items():
        good = [r for r in members if "error" not in r]
        if not good:
            print(f"{op:<14} {dtype:<5} {impl:<10} ERROR: {members[0]['error'][:60]}")
            continue
        fwd = sum(r["forward_us"] for r in good)
        both = sum(r["forward_backward_us"] for r in good)
        gb_fwd = sum(r["forward_bytes"] for r in good) / fwd / 1e3
        gb_both = sum(r["forward_backward_bytes"] for r in good) / both / 1e3
        errors = len(members) - len(good)
        print(f"{op:<14} {dtype:<5} {impl:<10} {len(good):>5} {fwd:>10,.0f} {gb_fwd:>7.0f} "
              f"{100 * gb_fwd / copy_gbps:>5.1f}% {both:>11,.0f} {gb_both:>7.0f} "
              f"{100 * gb_both / copy_gbps:>5.1f}%" + (f"  ({errors} rows failed)" if errors else ""))
    for impl, why in skipped.items():
        print(f"{impl}: not timed: {why}")


if __name__ == "__main__":
    sys.exit(main())
