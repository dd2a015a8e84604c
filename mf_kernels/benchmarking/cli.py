"""``mf-kernels bench`` and ``mf-kernels compare``: argument parsing, checks, files, exit code.

Argument errors exit with status 2 and one clear line (argparse's ``error``). CUDA is touched
only when ``--device cuda`` is given, and its availability is checked then, at run time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
from typing import List, Optional

from . import plan
from .builders import DTYPES, normalize_variant

DEFAULT_TRAIN_BATCH = {"cpu": 8, "cuda": 64}


def _split(values: Optional[List[str]]) -> Optional[List[str]]:
    """Accept both ``--sizes 224 320`` and ``--sizes 224,320``."""
    if values is None:
        return None
    return [item for value in values for item in value.split(",") if item.strip()]


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1, the paper's setting)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per call (default 1; --mode train: 8 on cpu, 64 on cuda)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                        help="Mobile-Former variants, e.g. mobileformer_214m or 214m "
                             "(default: 214m 294m; --figure5: 214m)")
    parser.add_argument("--sizes", nargs="+", default=None, metavar="PX",
                        help="square image sizes, multiples of 32 (default 224; --figure5: "
                             + " ".join(map(str, plan.FIGURE5_SIZES)) + ")")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="fp32 by default; --device cuda --mode train: bf16 autocast")
    parser.add_argument("--mode", choices=("infer", "train"), default="infer",
                        help="train: one full step (forward, backward, optimizer)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the models under torch.compile (default: on, off "
                             "with --figure5)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        default=None, help="default: on for --device cuda --mode train")
    parser.add_argument("--runtimes", nargs="+", default=None, metavar="RUNTIME",
                        help="runtimes that run the exported reference beside our rows: "
                             + ", ".join(plan.RUNTIMES) + " or none (default: both; "
                             "--figure5: onnxruntime); skipped with the reason when their "
                             "packages are missing")
    parser.add_argument("--figure5", action="store_true",
                        help="latency against image size, MF-214M against MobileNetV3-Large")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where the JSON and Markdown go (default "
                             "bench/results/<date>-<host>/)")
    parser.add_argument("--min-time", type=float, default=1.0, metavar="SECONDS",
                        help="time budget of each row after warm-up (default 1.0)")
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls before timing; the first one compiles")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """Resolve defaults and check every argument; ``parser.error`` exits with status 2."""
    try:
        variants = [normalize_variant(v) for v in _split(args.variants)
                    or (plan.FIGURE5_VARIANTS if args.figure5 else plan.DEFAULT_VARIANTS)]
    except ValueError as error:
        parser.error(f"--variants: {error}")
    sizes = []
    for text in _split(args.sizes) or [str(s) for s in (
            plan.FIGURE5_SIZES if args.figure5 else plan.DEFAULT_SIZES)]:
        if not text.strip().isdigit() or int(text) < 32 or int(text) % 32:
            parser.error(f"--sizes: {text!r} is not a multiple of 32 (>= 32); Mobile-Former "
                         "downsamples by 32")
        sizes.append(int(text))
    for name in ("threads", "min_repeats", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if args.min_time < 0:
        parser.error(f"--min-time: expected >= 0, got {args.min_time}")
    train = args.mode == "train"
    batch = args.batch if args.batch is not None else (
        DEFAULT_TRAIN_BATCH[args.device] if train else 1)
    if batch < 1:
        parser.error(f"--batch: expected >= 1, got {batch}")
    if train and batch < 2:
        parser.error("--batch: --mode train needs a batch of at least 2 (BatchNorm in "
                     "training mode needs more than one value per channel)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is available here "
                         "(torch.cuda.is_available() is False)")
    cuda_train = train and args.device == "cuda"
    dtype = args.dtype or ("bf16" if cuda_train else "fp32")
    channels_last = args.channels_last if args.channels_last is not None else cuda_train
    compile_ = args.compile if args.compile is not None else not args.figure5
    runtimes = _split(args.runtimes) or list(
        plan.FIGURE5_RUNTIMES if args.figure5 else plan.RUNTIMES)
    if "none" in runtimes:
        if len(runtimes) > 1:
            parser.error(f"--runtimes: 'none' cannot be combined with others, got {runtimes}")
        runtimes = []
    for runtime in runtimes:
        if runtime not in plan.RUNTIMES:
            parser.error(f"--runtimes: expected {', '.join(plan.RUNTIMES)} or none, "
                         f"got {runtime!r}")
    return plan.BenchConfig(
        device=args.device, threads=args.threads, batch=batch, variants=tuple(variants),
        sizes=tuple(sizes), dtype=dtype, mode=args.mode, compile=compile_,
        figure5=args.figure5, channels_last=channels_last, optimizer=args.optimizer,
        min_time_s=args.min_time, min_repeats=args.min_repeats, warmup=args.warmup,
        mobilenet_widths=plan.FIGURE5_MOBILENET_WIDTHS if args.figure5
        else plan.MOBILENET_WIDTHS, runtimes=tuple(dict.fromkeys(runtimes)),
        progress=not args.no_progress)


def default_out_dir() -> str:
    date = datetime.date.today().isoformat()
    return os.path.join("bench", "results", f"{date}-{socket.gethostname()}")


def bench_main(args: argparse.Namespace, parser: argparse.ArgumentParser,
               argv: List[str]) -> int:
    config = config_from_args(args, parser)
    from . import figure, report, runner  # heavy imports only once the arguments are good

    record = runner.run(config, command=["mf-kernels", *argv])
    out_dir = args.out or default_out_dir()
    stem = (datetime.datetime.now().strftime("%H%M%S") + f"-{config.mode}-{config.device}"
            + ("-figure5" if config.figure5 else ""))
    if config.figure5:
        os.makedirs(out_dir, exist_ok=True)
        record["figure5"] = figure.make_figure5(record, os.path.join(out_dir, stem + ".png"))
    paths = report.write_record(record, out_dir, stem)
    report.print_summary(record, sys.stdout)
    print(f"record: {paths['json']}\nreport: {paths['markdown']}")
    failed = record["errors"] or not record["parity"]["ok"]
    if failed:
        print("mf-kernels bench: FAILED (see the rows marked FAILED / FAIL above)",
              file=sys.stderr)
    return 1 if failed else 0


def compare_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import report

    records = []
    for path in (args.a, args.b):
        try:
            with open(path) as f:
                records.append(json.load(f))
        except (OSError, ValueError) as error:
            parser.error(f"{path}: cannot read a benchmark record ({error})")
        if not isinstance(records[-1], dict) or "results" not in records[-1]:
            parser.error(f"{path}: not a benchmark record (no 'results')")
    result = report.compare(records[0], records[1], threshold=args.threshold)
    print(report.format_comparison(result, (args.a, args.b)))
    return 1 if result["regressions"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mf-kernels", description="Benchmarks of mf_kernels' accelerated Mobile-Former.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser(
        "bench", help="time reference, accelerated and compiled models against MobileNetV3",
        description="With no arguments: CPU, 1 thread, batch 1, MF-214M and MF-294M at 224 px, "
                    "with ONNX Runtime and OpenVINO running the exported reference when "
                    "installed.")
    add_bench_arguments(bench)
    bench.set_defaults(subparser=bench)  # so that errors name the subcommand
    comparison = commands.add_parser(
        "compare", help="ratios between two records; exit 1 on a regression",
        description="Print B/A per row and flag rows slower beyond the measured spread.")
    comparison.add_argument("a", metavar="A.json", help="the baseline record")
    comparison.add_argument("b", metavar="B.json", help="the record to judge")
    comparison.add_argument("--threshold", type=float, default=0.02,
                            help="ignore changes smaller than this fraction (default 0.02)")
    comparison.set_defaults(subparser=comparison)
    from ..checking import cli as check_cli  # `mf-kernels check`: mf_kernels/checking/

    check = commands.add_parser("check", help="every kernel here against the reference",
                                description=check_cli.__doc__.split("\n\n")[1])
    check_cli.add_arguments(check)
    check.set_defaults(subparser=check)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench_main(args, args.subparser, argv)
    if args.command == "check":
        from ..checking import cli as check_cli

        return check_cli.run(args, args.subparser)
    return compare_main(args, args.subparser)
