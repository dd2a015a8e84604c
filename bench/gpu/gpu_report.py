"""What a stage of the device script leaves behind, and the table it prints last.

Files (the device tool brings back at most 8 files, at most 2 folders down, so everything is
flat and the logs are packed):
* ``<stage>.json``: every part's status, time, summary and details, the environment, commit;
* ``<stage>.md``: the same for people: the parts table, then each part's highlights;
* ``<stage>-junit.xml``: one test case per part (failed, or skipped with the reason);
* ``<stage>-logs.tar.gz``: every command's full output (and the model rows' JSON);
* the parts' own records: ``stage1-check.json``, ``stage1-pytest.xml``,
  ``stage1-op-timings.json``.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tarfile
import xml.etree.ElementTree as ET

from gpu_common import Context

STATUS_WORD = {"pass": "pass", "fail": "FAIL", "timeout": "TIMEOUT", "skip": "skip",
               "unavailable": "n/a"}


def write(ctx: Context, label: str) -> None:
    record = {
        "schema": "mf_kernels.gpu_run/1", "stage": label, "dry_run": ctx.dry,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": ctx.facts.get("commit"), "facts": ctx.facts,
        "parts": [dataclasses.asdict(r) | {"log": os.path.basename(r.log) if r.log else None}
                  for r in ctx.results],
        "failed": [r.name for r in ctx.results if r.failed],
    }
    base = os.path.join(ctx.out, label)
    with open(base + ".json", "w") as f:
        json.dump(record, f, indent=1, default=str)
    with open(base + ".md", "w") as f:
        f.write(markdown(ctx, label))
    junit(ctx, label, base + "-junit.xml")
    with tarfile.open(base + "-logs.tar.gz", "w:gz") as tar:
        tar.add(ctx.work, arcname=f"{label}-logs")
    shutil.rmtree(ctx.work, ignore_errors=True)
    print(table(ctx, label), flush=True)


def title(ctx: Context, label: str) -> str:
    versions = ctx.facts.get("versions") or {}
    failed = sum(r.failed for r in ctx.results)
    return (f"mf_kernels device script, {label}{' (dry run)' if ctx.dry else ''}: "
            f"{versions.get('gpu') or 'CPU'}, torch {versions.get('torch')}, triton "
            f"{versions.get('triton')}, commit {str(ctx.facts.get('commit'))[:12]}: "
            f"{len(ctx.results) - failed} of {len(ctx.results)} parts without failure"
            + (f", {failed} FAILED" if failed else ""))


def table(ctx: Context, label: str) -> str:
    lines = ["", "=" * 100, title(ctx, label), "-" * 100,
             f"{'part':<26} {'status':<8} {'s':>6}  result"]
    for r in ctx.results:
        lines.append(f"{r.name:<26} {STATUS_WORD[r.status]:<8} {r.seconds:>6.0f}  "
                     f"{r.summary[:400]}")
    files = sorted(f for f in os.listdir(ctx.out) if f.startswith(label))
    lines += ["-" * 100, f"written to {ctx.out}: {', '.join(files)}", "=" * 100]
    return "\n".join(lines)


def markdown(ctx: Context, label: str) -> str:
    out = [f"# {title(ctx, label)}", ""]
    versions = ctx.facts.get("versions") or {}
    out += ["## Environment", "", "| | |", "|---|---|"]
    for key in ("gpu", "capability", "sms", "memory_gib", "bf16", "python", "torch", "torch_cuda",
                "triton", "setuptools", "pytest", "cpus"):
        out.append(f"| {key} | {versions.get(key)} |")
    for key in ("commit", "dirty", "nvcc", "ninja", "sanitizer", "nvidia_smi"):
        value = str(ctx.facts.get(key)).replace("\n", " ")
        out.append(f"| {key} | {value} |")
    out += ["", "## Parts", "", "| part | status | s | result |", "|---|---|---:|---|"]
    for r in ctx.results:
        summary = r.summary.replace("|", "/").replace("\n", " ")
        out.append(f"| {r.name} | {STATUS_WORD[r.status]} | {r.seconds:.0f} | {summary} |")
    for r in ctx.results:
        if r.name == "check" and r.details.get("auto"):
            out += ["", "## What auto picks (from `mf-kernels check`)", "",
                    "| op | dtype | backend | passed over |", "|---|---|---|---|"]
            for row in r.details["auto"]:
                over = "; ".join(f"{b}: {' '.join(w)}" for b, w in row["passed_over"].items())
                out.append(f"| {row['op']} | {row['dtype']} | {row['backend']} | {over} |")
        if r.details.get("table"):
            out += ["", f"## {r.name}", "", "```", r.details["table"].strip(), "```"]
    return "\n".join(out) + "\n"


def junit(ctx: Context, label: str, path: str) -> None:
    suite = ET.Element("testsuite", name=f"mf_kernels.gpu.{label}", tests=str(len(ctx.results)),
                       failures=str(sum(r.failed for r in ctx.results)),
                       skipped=str(sum(r.status in ("skip", "unavailable")
                                       for r in ctx.results)),
                       time=f"{sum(r.seconds for r in ctx.results):.1f}")
    for r in ctx.results:
        case = ET.SubElement(suite, "testcase", classname=f"gpu.{label}", name=r.name,
                             time=f"{r.seconds:.1f}")
        if r.failed:
            ET.SubElement(case, "failure", message=r.summary[:500]).text = r.summary
        elif r.status in ("skip", "unavailable"):
            ET.SubElement(case, "skipped", message=r.summary[:500])
        ET.SubElement(case, "system-out").text = r.summary
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
