"""The benchmark command, fast: a tiny smoke run (MF-26M at 64 px, no compile, 50 ms per row,
with the ONNX Runtime and OpenVINO rows when installed), its JSON and Markdown, ``compare`` on
an injected regression, the runtimes skipped without their packages, and argument errors."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import mf_kernels
from mf_kernels.benchmarking import cli, figure, isa, runtimes, timing
from mf_kernels.benchmarking.plan import RUNTIMES, BenchConfig, plan_rows

SMOKE = ["bench", "--variants", "mobileformer_26m", "--sizes", "64", "--no-compile",
         "--threads", "1", "--min-time", "0.05", "--min-repeats", "3", "--warmup", "1",
         "--no-progress"]
ROW_KEYS = {"id", "model", "size", "kind", "compiled", "label", "median_ms", "q1_ms", "q3_ms",
            "iqr_ms", "min_ms", "max_ms", "repeats", "first_call_s", "params", "madds",
            "images_per_s", "ratio_to_eager_reference"}


def _only_file(directory, suffix):
    found = [f for f in os.listdir(directory) if f.endswith(suffix)]
    assert len(found) == 1, found
    return os.path.join(directory, found[0])


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One in-process smoke run shared by the tests below: (exit code, out dir, record)."""
    out = tmp_path_factory.mktemp("bench")
    code = cli.main(SMOKE + ["--out", str(out)])
    with open(_only_file(out, ".json")) as f:
        record = json.load(f)
    return code, out, record


def _healthy(record):
    return not record["errors"] and record["parity"]["ok"]


def test_smoke_run_writes_json_and_markdown(smoke_run):
    code, out, record = smoke_run
    # exit status 1 exactly when a row failed or the accelerated logits left the reference:
    # that verdict belongs to the kernels' own tests, the command only has to report it
    assert code == (0 if _healthy(record) else 1)
    assert record["schema"] == "mf_kernels.bench/1"
    for key in ("created", "command", "config", "environment", "timing_method", "results",
                "parity", "errors", "wall_s"):
        assert key in record, key
    env = record["environment"]
    for key in ("cpu", "threads", "python", "torch", "mf_kernels", "git", "host"):
        assert key in env, key
    assert env["threads"] == 1 and "commit" in env["git"]
    assert record["parity"]["gated"] and record["parity"]["tolerance"] == 1e-4
    expected = ["mobileformer_26m/64/reference/eager", "mobileformer_26m/64/accelerated/eager"]
    if hasattr(mf_kernels, "freeze"):
        expected.append("mobileformer_26m/64/frozen/eager")
    installed = [r for r in RUNTIMES if runtimes.unavailable_reason(r) is None]
    expected += [f"mobileformer_26m/64/{runtime}/exported" for runtime in installed]
    assert [s["runtime"] for s in record["skipped"]] == [r for r in RUNTIMES
                                                         if r not in installed]
    expected += ["mobilenet_v3_large_1.0x/64/mobilenetv3/eager",
                 "mobilenet_v3_large_1.25x/64/mobilenetv3/eager"]
    assert [r["id"] for r in record["results"]] == expected
    assert record["errors"] == [r["id"] for r in record["results"] if "error" in r]
    for row in record["results"]:
        if "error" in row:
            continue
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["repeats"] >= 3 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    assert "error" not in record["results"][0]  # the reference itself always runs
    accelerated = record["results"][1]
    if "error" not in accelerated:
        assert accelerated["parity_ok"] == (accelerated["rel_err"] <= 1e-4)
    with open(_only_file(out, ".md")) as f:
        markdown = f.read()
    assert "| model | size | row | median ms" in markdown and "## Environment" in markdown
    assert "reference (eager)" in markdown and "MobileNetV3-Large 1.25x" in markdown


