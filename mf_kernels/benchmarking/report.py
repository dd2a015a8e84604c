"""Turn a benchmark record into the printed table, the JSON file and the Markdown report;
and compare two records.

Records are plain JSON (schema ``mf_kernels.bench/1``): every median with its spread, the
environment and the git commit, so that two runs can be compared later with
``mf-kernels compare A.json B.json``.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from . import environment


def _number(value: Optional[float], digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _has_ort(record: Dict) -> bool:
    """Whether an ONNX Runtime row was timed: then every row gets a "vs ORT" ratio."""
    return any(r.get("ratio_to_ort") is not None for r in record["results"])


def _columns(record: Dict) -> List[str]:
    train = record["config"]["mode"] == "train"
    cuda = record["config"]["device"] == "cuda"
    headers = ["model", "size", "row", "median ms", "IQR ms", "min-max ms", "vs eager ref"]
    if _has_ort(record):
        headers.append("vs ORT")
    if train:
        headers.append("images/s")
    if train or cuda:
        headers.append("peak MiB")
    return headers + ["params M", "MAdds M", "rel err"]


def table_rows(record: Dict) -> List[List[str]]:
    headers = _columns(record)
    lines = []
    for r in record["results"]:
        if "error" in r:
            message = r["error"] if len(r["error"]) <= 100 else r["error"][:97] + "..."
            cells = [r["model"], str(r["size"]), r["label"], "FAILED: " + message]
            lines.append(cells + [""] * (len(headers) - len(cells)))
            continue
        ratio = r.get("ratio_to_eager_reference")
        rel_err = r.get("rel_err")
        error_cell = "" if rel_err is None else f"{rel_err:.1e}"
        if r.get("parity_ok") is False:
            error_cell += " FAIL"
        cells = [r["model"], str(r["size"]), r["label"], _number(r["median_ms"]),
                 _number(r["iqr_ms"]), f"{r['min_ms']:.2f}-{r['max_ms']:.2f}",
                 _number(ratio, 2, "x")]
        if "vs ORT" in headers:
            cells.append(_number(r.get("ratio_to_ort"), 2, "x"))
        if "images/s" in headers:
            cells.append(_number(r.get("images_per_s"), 1))
        if "peak MiB" in headers:
            cells.append(_number(r.get("peak_memory_mb"), 0))
        cells += [f"{r['params'] / 1e6:.2f}", f"{r['madds'] / 1e6:.0f}", error_cell]
        lines.append(cells)
    return lines


def format_text_table(record: Dict) -> str:
    headers, rows = _columns(record), table_rows(record)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    widths[3] = max(len(headers[3]), *(len(row[3]) for row in rows
                                       if not row[3].startswith("FAILED")), 0)
    def line(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def format_markdown_table(record: Dict) -> str:
    headers, rows = _columns(record), table_rows(record)
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---" if i < 3 else "---:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
            for row in rows]  # a "|" in an error message would split the cell
    return "\n".join(out)


def notes(record: Dict) -> List[str]:
    """The sentences under the table: what the ratio means, parity, compile, failures."""
    config, parity = record["config"], record["parity"]
    out = [f"batch {config['batch']}, {config['dtype']}"
           + (" autocast" if config.get("autocast") else "")
           + (", channels_last" if config["channels_last"] else "")
           + f", mode {config['mode']}" + (f" ({config['optimizer']})"
                                            if config["mode"] == "train" else "")
           + f", on {config['device']}; timing: {record['timing_method']}.",
           "'vs eager ref' is the row's median over the eager reference's of the same variant "
           f"(below 1x is faster); MobileNetV3 rows are against {config['variants'][0]}'s."]
    if _has_ort(record):
        out.append("'vs ORT' is the row's median over ONNX Runtime's running the same variant "
                   "exported (below 1x is faster than ORT); MobileNetV3 rows are against "
                   f"{config['variants'][0]}'s.")
    out += runtime_notes(record)
    if parity["gated"]:
        verdict = "PASS" if parity["ok"] else "FAIL"
        unchecked = [c["id"] for c in parity["checks"] if c["rel_err"] is None]
        out.append(f"Parity {verdict}: the logits of the accelerated, frozen and runtime rows "
                   "must match the eager reference's within "
                   f"{parity['tolerance']:g} relative (max |diff| / max |ref|)"
                   + (f"; not checked, the row failed: {', '.join(unchecked)}." if unchecked
                      else "."))
    elif parity.get("note"):
        out.append(f"Parity: {parity['note']}.")
    compiles = [r for r in record["results"] if r.get("compile_s") is not None]
    if compiles:
        out.append("Compile time: " + ", ".join(
            f"{r['model']} {r['size']} {r['kind']} {r['compile_s']:.0f} s" for r in compiles))
    if record["errors"]:
        out.append("FAILED rows: " + ", ".join(record["errors"]))
    return out


def runtime_notes(record: Dict) -> List[str]:
    """How the ONNX Runtime and OpenVINO rows were made, and why any was skipped."""
    out = []
    timed = [r for r in record["results"] if r.get("runtime")]
    exports = [r for r in timed if r.get("export_s") is not None]
    if exports:
        onnx = exports[0]["onnx"]
        out.append(f"ONNX export: `{onnx['exporter']}` of the reference model (opset "
                   f"{onnx['opset']}, one static export per model and input shape, shared by "
                   "the runtimes); export time: " + ", ".join(
                       f"{r['model']} {r['size']} {r['export_s']:.0f} s" for r in exports))
    seen = set()
    for r in timed:
        info = r["runtime"]
        if info["runtime"] in seen:
            continue
        seen.add(info["runtime"])
        if info["runtime"] == "onnxruntime":
            out.append(f"ONNX Runtime {info['version']}: "
                       f"{', '.join(info['execution_providers'])}, "
                       f"{info['graph_optimization_level']}, intra-op threads "
                       f"{info['intra_op_num_threads']}, inter-op threads "
                       f"{info['inter_op_num_threads']}.")
        else:
            out.append(f"OpenVINO {info['version']}: device {info['execution_devices']}, "
                       f"{info['performance_hint']} hint, {info['inference_num_threads']} "
                       f"inference thread(s), {info['num_streams']} stream(s), precision "
                       f"{info['inference_precision_hint']}.")
    for skip in record.get("skipped") or []:
        out.append(f"{skip['rows']} rows skipped: {skip['reason']}.")
    return out


def print_summary(record: Dict, stream) -> None:
    env = record["environment"]
    stream.write("machine: " + environment.one_line(env) + "\n")
    stream.write(format_text_table(record) + "\n")
    for note in notes(record):
        stream.write("* " + note + "\n")
    figure = record.get("figure5")
    if figure:
        stream.write(f"* figure 5: {figure['png']} - {figure['crossover_note']}\n")
        for block in figure.get("against_ort") or []:
            stream.write(f"* figure 5, under ONNX Runtime: {block['crossover_note']}\n")


def write_record(record: Dict, directory: str, stem: str) -> Dict[str, str]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``directory``; return their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {"json": os.path.join(directory, stem + ".json"),
             "markdown": os.path.join(directory, stem + ".md")}
    record.setdefault("files", {}).update(
        {k: os.path.basename(v) for k, v in paths.items()})
    with open(paths["json"], "w") as f:
        json.dump(record, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    with open(paths["markdown"], "w") as f:
        f.write(markdown_report(record))
    return paths


def markdown_report(record: Dict) -> str:
    env = record["environment"]
    git = env.get("git") or {}
    lines = [f"# mf_kernels benchmark, {record['created']}", "",
             f"`{' '.join(record['command'] or ['mf-kernels', 'bench'])}`", "",
             format_markdown_table(record), ""]
    lines += [f"* {note}" for note in notes(record)]
    figure = record.get("figure5")
    if figure:
        lines += ["", "## Latency against image size (paper, figure 5)", "",
                  f"![latency against image size]({figure['png']})", "",
                  figure["crossover_note"]]
        against_ort = figure.get("against_ort") or []
        if against_ort:
            lines += ["", "Against MobileNetV3-Large 1.0x exported and run by ONNX Runtime:", ""]
            lines += [f"* {block['crossover_note']}" for block in against_ort]
    lines += ["", "## Environment", ""]
    shown = dict(env)
    shown["git"] = f"{git.get('commit')}" + (" (uncommitted edits)" if git.get("dirty") else "")
    lines += [f"* {key}: {value}" for key, value in shown.items()]
    lines += ["", f"Wall time of the run: {record['wall_s']:.0f} s. JSON record: "
              f"`{record.get('files', {}).get('json', '')}`.", ""]
    return "\n".join(lines)


# ---- compare ---------------------------------------------------------------------------------

ENVIRONMENT_KEYS = ("cpu", "gpu", "threads", "torch", "python", "cpus_usable", "cpu_isa",
                    "runtimes")


def compare(a: Dict, b: Dict, threshold: float = 0.02) -> Dict[str, object]:
    """Ratios B/A of every row both records share. A row regressed when B is slower by more
    than the measured spread: B's first quartile above A's third (the interquartile ranges do
    not overlap) and the ratio above 1 + ``threshold``; "faster" is the mirror image."""
    rows_a = {r["id"]: r for r in a["results"] if "error" not in r}
    rows = []
    for rb in b["results"]:
        ra = rows_a.get(rb["id"])
        if ra is None or "error" in rb:
            continue
        ratio = rb["median_ms"] / ra["median_ms"]
        if rb["q1_ms"] > ra["q3_ms"] and ratio > 1 + threshold:
            verdict = "REGRESSION"
        elif rb["q3_ms"] < ra["q1_ms"] and ratio < 1 - threshold:
            verdict = "faster"
        else:
            verdict = "within spread"
        rows.append({"id": rb["id"], "a_ms": ra["median_ms"], "b_ms": rb["median_ms"],
                     "a_iqr_ms": ra["iqr_ms"], "b_iqr_ms": rb["iqr_ms"], "ratio": ratio,
                     "verdict": verdict})
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    differences = [f"{k}: {env_a.get(k)} -> {env_b.get(k)}" for k in ENVIRONMENT_KEYS
                   if env_a.get(k) != env_b.get(k)]
    return {"rows": rows, "environment_differences": differences,
            "only_in_a": sorted(set(rows_a) - {r["id"] for r in b["results"]}),
            "regressions": [r["id"] for r in rows if r["verdict"] == "REGRESSION"]}


def format_comparison(result: Dict, names: Sequence[str]) -> str:
    headers = ["row", "A median ms", "B median ms", "B/A", "A IQR", "B IQR", "verdict"]
    body = [[r["id"], f"{r['a_ms']:.2f}", f"{r['b_ms']:.2f}", f"{r['ratio']:.3f}",
             f"{r['a_iqr_ms']:.2f}", f"{r['b_iqr_ms']:.2f}", r["verdict"]]
            for r in result["rows"]]
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [f"A = {names[0]}", f"B = {names[1]}", fmt(headers), fmt(["-" * w for w in widths])]
    out += [fmt(row) for row in body]
    if not body:
        out.append("(no rows in common)")
    for difference in result["environment_differences"]:
        out.append(f"note: environments differ, {difference}")
    count = len(result["regressions"])
    out.append(f"{count} regression(s) beyond the measured spread" if count
               else "no regression beyond the measured spread")
    return "\n".join(out)
