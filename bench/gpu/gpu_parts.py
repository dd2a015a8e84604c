"""The parts of the device script: what each runs, its timeout, and how its result is read.

Each part takes the :class:`gpu_common.Context` and returns one :class:`gpu_common.Result` (or
a list). Commands run through ``ctx.run`` (own process, own log, timeout); a part's raw output
(JSON, junit XML) is written straight to the output folder, named ``stageN-<what>``.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from typing import List

from gpu_common import ROOT, Context, Result

OPS = ("dynamic_relu", "m2f_attention", "f2m_attention")


def _label(ctx: Context) -> str:
    return f"stage{ctx.stage}" if ctx.stage in ("1", "2") else ctx.stage


def _out(ctx: Context, what: str) -> str:
    return os.path.join(ctx.out, f"{_label(ctx)}-{what}")


def _status(finished, ok: bool) -> str:
    return "timeout" if finished.timed_out else ("pass" if ok else "fail")


def _first_line(text: str, pattern: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(0).strip() if match else ""


# -- environment -------------------------------------------------------------------------------

def environment(ctx: Context) -> Result:
    """Versions of everything the run depends on, the GPU and its state, the commit."""
    probes = {
        "nvidia-smi": ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,"
                       "clocks.max.sm,clocks.mem,temperature.gpu,power.draw,compute_mode",
                       "--format=csv,noheader"],
        "nvidia-smi-full": ["nvidia-smi"],
        "nvcc": ["nvcc", "--version"],
        "ninja": ["ninja", "--version"],
        "compute-sanitizer": ["compute-sanitizer", "--version"],
        "git": ["git", "-C", ROOT, "rev-parse", "HEAD"],
        "git-status": ["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
        "python": [ctx.python, "-c", (
            "import json, os, platform, importlib.metadata as md\n"
            "v = {}\n"
            "for name in ('torch', 'triton', 'setuptools', 'pytest', 'pytest-xdist', "
            "'pytest-timeout', 'pytest-benchmark', 'numpy', 'ninja'):\n"
            "    try: v[name] = md.version(name)\n"
            "    except md.PackageNotFoundError: v[name] = None\n"
            "import torch\n"
            "v['python'] = platform.python_version(); v['cpus'] = len(os.sched_getaffinity(0))\n"
            "v['torch_cuda'] = torch.version.cuda; v['cuda_available'] = torch.cuda.is_available()\n"
            "if v['cuda_available']:\n"
            "    p = torch.cuda.get_device_properties(0)\n"
            "    v['gpu'] = p.name; v['capability'] = f'{p.major}.{p.minor}'\n"
            "    v['sms'] = p.multi_processor_count; v['memory_gib'] = round(p.total_memory / 2**30, 1)\n"
            "    v['bf16'] = torch.cuda.is_bf16_supported()\n"
            "print(json.dumps(v))")],
    }
    facts: dict = {}
    lines = []
    for name, command in probes.items():
        if shutil.which(command[0]) is None and not os.path.isabs(command[0]):
            facts[name] = None
            continue
        finished = ctx.run(f"env-{name}", command, 60)
        text = finished.text.split("\n", 2)[-1].strip()  # drop the command and timeout lines
        facts[name] = text if finished.returncode == 0 else f"(exit {finished.returncode}) {text[-300:]}"
        lines.append(f"## {name}\n{text}\n")
    versions = {}
    try:
        versions = json.loads(facts["python"].splitlines()[-1])
    except (AttributeError, IndexError, ValueError):
        pass
    commit = (facts.get("git") or "").strip() if facts.get("git") and "exit" not in facts["git"] \
        else os.environ.get("MF_COMMIT", "unknown (no .git here: pass MF_COMMIT=<sha>)")
    ctx.facts.update(versions=versions, commit=commit, dirty=bool(facts.get("git-status")),
                     nvidia_smi=facts.get("nvidia-smi"), nvcc=_first_line(
                         facts.get("nvcc") or "", r"release [\d.]+.*$"),
                     ninja=facts.get("ninja"), sanitizer=facts.get("compute-sanitizer"))
    gpu = versions.get("gpu") or "no GPU"
    summary = (f"{gpu} ({versions.get('capability', '-')}), torch {versions.get('torch')}, triton "
               f"{versions.get('triton')}, nvcc {ctx.facts['nvcc'] or 'absent'}, ninja "
               f"{facts.get('ninja') or 'absent'}, {versions.get('cpus')} CPUs, commit "
               f"{str(commit)[:12]}")
    return Result("environment", "pass", summary=summary, details=ctx.facts)


# -- build -------------------------------------------------------------------------------------

def build(ctx: Context) -> Result:
    """``setup.py build_ext --inplace``: ninja, MAX_JOBS = the CPUs, the local GPU's arch only;
    incremental (ninja's state stays under build/ on a warm machine). The dry run only plans
    it (CI's install already built the extension)."""
    env = ctx.env()
    if ctx.dry:
        env["MF_KERNELS_BUILD_PLAN"] = "1"
    finished = ctx.run("build", [ctx.python, "setup.py", "build_ext", "--inplace"], 420, env)
    info = {}
    try:
        with open(os.path.join(ROOT, "mf_kernels", "_build_info.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        pass
    compiled = len(re.findall(r"^\[\d+/\d+\]", finished.text, re.MULTILINE))
    nothing = "no work to do" in finished.text
    decision = _first_line(finished.text, r"^\[mf_kernels\] building.*$")
    jobs = _first_line(finished.text, r"^\[mf_kernels\] .*MAX_JOBS=\d+.*$")
    loaded = ctx.run("build-load", [ctx.python, "-c", (
        "import mf_kernels, sys; from mf_kernels import _extension as e; "
        "print('loaded', e.LOADED, 'cuda', e.WITH_CUDA, e.LOAD_ERROR or ''); "
        "sys.exit(0 if e.LOADED else 1)")], 120)
    ok = finished.returncode == 0 and loaded.returncode == 0
    what = ("planned only (dry run)" if ctx.dry else
            "nothing to rebuild" if nothing else f"{compiled} ninja steps")
    summary = (f"{what} in {finished.seconds:.0f} s; {decision.replace('[mf_kernels] ', '')}; "
               f"{jobs.replace('[mf_kernels] ', '')}; {loaded.text.splitlines()[-1][:120]}")
    if not ok:
        summary = f"FAILED (exit {finished.returncode}): {finished.tail(4)}"[:600]
    ctx.facts["build"] = {"seconds": finished.seconds, "steps": compiled, "info": info}
    return Result("build", _status(finished, ok), finished.seconds, summary,
                  {"seconds": finished.seconds, "ninja_steps": compiled, "no_work": nothing,
                   "build_info": info}, finished.log)


def build_for_stage2(ctx: Context) -> Result:
    return build(ctx)


# -- mf-kernels check --------------------------------------------------------------------------

def check(ctx: Context) -> Result:
    """`mf-kernels check`, one process per op side by side (Triton compiles each kernel
    specialisation on first use, on the CPU: three processes compile three times as fast; the
    GPU has room for all three), merged into one record, ``stage1-check.json``."""
    # the default depth: every site of the seven variants in every dtype, layouts rotating,
    # MF-294M at batch 128, M = 100 (about 1000 cases; --full, 3x that, is for full-tests)
    depth = ["--device", "cpu", "--quick", "--seed", "0"] if ctx.dry else ["--device", "cuda"]
    paths = {op: os.path.join(ctx.work, f"check-{op}.json") for op in OPS}

    def one(op):
        return ctx.run(f"check-{op}", [ctx.python, "-m", "mf_kernels", "check", "--ops", op,
                                       "--json", paths[op], "--verbose", *depth], 200)

    with ThreadPoolExecutor(len(OPS)) as pool:
        finished = dict(zip(OPS, pool.map(one, OPS)))
    records, problems = [], []
    for op in OPS:
        try:
            with open(paths[op]) as f:
                records.append(json.load(f))
        except (OSError, ValueError):
            problems.append(f"{op}: no record (exit {finished[op].returncode}): "
                            f"{finished[op].tail(2)}"[:300])
    seconds = max(f.seconds for f in finished.values())
    timed_out = any(f.timed_out for f in finished.values())
    if not records:
        return Result("check", "timeout" if timed_out else "fail", seconds, "; ".join(problems))
    cases = [case for record in records for case in record["cases"]]
    merged = {**records[0], "cases": cases, "partial": any(r.get("partial") for r in records)
              or bool(problems), "wall_s": seconds,
              **{k: sum(r[k] for r in records) for k in ("passed", "failed", "skipped")}}
    merged["selection"]["ops"] = [op for r in records for op in r["selection"]["ops"]]
    with open(_out(ctx, "check.json"), "w") as f:
        json.dump(merged, f, indent=1)
    ran = {}
    for case in cases:
        if case["status"] != "skip":
            ran[case["backend"]] = ran.get(case["backend"], 0) + 1
    failures = [c for c in cases if c["status"] in ("fail", "error")]
    expected = ("cpu", "triton") if ctx.dry else ("cuda", "triton")
    missing = [b for b in expected if not ran.get(b)]
    skip_reasons = sorted({c["message"] for c in cases if c["status"] == "skip"})
    summary = (f"{merged['passed']} passed, {merged['failed']} failed, {merged['skipped']} "
               f"skipped ({', '.join(f'{b}: {n} run' for b, n in ran.items())}), seed "
               f"{merged['seed']}")
    if merged["partial"]:
        summary += " (PARTIAL: a process was cut short)"
    summary += "".join(f"; {problem}" for problem in problems)
    for c in failures[:3]:
        summary += (f"; FAIL {c['op']} {c['backend']} {c['dtype']} {c['layout']} "
                    f"{c['batch']}x{'x'.join(map(str, c['chw']))} M{c['tokens']}: {c['message']}")
    if missing:
        summary += f"; NOTHING RAN on {', '.join(missing)}: {'; '.join(skip_reasons)[:300]}"
    ok = (all(f.returncode == 0 for f in finished.values()) and not failures and not missing
          and not problems)
    status = "timeout" if timed_out else ("pass" if ok else "fail")
    return Result("check", status, seconds, summary,
                  {"passed": merged["passed"], "failed": merged["failed"],
                   "skipped": merged["skipped"], "ran": ran, "skip_reasons": skip_reasons,
                   "auto": merged["auto"], "failures": failures[:50]})


# -- the curated GPU pytest tier ---------------------------------------------------------------

def _junit_counts(path: str) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    counts = {k: sum(int(s.get(k, 0)) for s in suites)
              for k in ("tests", "failures", "errors", "skipped")}
    counts["failed_ids"] = [f"{case.get('classname')}::{case.get('name')}"
                            for case in root.iter("testcase")
                            if case.find("failure") is not None or case.find("error") is not None]
    return counts


def _pytest(ctx: Context, name: str, args: List[str], timeout: float, xml: str,
            parallel: bool = True, per_test_s: int = 120) -> Result:
    command = [ctx.python, "-m", "pytest", *args, "-q", "-ra", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
    if parallel and not ctx.dry and importlib.util.find_spec("xdist") is not None:
        command += ["-n", str(min(8, max(1, (os.cpu_count() or 2) // 2)))]
    if importlib.util.find_spec("pytest_timeout") is not None:
        command += ["--timeout", str(300 if ctx.dry else per_test_s)]
    # compiled Triton on CUDA tensors: the conftest's default (the interpreter) would skip them
    finished = ctx.run(name, command, timeout, ctx.env(TRITON_INTERPRET="0"))
    try:
        counts = _junit_counts(xml)
    except (OSError, ET.ParseError):
        return Result(name, _status(finished, False), finished.seconds,
                      f"no junit XML (exit {finished.returncode}): {finished.tail(3)}"[:500],
                      log=finished.log)
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    summary = (f"{passed} passed, {counts['failures'] + counts['errors']} failed, "
               f"{counts['skipped']} skipped of {counts['tests']}")
    if counts["failed_ids"]:
        summary += "; FAILED: " + ", ".join(counts["failed_ids"][:5])
    ok = finished.returncode in (0, 5) and not counts["failed_ids"]
    return Result(name, _status(finished, ok), finished.seconds, summary, counts, finished.log)


def pytest_tier(ctx: Context) -> Result:
    """Tests marked gpu, and every test whose name or parameters say cuda (the CUDA kernels'
    suites, the compiled-Triton parameters): -k matches markers and ids alike. The bench CLI's
    tests are left out: their "cuda" tests check CUDA is left alone by a whole CPU smoke run."""
    return _pytest(ctx, "pytest-gpu-tier", ["tests", "-k", "(gpu or cuda) and not test_bench_cli"],
                   200, _out(ctx, "pytest.xml"))


def full_tests(ctx: Context) -> List[Result]:
    """The whole test suite on the GPU, then the full cross product of `mf-kernels check`."""
    tests = _pytest(ctx, "pytest-full", ["tests"], 400, _out(ctx, "pytest.xml"))
    path = _out(ctx, "check.json")
    finished = ctx.run("check-full", [ctx.python, "-m", "mf_kernels", "check", "--device", "cuda",
                                      "--full", "--no-timing", "--json", path], 300)
    full = Result("check-full", _status(finished, finished.returncode == 0), finished.seconds,
                  _first_line(finished.text, r"^mf-kernels check .*$") or finished.tail(2),
                  log=finished.log)
    return [tests, full]


def full_bench(ctx: Context) -> Result:
    """The pytest-benchmark GPU suites, one test at a time (timings must not share the GPU)."""
    return _pytest(ctx, "pytest-bench", [
        "bench/test_gpu_ops.py", "bench/test_gpu_model.py", "--benchmark-only",
        f"--benchmark-json={_out(ctx, 'benchmark.json')}"], 560, _out(ctx, "pytest.xml"),
        parallel=False, per_test_s=540)


# -- compute-sanitizer -------------------------------------------------------------------------

# (tool, backend, dtypes): races and barriers do not depend on the dtype; memory accesses do
SANITIZER_RUNS = (("memcheck", "cuda", "fp32,bf16"), ("racecheck", "cuda", "fp32"),
                  ("synccheck", "cuda", "fp32"), ("memcheck", "triton", "fp32"))


def sanitizer(ctx: Context) -> List[Result]:
    """One process per tool: the small cases of bench/gpu/sanitize_cases.py under
    compute-sanitizer (the dry run runs the cases alone, on the CPU)."""
    cases = [ctx.python, "bench/gpu/sanitize_cases.py"]
    if ctx.dry:
        finished = ctx.run("sanitizer-cases", cases + ["--device", "cpu", "--backend", "cpu",
                                                       "--tiny"], 120)
        return [Result("sanitizer", _status(finished, finished.returncode == 0),
                       finished.seconds, "dry run: the cases without the tool: "
                       + finished.tail(1), log=finished.log)]
    tool = shutil.which("compute-sanitizer") or next(iter(glob.glob(
        "/usr/local/cuda*/bin/compute-sanitizer")), None)
    if tool is None:
        return [Result("sanitizer", "unavailable", summary="compute-sanitizer not found")]
    results = []
    for name, backend, dtypes in SANITIZER_RUNS:
        command = [tool, "--tool", name, "--error-exitcode", "97", *cases, "--backend", backend,
                   "--dtypes", dtypes]
        # no caching allocator: out-of-bounds accesses inside a cached block would go unseen
        finished = ctx.run(f"sanitizer-{name}-{backend}", command, 90,
                           ctx.env(PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
        errors = _first_line(finished.text, r"ERROR SUMMARY: \d+ errors?.*$")
        unsupported = re.search(r"Device not supported|not supported on this|Unable to find "
                                r"injection library", finished.text)
        if unsupported and finished.returncode not in (0,):
            results.append(Result(f"sanitizer-{name}-{backend}", "unavailable",
                                  finished.seconds, f"the tool cannot run here: "
                                  f"{unsupported.group(0)}", log=finished.log))
            continue
        ok = finished.returncode == 0 and (not errors or errors.startswith("ERROR SUMMARY: 0"))
        summary = (errors or "no ERROR SUMMARY line") + f" (exit {finished.returncode}); " \
            + _first_line(finished.text, r"^sanitize_cases: .*$")
        if not ok:
            summary += " | " + finished.tail(6).replace("\n", " | ")[-500:]
        results.append(Result(f"sanitizer-{name}-{backend}", _status(finished, ok),
                              finished.seconds, summary, log=finished.log))
    return results


# -- per-op timings ----------------------------------------------------------------------------

def op_timings(ctx: Context) -> Result:
    path = _out(ctx, "op-timings.json")
    command = [ctx.python, "bench/gpu/op_timings.py", "--json", path]
    command += ["--device", "cpu", "--tiny"] if ctx.dry else []
    finished = ctx.run("op-timings", command, 150, ctx.env(TRITON_INTERPRET="0"))
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return Result("op-timings", _status(finished, False), finished.seconds,
                      f"no record (exit {finished.returncode}): {finished.tail(3)}"[:500],
                      log=finished.log)
    totals = {}
    for row in record["rows"]:
        if "error" not in row and row["dtype"] == "bf16":
            totals.setdefault(row["impl"], [0.0, 0])
            totals[row["impl"]][0] += row["forward_backward_us"]
            totals[row["impl"]][1] += row["forward_backward_bytes"]
    errors = [r for r in record["rows"] if "error" in r]
    summary = f"copy {record['copy_GBps']:.0f} GB/s; bf16 fwd+bwd over all sites: " + ", ".join(
        f"{impl} {us / 1e3:.2f} ms ({b / us / 1e3 / record['copy_GBps'] * 100:.0f}% copy)"
        for impl, (us, b) in totals.items())
    if errors:
        summary += f"; {len(errors)} rows FAILED: {errors[0]['error'][:200]}"
    summary_table = finished.text[finished.text.find("Per op, dtype"):] if "Per op" in \
        finished.text else ""
    return Result("op-timings", _status(finished, finished.returncode == 0 and not errors),
                  finished.seconds, summary, {"table": summary_table}, finished.log)


# -- stage 2: the model ------------------------------------------------------------------------

def model_rows(dry: bool):
    """One part per row (each its own process)."""
    device = ["--device", "cpu", "--tiny"] if dry else []
    kernels = "cpu" if dry else "cuda"
    rows = [("train", "reference"), ("train", kernels), ("train", "triton"),
            ("train", "compiled"), ("infer", "reference"), ("infer", kernels),
            ("infer", "triton"), ("infer", "frozen")]
    parts = []
    for row, impl in rows:
        def part(ctx: Context, row=row, impl=impl) -> Result:
            name = f"{row}-{impl}"
            if ctx.dry and impl == "triton":
                return Result(name, "skip", summary="dry run: Triton's interpreter would take "
                                                    "minutes for a whole model")
            path = os.path.join(ctx.work, f"{name}.json")
            finished = ctx.run(name, [ctx.python, "bench/gpu/model_bench.py", row, "--impl",
                                      impl, "--json", path, *device],
                               300 if impl == "compiled" else 150,
                               ctx.env(TRITON_INTERPRET="0"))
            try:
                with open(path) as f:
                    record = json.load(f)
            except (OSError, ValueError):
                return Result(name, _status(finished, False), finished.seconds,
                              f"no record (exit {finished.returncode}): {finished.tail(3)}"[:500],
                              log=finished.log)
            return Result(name, _status(finished, "error" not in record and
                                        finished.returncode == 0),
                          finished.seconds, _model_summary(record), record, finished.log)
        part.__name__ = f"{row}_{impl}"
        parts.append(part)
    return parts


def _model_summary(record: dict) -> str:
    if "error" in record:
        return f"FAILED: {record['error']}"[:500]
    if record["row"] == "train":
        text = (f"{record['images_per_s']:.0f} images/s ({record['median_step_ms']:.1f} ms/step)"
                f", loss {record['loss_step1']:.4f}")
        if "peak_memory_mib" in record:
            text += f", peak {record['peak_memory_mib']:.0f} MiB"
        if "compile_s" in record:
            text += f", compile {record['compile_s']:.0f} s"
        return text
    parts = []
    for key, row in record.items():
        if isinstance(row, dict):
            graph = (f", graph {row['cuda_graph_ms']:.2f} ms" if "cuda_graph_ms" in row
                     else f", graph FAILED {row['cuda_graph_error'][:80]}"
                     if "cuda_graph_error" in row else "")
            parts.append(f"{key}: eager {row['eager_ms']:.2f} ms{graph}, err "
                         f"{row['rel_err_vs_fp32_reference']:.1e}")
    return "; ".join(parts)
