"""The static resource table of every GPU kernel: registers, spills, shared memory (sm_90).

Two sources, neither needs a GPU:
* CUDA (csrc/cuda): ptxas -v of a device-only nvcc compile with the build's flags
  (tools/cuda_resources.py; cached under build/resource_table/);
* Triton (mf_kernels/triton): every launch the host code makes for the real Mobile-Former call
  sites, compiled for sm_90 with the installed Triton (tools/triton_sm90_compile.py, run in a
  child process with TRITON_INTERPRET=0).

    python tools/resource_table.py                       # the full table, Markdown on stdout
    python tools/resource_table.py --output bench/results/<date>-vm/resource-table-sm90.md
    python tools/resource_table.py --quick --check       # a minute or two: fails on any spill

From Python (e.g. the device script's dry run): ``build(quick=True)`` returns a ``Table``;
``markdown(table)`` renders it and ``table.spills`` lists the kernels that spill.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import cuda_resources  # noqa: E402


@dataclasses.dataclass
class Table:
    arch: str
    cuda: List[cuda_resources.KernelUsage]
    triton: List[dict]                  # tools/triton_sm90_compile.TritonUsage as dicts
    errors: List[str]                   # a part that could not run, or compile failures
    quick: bool

    @property
    def spills(self) -> List[str]:
        rows = [f"{r.source} {r.kernel}" for r in self.cuda if r.spill_stores or r.spill_loads]
        rows += [f"{r['kernel']} {r['dtype']} {r['blocks']}" for r in self.triton
                 if r["spill_stores"] or r["spill_loads"]]
        return rows


def triton_rows(quick: bool, timeout: float = 3600) -> tuple:
    """(rows, failures) of tools/triton_sm90_compile.py, run in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "triton.json")
        command = [sys.executable, os.path.join(ROOT, "tools", "triton_sm90_compile.py"),
                   "--quiet", "--json", out] + (["--quick"] if quick else [])
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                                env=dict(os.environ, TRITON_INTERPRET="0"), timeout=timeout)
        if not os.path.exists(out):
            raise RuntimeError(f"triton_sm90_compile.py failed:\n{result.stdout[-3000:]}"
                               f"{result.stderr[-3000:]}")
        with open(out) as f:
            data = json.load(f)
    return data["rows"], data["failures"]


def build(quick: bool = False, cuda: bool = True, triton: bool = True, arch: str = "sm_90",
          jobs: int = 3) -> Table:
    """Collects both parts; a part that cannot run (no nvcc, no Triton) becomes an error line."""
    table = Table(arch, [], [], [], quick)
    if cuda:
        try:
            table.cuda = cuda_resources.collect(arch=arch, jobs=jobs)
        except (RuntimeError, OSError) as error:
            table.errors.append(f"CUDA: {error}")
    if triton:
        try:
            table.triton, failures = triton_rows(quick)
            table.errors += [f"Triton compile failure: {f}" for f in failures]
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            table.errors.append(f"Triton: {error}")
    return table


def _versions() -> str:
    import torch

    parts = [f"torch {torch.__version__}"]
    try:
        import triton
        parts.append(f"triton {triton.__version__}")
    except ImportError:
        parts.append("no triton")
    nvcc = cuda_resources.nvcc_path()
    if nvcc:
        release = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        parts.append("nvcc " + release.strip().splitlines()[-1].split()[-1].lstrip("V"))
    try:
        commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                capture_output=True, text=True).stdout.strip()
        parts.append(f"commit {commit}")
    except OSError:
        pass
    return ", ".join(parts)


def markdown(table: Table) -> str:
    cu_spill = [r for r in table.cuda if r.spill_stores or r.spill_loads]
    tr_spill = [r for r in table.triton if r["spill_stores"] or r["spill_loads"]]
    lines = [
        f"# Static resource usage of the GPU kernels ({table.arch})",
        "",
        f"Generated {datetime.date.today().isoformat()} by `python tools/resource_table.py"
        f"{' --quick' if table.quick else ''}` without a GPU ({_versions()}).",
        "Registers and spills per thread from ptxas; shared memory per block/program.",
        "",
        f"* CUDA: {len(table.cuda)} kernels (every template instantiation), "
        f"{len(cu_spill)} spill.",
        f"* Triton: {len(table.triton)} distinct compiled launches, {len(tr_spill)} spill; "
        f"most registers {max((r['registers'] for r in table.triton), default=0)}.",
    ]
    lines += [f"* **{e}**" for e in table.errors]
    if table.cuda:
        lines += ["", "## CUDA (csrc/cuda)", "",
                  "nvcc -cubin with the build's flags (torch's, setup.py's `nvcc` list, the "
                  "defines) and `-Xptxas -v`. Shared memory is dynamic (sized by the host code, "
                  "at most 48 KB a block); ptxas sees only static shared memory.", "",
                  "| file | kernel | registers | spill stores (B) | spill loads (B) | stack (B) "
                  "| static smem (B) |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in table.cuda:
            lines.append(f"| {os.path.basename(r.source)} | `{r.kernel}` | {r.registers} | "
                         f"{r.spill_stores} | {r.spill_loads} | {r.stack} | {r.shared} |")
    if table.triton:
        lines += ["", "## Triton (mf_kernels/triton)", "",
                  "Every distinct launch of the host code (planning for 132 SMs) over the call "
                  "sites of the seven variants at 224x224, "
                  + ("bf16, channels_last, batch 128, two sites an op (--quick)" if table.quick else
                     "batch 1 and 128, fp32/fp16/bf16, contiguous and channels_last")
                  + ", M = 3, 6, 100 tokens for the attention ops. `launched for` is the first "
                  "configuration that needed the variant.", "",
                  "| kernel | dtype | blocks | warps | registers | spill stores (B) "
                  "| spill loads (B) | smem (B) | launched for |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for r in sorted(table.triton, key=lambda r: (r["kernel"], r["dtype"], r["blocks"])):
            lines.append(f"| `{r['kernel']}` | {r['dtype']} | {r['blocks']} | {r['warps']} | "
                         f"{r['registers']} | {r['spill_stores']} | {r['spill_loads']} | "
                         f"{r['shared']} | {r['launched_for']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="Triton: bf16, channels_last, four sites (CUDA is cached)")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--no-triton", action="store_true")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--jobs", type=int, default=3, help="nvcc processes at a time")
    parser.add_argument("--output", help="write the Markdown here (else stdout)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on any spill or any part that could not run")
    args = parser.parse_args(argv)
    table = build(args.quick, not args.no_cuda, not args.no_triton, args.arch, args.jobs)
    text = markdown(table)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}")
    else:
        print(text)
    for line in table.errors + [f"spills: {s}" for s in table.spills]:
        print(line, file=sys.stderr)
    return 1 if args.check and (table.spills or table.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