def test_runtime_rows_are_timed_and_parity_checked(smoke_run):
    for module in ("onnxruntime", "openvino", "onnx", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} not installed (the compare extra)")
    _, out, record = smoke_run
    rows = {r["kind"]: r for r in record["results"] if r["model"] == "mobileformer_26m"}
    ort, ov = rows["onnxruntime"], rows["openvino"]
    for row in (ort, ov):
        assert "error" not in row, row.get("error")
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["repeats"] >= 3 and row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        # checked against the eager reference's logits like the accelerated rows, and gated
        assert row["rel_err"] is not None and row["parity_ok"] == (row["rel_err"] <= 1e-4)
        assert row["id"] in [c["id"] for c in record["parity"]["checks"]]
        assert row["params"] == rows["reference"]["params"]
    # one export serves both runtimes: timed once, on the first row that needed it
    assert ort["onnx"]["exporter"].startswith("torch.onnx.export") and ort["export_s"] > 0
    assert "export_s" not in ov and ov["onnx"] == ort["onnx"]
    assert ort["onnx"]["input_shape"] == [1, 3, 64, 64]
    assert ort["runtime"]["execution_providers"] == ["CPUExecutionProvider"]
    assert ort["runtime"]["intra_op_num_threads"] == 1
    assert ov["runtime"]["inference_num_threads"] == "1"
    assert ov["runtime"]["inference_precision_hint"] == "f32"
    # ratios to ORT beside the ratios to the reference, on every timed row
    assert ort["ratio_to_ort"] == pytest.approx(1.0)
    reference = rows["reference"]
    assert reference["ratio_to_ort"] == pytest.approx(reference["median_ms"] / ort["median_ms"])
    env = record["environment"]
    assert env["runtimes"]["onnxruntime"] and env["runtimes"]["openvino"]
    with open(_only_file(out, ".md")) as f:
        markdown = f.read()
    assert "| vs ORT |" in markdown and "ONNX Runtime (exported reference)" in markdown
    assert "CPUExecutionProvider" in markdown and "OpenVINO (exported reference)" in markdown


def test_runtimes_are_skipped_with_a_reason_without_their_packages(monkeypatch, tmp_path,
                                                                   capsys):
    # None in sys.modules makes `import onnxruntime` raise ImportError: a machine without them
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    code = cli.main(SMOKE + ["--min-time", "0", "--min-repeats", "1", "--out", str(tmp_path)])
    record = json.loads(open(_only_file(tmp_path, ".json")).read())
    assert code == (0 if _healthy(record) else 1)  # skipped rows are no failure
    assert not {r["kind"] for r in record["results"]} & set(RUNTIMES)
    assert [(s["runtime"], s["reason"]) for s in record["skipped"]] == [
        ("onnxruntime", "onnxruntime not installed (pip install -e '.[compare]')"),
        ("openvino", "openvino not installed (pip install -e '.[compare]')")]
    printed = capsys.readouterr().out
    assert "* ONNX Runtime rows skipped: onnxruntime not installed" in printed
    assert "* OpenVINO rows skipped: openvino not installed" in printed
    assert "vs ORT" not in printed


def test_runtimes_are_skipped_outside_fp32_cpu_inference():
    assert runtimes.unavailable_reason("onnxruntime", mode="train") == (
        "inference only (--mode train)")
    assert "--device cuda" in runtimes.unavailable_reason("openvino", device="cuda")
    assert "fp32 only" in runtimes.unavailable_reason("onnxruntime", dtype="bf16")
    with pytest.raises(ValueError, match="runtime: expected"):
        runtimes.unavailable_reason("tensorrt")


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_sessions_take_a_batch_and_the_thread_count(runtime, tmp_path):
    for module in (runtime, "onnx", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} not installed (the compare extra)")
    torch.manual_seed(0)
    model, x = _TinyNet().eval(), torch.randn(3, 3, 16, 16)
    exports = runtimes.OnnxExports()
    try:
        path, info, exported = exports.get(("tiny", 3, 16), lambda: (model, x))
        assert exported and info["input_shape"] == [3, 3, 16, 16] and os.path.exists(path)
        weights_bytes = 4 * sum(p.numel() for p in model.parameters())
        assert info["file_mb"] * 2**20 >= weights_bytes  # graph and weights, wherever stored
        assert exports.get(("tiny", 3, 16), lambda: pytest.fail("exported twice"))[2] is False
        session = runtimes.make_session(runtime, path, threads=2)
        with torch.no_grad():
            expected = model(x)
        out = torch.from_numpy(session(x.numpy()))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        threads = (session.info["intra_op_num_threads"] if runtime == "onnxruntime"
                   else int(session.info["inference_num_threads"]))
        assert threads == 2
    finally:
        exports.close()
    assert not os.path.exists(path)  # the run's exports live in a temporary directory


def test_a_failed_export_is_raised_again_not_retried():
    exports, calls = runtimes.OnnxExports(), []

    def broken():
        calls.append(1)
        raise ValueError("cannot export this")
    try:
        with pytest.raises(ValueError, match="cannot export this"):
            exports.get(("m", 1, 64), broken)
        with pytest.raises(RuntimeError, match="earlier row: ValueError: cannot export this"):
            exports.get(("m", 1, 64), broken)
    finally:
        exports.close()
    assert calls == [1]


