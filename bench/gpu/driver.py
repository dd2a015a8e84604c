"""The device script's driver (run it through bench/gpu/run.sh; bench/gpu/README.md says how).

Stages (``--stage``), each sized to the project's 15 minutes of GPU time:
* ``1``, correctness (<= 7 min): environment; the build; ``mf-kernels check --device cuda
  --full``; the curated GPU pytest tier; compute-sanitizer (memcheck, racecheck, synccheck) on
  one small case per CUDA kernel (and memcheck on the Triton kernels); per-op timings at
  MF-294M's training shapes.
* ``2``, the model (<= 5 min): the build (incremental on a warm machine); MF-294M training
  steps (reference, accelerate + cuda, accelerate + triton, torch.compile) and inference at
  batch 1 and 32 with and without CUDA graphs.
* ``full-tests`` / ``full-bench``: the whole test suite / the pytest-benchmark GPU suites on
  the GPU (a later session; up to 10 minutes each).
``--dry-run`` runs stages 1 and 2 on the CPU (tiny shapes, the CPU and interpreter backends, no
sanitizer, the build only planned), so that CI keeps the script working between GPU sessions.

Every part runs in its own process with a timeout (a hang is a failure, and a crash fails only
its part), within the stage's budget; one failing part never stops the others. Everything goes
under the output folder ($OUT on the device machine): ``stageN.json`` (all results), ``.md``
(the summary), ``-junit.xml`` (a test case per part), the raw outputs of the parts, and
``stageN-logs.tar.gz`` (every part's log). The summary table is printed last. Exit status 1
when any part failed or timed out.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import gpu_parts  # noqa: E402  (the parts and how each reads its result)
import gpu_report  # noqa: E402  (the files and the summary table)
from gpu_common import Context, Result  # noqa: E402

BUDGET_S = {"1": 420, "2": 300, "full-tests": 570, "full-bench": 570, "dry": 420}


Part = Callable[[Context], Result]


def stages(dry: bool) -> Dict[str, List[Part]]:
    p = gpu_parts
    stage1 = [p.environment, p.build, p.check, p.pytest_tier, p.sanitizer, p.op_timings]
    stage2 = [p.environment, p.build_for_stage2, *p.model_rows(dry)]
    return {"1": stage1, "2": stage2, "full-tests": [p.environment, p.build, p.full_tests],
            "full-bench": [p.environment, p.build, p.full_bench]}


def part_name(part: Part) -> str:
    return part.__name__.replace("_for_stage2", "").replace("_", "-")


def run_stage(stage: str, dry: bool, out: str, budget_s: float,
              only: Optional[List[str]] = None) -> List[Result]:
    label = f"stage{stage}" if stage in ("1", "2") else stage
    work = tempfile.mkdtemp(prefix=f"mf-kernels-{label}-")  # packed into the logs tarball
    ctx = Context(stage, dry, out, work, time.monotonic() + budget_s)
    print(f"== mf_kernels device script, {label}{' (dry run, CPU)' if dry else ''}: budget "
          f"{budget_s:.0f} s, output {out}", flush=True)
    for part in stages(dry)[stage]:
        name = part_name(part)
        if only and name not in only and name != "environment":
            continue
        if ctx.remaining() < 20:
            ctx.results.append(Result(name, "skip", summary="the stage's time budget is spent"))
            continue
        print(f"-- {name} ...", flush=True)
        started = time.monotonic()
        try:
            produced = part(ctx)
        except Exception as error:  # a broken part is reported as failed; the others go on
            produced = Result(name, "fail", summary=f"driver error: {type(error).__name__}: "
                                                    f"{error}")
        for result in produced if isinstance(produced, list) else [produced]:
            result.seconds = result.seconds or time.monotonic() - started
            ctx.results.append(result)
            print(f"   {result.status:<6} {result.name}: {result.summary}", flush=True)
    gpu_report.write(ctx, label)
    return ctx.results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("1", "2", "full-tests", "full-bench"))
    parser.add_argument("--dry-run", action="store_true",
                        help="stages 1 and 2 on the CPU: tiny shapes, no sanitizer, no build")
    parser.add_argument("--out", default=os.environ.get("OUT"),
                        help="output folder (default $OUT, else bench/results/<date>-gpu-run)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the stage (default: 420 for 1, 300 for 2)")
    parser.add_argument("--only", default=None, metavar="PART,...",
                        help="run only these parts of the stage (a rerun after a fix), e.g. "
                             "build,check; the environment part always runs")
    args = parser.parse_args(argv)
    if not args.stage and not args.dry_run:
        parser.error("give --stage 1, --stage 2, --stage full-tests, --stage full-bench or "
                     "--dry-run")
    out = args.out or os.path.join(ROOT, "bench", "results",
                                   f"{datetime.date.today().isoformat()}-gpu-run")
    os.makedirs(out, exist_ok=True)
    chosen = [args.stage] if args.stage else ["1", "2"]
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    if only:
        known = {part_name(p) for stage in chosen for p in stages(args.dry_run)[stage]}
        unknown = [name for name in only if name not in known]
        if unknown:
            parser.error(f"--only: unknown part(s) {unknown}; the parts: {sorted(known)}")
    failed = False
    for stage in chosen:
        budget = args.budget or BUDGET_S["dry" if args.dry_run else stage]
        results = run_stage(stage, args.dry_run, out, budget, only)
        failed |= any(r.failed for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
