"""The benchmark command, fast: a tiny smoke run (MF-26M at 64 px, no compile, 50 ms per row),
its JSON and Markdown, ``compare`` on an injected regression, and argument errors."""
import copy
import json
import os
import subprocess
import sys

import pytest
import torch

import mf_kernels
from mf_kernels.benchmarking import cli, figure, timing
from mf_kernels.benchmarking.plan import BenchConfig, plan_rows

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
    rows = plan_rows(BenchConfig(), has_freeze=False)
    labels = [(r.name, r.label) for r in rows]
    assert labels[:4] == [("mobileformer_214m", "reference (eager)"),
                          ("mobileformer_214m", "reference (torch.compile)"),
                          ("mobileformer_214m", "accelerated (eager)"),
                          ("mobileformer_214m", "accelerated (torch.compile)")]
    assert labels[-2:] == [("mobilenet_v3_large_1.0x", "MobileNetV3-Large 1.0x (eager)"),
                           ("mobilenet_v3_large_1.25x", "MobileNetV3-Large 1.25x (eager)")]
    assert len(rows) == 10 and {r.size for r in rows} == {224}


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


def test_measure_honours_the_time_budget_and_minimum_repeats():
    calls = []
    result = timing.measure(lambda: calls.append(1), min_time_s=0.0, min_repeats=4, warmup=2)
    assert len(result.samples_s) == 4 and len(calls) == 6
    result = timing.measure(lambda: None, min_time_s=0.02, min_repeats=1, warmup=1)
    assert len(result.samples_s) > 10
    summary = result.summary_ms()
    assert summary["q1_ms"] <= summary["median_ms"] <= summary["q3_ms"]