def test_cpu_isa_comes_from_the_extension_once_it_has_the_op(monkeypatch):
    report = isa.kernels_isa()
    assert report["kernels"] in ("avx512", "avx2", "baseline", "none")
    assert report["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")  # the C++ side honours it too
    assert isa._estimate_from_cpu() == "baseline"
    if not mf_kernels._extension.LOADED:
        return
    monkeypatch.setattr(torch.ops.mf_kernels, "cpu_isa", lambda: "avx512", raising=False)
    report = isa.kernels_isa()
    assert report["kernels"] == "avx512" and report["source"] == "torch.ops.mf_kernels.cpu_isa()"


def test_smoke_run_leaves_cuda_alone(smoke_run):
    assert not torch.cuda.is_initialized()


def test_compare_prints_ratios_and_flags_an_injected_regression(smoke_run, tmp_path, capsys):
    _, _, record = smoke_run
    slower = copy.deepcopy(record)
    row = slower["results"][0]
    for key in ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms"):
        row[key] *= 3.0
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(record))
    b.write_text(json.dumps(slower))
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(b)]) == 1
    printed = capsys.readouterr().out
    flagged = [line for line in printed.splitlines() if "REGRESSION" in line]
    assert len(flagged) == 1 and row["id"] in flagged[0] and "3.000" in flagged[0]
    assert "1 regression(s)" in printed

    assert cli.main(["compare", str(a), str(a)]) == 0
    assert "no regression" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--variants", "mobileformer_999m"], "unknown variant"),
    (["--sizes", "100"], "not a multiple of 32"),
    (["--sizes", "224,abc"], "not a multiple of 32"),
    (["--threads", "0"], "--threads"),
    (["--mode", "train", "--batch", "1"], "batch of at least 2"),
    (["--runtimes", "tensorrt"], "--runtimes: expected onnxruntime, openvino or none"),
    (["--runtimes", "none", "openvino"], "'none' cannot be combined"),
])
def test_argument_errors_exit_with_a_clear_message(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_a_gpu_is_an_argument_error(monkeypatch, capsys):
    # checked at run time, not at import: simulate a machine without a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "mf_kernels", "bench", "--sizes", "65"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "multiple of 32" in done.stderr


def test_train_mode_smoke(tmp_path):
    code = cli.main(["bench", "--variants", "26m", "--sizes", "64", "--no-compile",
                     "--mode", "train", "--batch", "2", "--min-time", "0", "--min-repeats",
                     "2", "--warmup", "1", "--no-progress", "--out", str(tmp_path)])
    record = json.loads(open(_only_file(tmp_path, ".json")).read())
    assert code == (0 if _healthy(record) else 1)
    assert record["config"]["mode"] == "train" and record["parity"]["gated"] is False
    assert "frozen" not in {r["kind"] for r in record["results"]}  # inference-only
    timed = [r for r in record["results"] if "error" not in r]
    assert timed[0]["kind"] == "reference"
    assert all(r["images_per_s"] > 0 for r in timed)
    # On Linux the CPU peak is the resident-set high-water mark above the row's start.
    assert all(r["peak_memory_mb"] is not None and r["peak_memory_mb"] >= 0 for r in timed)


def test_default_plan_is_the_issues_table():
    config = BenchConfig()
    rows = plan_rows(config, has_freeze=True, runtimes=config.runtimes)
    labels = [(r.name, r.label) for r in rows]
    assert labels[:7] == [("mobileformer_214m", "reference (eager)"),
                          ("mobileformer_214m", "reference (torch.compile)"),
                          ("mobileformer_214m", "accelerated (eager)"),
                          ("mobileformer_214m", "accelerated (torch.compile)"),
                          ("mobileformer_214m", "accelerated + frozen (eager)"),
                          ("mobileformer_214m", "ONNX Runtime (exported reference)"),
                          ("mobileformer_214m", "OpenVINO (exported reference)")]
    assert labels[-2:] == [("mobilenet_v3_large_1.0x", "MobileNetV3-Large 1.0x (eager)"),
                           ("mobilenet_v3_large_1.25x", "MobileNetV3-Large 1.25x (eager)")]
    assert len(rows) == 16 and {r.size for r in rows} == {224}
    ort = rows[5]
    assert ort.id == "mobileformer_214m/224/onnxruntime/exported" and ort.ort_id == ort.id
    assert ort.parity_reference_id == "mobileformer_214m/224/reference/eager"
    assert len(plan_rows(config, has_freeze=True)) == 12  # no runtime rows unless asked


def test_figure5_plan_has_mobilenet_under_onnx_runtime():
    config = BenchConfig(variants=("mobileformer_214m",), sizes=(224, 320), compile=False,
                         figure5=True, mobilenet_widths=(1.0,))
    rows = plan_rows(config, has_freeze=True, runtimes=("onnxruntime",))
    ids = [r.id for r in rows if r.size == 224]
    assert ids == ["mobileformer_214m/224/reference/eager",
                   "mobileformer_214m/224/accelerated/eager",
                   "mobileformer_214m/224/frozen/eager",
                   "mobileformer_214m/224/onnxruntime/exported",
                   "mobilenet_v3_large_1.0x/224/mobilenetv3/eager",
                   "mobilenet_v3_large_1.0x/224/onnxruntime/exported"]
    # MobileNetV3 under ORT must reproduce torchvision's own logits
    assert rows[5].parity_reference_id == "mobilenet_v3_large_1.0x/224/mobilenetv3/eager"


def test_crossover_is_interpolated_linearly():
    sizes = [224, 320, 448]
    size, direction = figure.find_crossover(sizes, [10, 30, 50], [20, 30.5, 40])
    assert size == pytest.approx(320 + 128 * 0.5 / 10.5) and direction == "slower"
    assert figure.find_crossover(sizes, [10, 20, 30], [20, 30, 40]) is None
    assert figure.find_crossover(sizes, [30, 20, 10], [20, 20, 20]) == (320.0, "faster")


def test_figure_png_and_crossover_note(tmp_path):
    record = {"config": {"variants": ["mobileformer_214m"], "device": "cpu", "batch": 1,
                         "dtype": "fp32", "threads": 1},
              "environment": {"cpu": "test CPU"}, "results": []}
    for size, ours, theirs in [(224, 30.0, 20.0), (320, 40.0, 42.0), (448, 60.0, 80.0)]:
        record["results"] += [
            {"model": "mobileformer_214m", "kind": "reference", "compiled": False,
             "size": size, "median_ms": ours * 1.5},
            {"model": "mobileformer_214m", "kind": "accelerated", "compiled": False,
             "size": size, "median_ms": ours},
            {"model": "mobilenet_v3_large_1.0x", "kind": "mobilenetv3", "compiled": False,
             "size": size, "median_ms": theirs}]
    block = figure.make_figure5(record, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 10_000
    assert 224 < block["crossover_size"] < 320 and "crossover at" in block["crossover_note"]
    assert block["against_ort"] == []  # no ONNX Runtime curve in this record


def test_figure_crossovers_against_mobilenet_under_onnx_runtime(tmp_path):
    record = {"config": {"variants": ["mobileformer_214m"], "device": "cpu", "batch": 1,
                         "dtype": "fp32", "threads": 1},
              "environment": {"cpu": "test CPU"}, "results": []}
    # MobileNetV3 under ORT: 20, 40, 60 ms; accelerated crosses it at 288, frozen at 384
    for size, accelerated, frozen, theirs in [(224, 30.0, 25.0, 20.0), (320, 35.0, 45.0, 40.0),
                                              (448, 50.0, 55.0, 60.0)]:
        record["results"] += [
            {"model": "mobileformer_214m", "kind": "accelerated", "compiled": False,
             "size": size, "median_ms": accelerated},
            {"model": "mobileformer_214m", "kind": "frozen", "compiled": False,
             "size": size, "median_ms": frozen},
            {"model": "mobileformer_214m", "kind": "onnxruntime", "compiled": False,
             "size": size, "median_ms": theirs * 0.9},
            {"model": "mobilenet_v3_large_1.0x", "kind": "mobilenetv3", "compiled": False,
             "size": size, "median_ms": theirs * 2},
            {"model": "mobilenet_v3_large_1.0x", "kind": "onnxruntime", "compiled": False,
             "size": size, "median_ms": theirs}]
    block = figure.make_figure5(record, str(tmp_path / "f.png"))
    assert "Mobile-Former reference (ONNX Runtime)" in block["series"]
    accelerated, frozen = block["against_ort"]
    assert accelerated["crossover_size"] == pytest.approx(320 - 96 * 5 / 15)
    assert frozen["crossover_size"] == pytest.approx(320 + 128 * 5 / 10)
    assert accelerated["crossover_direction"] == frozen["crossover_direction"] == "faster"
    assert "accelerated + frozen MF-214M is faster than MobileNetV3-Large 1.0x under ONNX " \
           "Runtime" in frozen["crossover_note"]


def test_measure_honours_the_time_budget_and_minimum_repeats():
    calls = []
    result = timing.measure(lambda: calls.append(1), min_time_s=0.0, min_repeats=4, warmup=2)
    assert len(result.samples_s) == 4 and len(calls) == 6
    result = timing.measure(lambda: None, min_time_s=0.02, min_repeats=1, warmup=1)
    assert len(result.samples_s) > 10
    summary = result.summary_ms()
    assert summary["q1_ms"] <= summary["median_ms"] <= summary["q3_ms"]
