"""``mf-kernels check`` (also ``python -m mf_kernels check``): is every kernel right, here?

For every op and backend that runs on the device (--device), every dtype and layout, at the
real Mobile-Former shapes (see mf_kernels/checking/plan.py): forward and every gradient against
the reference on fresh random inputs. Prints one table (a row per op, backend and dtype: passed
cases, the worst error against what the rule allows, microseconds), every failure in full, and
which backend 'auto' picks per op, device and dtype, and why. Exit status: 0 when nothing
failed, 1 on any failure (or, with --fail-on-skip, any skip), 2 on a bad argument.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, TextIO

import mobileformer

from . import plan as planning
from .cases import DTYPES, Result, run_case
from .numerics import LAYOUTS
from .sites import OPS

TIMING_BUDGET_S = {"cpu": 0.01, "cuda": 0.005}  # per case, after the comparison


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--ops", metavar="OP,...", help=f"default: all of {', '.join(OPS)}")
    parser.add_argument("--backends", metavar="NAME,...",
                        help="default: cpu,triton on --device cpu; cuda,triton on cuda")
    parser.add_argument("--dtypes", metavar="DTYPE,...",
                        help="of fp32, fp16, bf16, fp64 (default: all four; --quick: fp32,bf16)")
    parser.add_argument("--layouts", metavar="LAYOUT,...",
                        help=f"of {', '.join(LAYOUTS)} (default: all three)")
    parser.add_argument("--variants", metavar="VARIANT,...",
                        help="Mobile-Former variants whose sites to check (default: all seven; "
                             "--quick: 294m,26m)")
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument("--quick", action="store_true",
                       help="two variants, fp32 and bf16, no training batch (seconds)")
    depth.add_argument("--full", action="store_true",
                       help="every variant also at the training batch, every dtype and layout")
    parser.add_argument("--training-batch", type=int, default=None, metavar="B",
                        help="batch of the training shapes (default 128 on cuda, 8 on cpu)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the random inputs (default: a fresh one, printed)")
    parser.add_argument("--no-timing", action="store_true", help="skip the microsecond timings")
    parser.add_argument("--json", metavar="PATH", help="also write every case as JSON here")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="print every case as it finishes")
    parser.add_argument("--fail-on-skip", action="store_true",
                        help="exit 1 when a case is skipped too (the GPU run: nothing may skip)")


def _selection(args: argparse.Namespace, parser: argparse.ArgumentParser) -> planning.Selection:
    from mf_kernels.benchmarking.builders import normalize_variant

    depth = "quick" if args.quick else "full" if args.full else "default"
    try:
        ops = planning.parse_list(args.ops, OPS, "--ops") or OPS
        backends = planning.parse_list(args.backends, ("cpu", "cuda", "triton"), "--backends") \
            or planning.DEVICE_BACKENDS[args.device]
        dtypes = planning.parse_list(args.dtypes, tuple(DTYPES), "--dtypes") or (
            ("fp32", "bf16") if depth == "quick" else tuple(DTYPES))
        layouts = planning.parse_list(args.layouts, LAYOUTS, "--layouts") or LAYOUTS
        variants = tuple(normalize_variant(v) for v in args.variants.split(",")) \
            if args.variants else (planning.QUICK_VARIANTS if depth == "quick"
                                   else tuple(mobileformer.VARIANT_NAMES))
    except ValueError as error:
        parser.error(str(error))
    if args.training_batch is not None and args.training_batch < 1:
        parser.error(f"--training-batch: expected >= 1, got {args.training_batch}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is available here "
                         "(torch.cuda.is_available() is False)")
    return planning.Selection(args.device, ops, backends, dtypes, layouts, variants, depth,
                              args.training_batch)


def environment(device: str) -> Dict[str, object]:
    import torch

    import mf_kernels
    from mf_kernels import _extension

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    env: Dict[str, object] = {
        "device": device, "python": platform.python_version(), "torch": torch.__version__,
        "triton": triton_version, "mf_kernels": mf_kernels.__version__,
        "extension": "loaded" + (" with CUDA kernels" if _extension.WITH_CUDA else " (CPU only)")
        if _extension.LOADED else f"not loaded: {_extension.LOAD_ERROR}",
        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        env["bf16"] = torch.cuda.is_bf16_supported()
    return env


def auto_choices(device: str) -> List[Dict[str, object]]:
    """What ``auto`` picks per op and dtype on ``device``, and why."""
    from mf_kernels import backends

    rows = []
    for op in OPS:
        for name, dtype in DTYPES.items():
            chosen, passed_over = backends.explain_auto(op, device, dtype)
            rows.append({"op": op, "dtype": name, "backend": chosen,
                         "passed_over": {b: list(why) for b, why in passed_over}})
    return rows


def _fmt(value: Optional[float], digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}e}"


def _us(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def summary_rows(results: Sequence[Result]) -> List[Dict[str, object]]:
    """One row per op, backend and dtype: counts, the worst case, summed microseconds."""
    rows: "OrderedDict[tuple, Dict[str, object]]" = OrderedDict()
    for r in results:
        c = r.case
        row = rows.setdefault((c.op, c.backend, c.dtype), {
            "op": c.op, "backend": c.backend, "dtype": c.dtype, "pass": 0, "fail": 0,
            "skip": 0, "skip_reasons": [], "worst": None, "forward_us": 0.0,
            "forward_backward_us": 0.0, "timed": 0})
        if r.status == "skip":
            row["skip"] += 1
            if r.message not in row["skip_reasons"]:
                row["skip_reasons"].append(r.message)
            continue
        row["pass" if r.status == "pass" else "fail"] += 1
        ratio = r.error / r.allowed if r.allowed and not math.isnan(r.error) else math.inf
        if r.status == "error":
            ratio = math.inf
        if row["worst"] is None or ratio > row["worst"][0]:
            row["worst"] = (ratio, r)
        if r.forward_us is not None:
            row["forward_us"] += r.forward_us
            row["forward_backward_us"] += r.forward_backward_us
            row["timed"] += 1
    return list(rows.values())


def print_table(results: Sequence[Result], out: TextIO) -> None:
    rows = summary_rows(results)
    # A backend that ran nothing at all here gets one line under the table, not a row per op.
    idle = [b for b in dict.fromkeys(r["backend"] for r in rows)
            if all(r["pass"] + r["fail"] == 0 for r in rows if r["backend"] == b)]
    header = (f"{'op':<14} {'backend':<8} {'dtype':<5} {'result':<18} {'worst error':>11} "
              f"{'allowed':>9}  {'worst case':<44} {'Σ fwd µs':>10} {'Σ fwd+bwd µs':>12}")
    out.write(header + "\n" + "-" * len(header) + "\n")
    for row in rows:
        if row["backend"] in idle:
            continue
        ran = row["pass"] + row["fail"]
        if ran == 0:
            result = "SKIP"
        elif row["fail"]:
            result = f"FAIL {row['fail']}/{ran}"
        else:
            result = f"pass {ran}/{ran}"
        if row["skip"] and ran:
            result += f" +{row['skip']} skip"
        worst = row["worst"][1] if row["worst"] else None
        where = ""
        if worst is not None:
            where = (f"{worst.worst or worst.status} {worst.case.layout} "
                     f"{worst.case.site.describe(worst.case.batch)}")
        timed = row["timed"]
        out.write(f"{row['op']:<14} {row['backend']:<8} {row['dtype']:<5} {result:<18} "
                  f"{_fmt(worst.error if worst else None):>11} "
                  f"{_fmt(worst.allowed if worst else None):>9}  {where[:44]:<44} "
                  f"{_us(row['forward_us']) if timed else '-':>10} "
                  f"{_us(row['forward_backward_us']) if timed else '-':>12}\n")
        if row["skip"]:
            out.write(f"{'':<29} skipped: {'; '.join(row['skip_reasons'])}\n")
    for backend in idle:
        reasons = list(dict.fromkeys(reason for r in rows if r["backend"] == backend
                                     for reason in r["skip_reasons"]))
        out.write(f"{backend}: every case skipped: {'; '.join(reasons)}\n")


def print_auto(device: str, out: TextIO) -> None:
    """What auto runs per op and dtype: on the checked device's tensors, then on the other's."""
    notes: List[str] = []
    for where in dict.fromkeys((device, "cpu", "cuda")):
        rows = auto_choices(where)
        out.write(f"\nWhat backend='auto' runs on {where} tensors, and why:\n")
        for op in OPS:
            groups: Dict[str, List[str]] = {}  # "backend (passed over ...)" -> dtypes
            for row in (r for r in rows if r["op"] == op):
                why = []
                for backend, reasons in row["passed_over"].items():
                    for reason in reasons:
                        if reason not in notes:
                            notes.append(reason)
                    why.append(f"{backend} [" + ",".join(
                        str(notes.index(reason) + 1) for reason in reasons) + "]")
                text = row["backend"] + (f" (passed over: {', '.join(why)})" if why else "")
                groups.setdefault(text, []).append(row["dtype"])
            out.write(f"  {op:<14} " + "; ".join(f"{','.join(dtypes)}: {text}"
                                                   for text, dtypes in groups.items()) + "\n")
    for i, note in enumerate(notes, 1):
        out.write(f"  [{i}] {note}\n")


def print_failures(results: Sequence[Result], out: TextIO) -> None:
    failed = [r for r in results if r.failed]
    if not failed:
        return
    out.write(f"\n{len(failed)} FAILED case(s):\n")
    for r in failed[:50]:
        out.write(f"  FAIL {r.case.describe()}: {r.message}\n")
    if len(failed) > 50:
        out.write(f"  ... and {len(failed) - 50} more (see --json)\n")


def result_record(r: Result) -> Dict[str, object]:
    c = r.case
    return {"op": c.op, "backend": c.backend, "dtype": c.dtype, "layout": c.layout,
            "batch": c.batch, "chw": list(c.site.chw), "tokens": c.site.tokens,
            "heads": c.site.heads, "group": c.group, "status": r.status, "message": r.message,
            "worst": r.worst, "error": None if math.isnan(r.error) else r.error,
            "allowed": None if math.isnan(r.allowed) else r.allowed,
            "verdicts": {k: {"error": v[0], "allowed": v[1]} for k, v in r.verdicts.items()},
            "forward_us": r.forward_us, "forward_backward_us": r.forward_backward_us}


def _write_json(path: str, env, seed: int, selection, wall: float, results: Sequence[Result],
                partial: bool) -> None:
    failed = sum(r.failed for r in results)
    skipped = sum(r.status == "skip" for r in results)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump({"schema": "mf_kernels.check/1", "partial": partial, "environment": env,
                   "seed": seed, "selection": dict(vars(selection)), "wall_s": wall,
                   "passed": len(results) - failed - skipped, "failed": failed,
                   "skipped": skipped, "auto": auto_choices(selection.device),
                   "cases": [result_record(r) for r in results]}, f, indent=1)
    os.replace(path + ".tmp", path)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, out: TextIO = sys.stdout) -> int:
    selection = _selection(args, parser)
    import torch

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    env = environment(selection.device)
    device = torch.device(selection.device)
    from mf_kernels.benchmarking.environment import cpu_model

    out.write(f"mf-kernels check on {env.get('gpu') or cpu_model()} "
              f"({selection.device}): torch {env['torch']}, triton {env['triton']}, "
              f"extension {env['extension']}; TRITON_INTERPRET={env['TRITON_INTERPRET'] or 0}\n")
    cases = planning.plan(selection)
    out.write(f"{len(cases)} cases ({selection.depth}: {', '.join(selection.variants)}; dtypes "
              f"{','.join(selection.dtypes)}; layouts {','.join(selection.layouts)}), "
              f"seed {seed} (--seed {seed} repeats these inputs)\n")
    out.flush()
    budget = 0.0 if args.no_timing else TIMING_BUDGET_S[selection.device]
    results: List[Result] = []
    started = time.perf_counter()
    import warnings

    from mf_kernels.backends import UnverifiedBackendWarning

    with warnings.catch_warnings():
        # Checking an unverified backend is the point here: no warning about it.
        warnings.simplefilter("ignore", UnverifiedBackendWarning)
        for index, case in enumerate(cases):
            reason = planning.skip_reason(case, selection.device)
            if reason:
                results.append(Result(case, "skip", reason))
                continue
            interpreted = case.backend == "triton" and planning.triton_interpreted()
            result = run_case(case, device, seed + index, 0.0 if interpreted else budget)
            results.append(result)
            if args.json and len(results) % 200 == 0:  # a run cut short still leaves a record
                _write_json(args.json, env, seed, selection, time.perf_counter() - started,
                            results, partial=True)
            if args.verbose or result.failed:
                timing = (f" {result.forward_us:.1f}/{result.forward_backward_us:.1f} µs"
                          if result.forward_us is not None else "")
                verdict = result.message or (f"{result.worst} error {_fmt(result.error)} "
                                             f"allowed {_fmt(result.allowed)}{timing}")
                out.write(f"[{index + 1}/{len(cases)}] {result.status.upper()} "
                          f"{case.describe()}: {verdict}\n")
                out.flush()
    wall = time.perf_counter() - started
    failed = sum(r.failed for r in results)
    skipped = sum(r.status == "skip" for r in results)
    out.write("\n")
    print_table(results, out)
    print_failures(results, out)
    print_auto(selection.device, out)
    out.write("\nRules: fp32/fp64 against the fp64 reference, error <= tol x max(|expected|, 1) "
              "(tol 2e-5 fp32, 1e-10 fp64); fp16/bf16 within 2x the reference's own error in "
              "that dtype (against the fp32 reference on the same inputs). Σ µs: the backend's median forward and "
              "forward+backward times summed over the row's timed cases.\n")
    verdict = "FAILED" if failed else "passed"
    out.write(f"mf-kernels check {verdict}: {len(results) - failed - skipped} passed, {failed} "
              f"failed, {skipped} skipped, in {wall:.0f} s\n")
    if args.json:
        _write_json(args.json, env, seed, selection, wall, results, partial=False)
    if failed or (args.fail_on_skip and skipped):
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mf-kernels check", description=__doc__.split("\n\n")[1])
    add_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(args, parser)


__all__ = ["add_arguments", "run", "main", "build_parser", "summary_rows", "auto_choices"]
