"""`mf-kernels check`: the plan, the verdicts, the table, the exit status, and that it catches a
wrong kernel (a check that cannot fail would prove nothing)."""
import io
import json
import os
import subprocess
import sys

import pytest
import torch

import mobileformer
from mf_kernels import backends
from mf_kernels.benchmarking import cli as bench_cli
from mf_kernels.checking import cases, cli, numerics, plan, sites
from mf_kernels.ops._checks import output_memory_format
from mobileformer import functional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check(*argv, out=None):
    """Runs `mf-kernels check ARGV` in-process; returns (exit status, printed text)."""
    out = out or io.StringIO()
    parser = cli.build_parser()
    args = parser.parse_args(list(argv))
    return cli.run(args, parser, out), out.getvalue()


@pytest.fixture
def broken_cpu_kernel(monkeypatch):
    """Swaps the cpu backend's dynamic_relu for one that is wrong by `state["factor"]`, or
    that returns `state["format"]` outputs."""
    state = {"factor": 1.0, "format": None}

    def wrong(x, slope, intercept=None):
        y = functional.dynamic_relu(x, slope, intercept) * state["factor"]
        return y.contiguous(memory_format=state["format"] or output_memory_format(x))

    monkeypatch.setitem(backends._loaders, ("dynamic_relu", "cpu"), lambda: wrong)
    monkeypatch.setattr(backends, "_resolved", {})
    monkeypatch.setattr(backends, "_choice_cache", {})
    return state


QUICK_DRELU = ("--quick", "--ops", "dynamic_relu", "--backends", "cpu", "--no-timing",
               "--seed", "0")


def test_passes_on_the_cpu_kernels_and_writes_every_case(tmp_path):
    if not backends.available_backends()["dynamic_relu"]["cpu"].available:
        pytest.skip("the extension is not loaded")
    path = tmp_path / "check.json"
    status, text = check("--quick", "--backends", "cpu", "--dtypes", "fp32,bf16", "--seed", "0",
                         "--json", str(path))
    assert status == 0, text
    record = json.loads(path.read_text())
    ran = [c for c in record["cases"] if c["status"] != "skip"]
    assert record["failed"] == 0 and len(ran) == record["passed"] > 0
    assert {c["op"] for c in ran} == set(sites.OPS)
    assert {c["layout"] for c in ran} == set(numerics.LAYOUTS)
    assert {c["dtype"] for c in ran} == {"fp32", "bf16"}
    assert any(c["tokens"] == sites.DETECTION_TOKENS for c in ran)
    for case in ran:
        assert case["error"] <= case["allowed"]
        assert case["forward_us"] > 0 and case["forward_backward_us"] > 0
        assert set(case["verdicts"]) == set(cases.OUTPUT_NAMES[case["op"]])
    assert "mf-kernels check passed" in text
    assert "What backend='auto' runs on cpu tensors" in text


def test_a_wrong_kernel_fails_and_is_named(broken_cpu_kernel):
    broken_cpu_kernel["factor"] = 1.001  # 0.1 % off: far beyond fp32's 2e-5, forward and grads
    status, text = check(*QUICK_DRELU)
    assert status == 1
    assert "FAIL dynamic_relu on cpu, fp32," in text
    assert "mf-kernels check FAILED" in text
    # the failure names layout, shape, tensor, error and the allowed error
    line = next(line for line in text.splitlines() if line.strip().startswith("FAIL dynamic_relu"))
    assert any(layout in line for layout in numerics.LAYOUTS)
    assert "K2" in line and "error" in line and "> allowed" in line


def test_a_kernel_within_the_rules_passes(broken_cpu_kernel):
    broken_cpu_kernel["factor"] = 1.0 + 1e-7  # below fp32's tolerance, and bf16 rounds it away
    # (NCHW layouts only: autograd gives this Python stand-in NCHW gradients, unlike a kernel)
    status, text = check(*QUICK_DRELU, "--layouts", "contiguous,sliced")
    assert status == 0, text


def test_the_layout_rule_is_checked(broken_cpu_kernel):
    broken_cpu_kernel["format"] = torch.contiguous_format  # channels_last in, NCHW out: wrong
    status, text = check(*QUICK_DRELU, "--layouts", "channels_last", "--dtypes", "fp32")
    assert status == 1
    assert "the layout rule" in text


def test_a_crashing_kernel_is_a_failure_not_a_skip(monkeypatch):
    def crash(*args):
        raise RuntimeError("illegal memory access (simulated)")

    monkeypatch.setitem(backends._loaders, ("dynamic_relu", "cpu"), lambda: crash)
    monkeypatch.setattr(backends, "_resolved", {})
    monkeypatch.setattr(backends, "_choice_cache", {})
    status, text = check(*QUICK_DRELU, "--dtypes", "fp32", "--layouts", "contiguous")
    assert status == 1
    assert "RuntimeError: illegal memory access (simulated)" in text


def test_unavailable_backends_are_skipped_with_the_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    status, text = check("--quick", "--ops", "dynamic_relu", "--backends", "triton",
                         "--no-timing")
    assert status == 0
    assert "triton: every case skipped: Triton takes CPU tensors only under TRITON_INTERPRET=1" \
        in text
    status, _ = check("--quick", "--ops", "dynamic_relu", "--backends", "triton", "--no-timing",
                      "--fail-on-skip")
    assert status == 1


def test_missing_triton_is_a_skip_with_the_reason(monkeypatch):
    monkeypatch.setitem(backends._MACHINE_REASONS, "triton",
                        ("Triton is not installed (pip install triton)",))
    status, text = check("--quick", "--ops", "m2f_attention", "--backends", "triton",
                         "--no-timing")
    assert status == 0
    assert "Triton is not installed" in text


def test_triton_runs_under_the_interpreter_at_small_sites_only():
    if not plan.triton_interpreted():  # tests/conftest.py sets it unless told otherwise
        pytest.skip("needs TRITON_INTERPRET=1 (Triton on CPU tensors)")
    status, text = check("--quick", "--ops", "dynamic_relu", "--backends", "triton",
                         "--dtypes", "fp32", "--seed", "0")
    assert status == 0, text
    row = next(line for line in text.splitlines() if line.startswith("dynamic_relu   triton"))
    assert "pass" in row and "skip" in row
    assert "takes seconds per call" in text


def test_bad_arguments_exit_2_naming_the_argument(capsys):
    for argv, message in ((["--ops", "softmax"], "--ops: expected a comma-separated list of"),
                          (["--dtypes", "fp8"], "--dtypes"),
                          (["--variants", "mf_1m"], "unknown variant"),
                          (["--training-batch", "0"], "--training-batch")):
        with pytest.raises(SystemExit) as exit_info:
            check(*argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_cuda_without_a_gpu_is_an_argument_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        check("--device", "cuda")
    assert exit_info.value.code == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_sites_are_read_off_every_variant():
    for name in mobileformer.VARIANT_NAMES:
        config = mobileformer.config.get_config(name)
        variant = sites.variant_sites(name)
        bridges = [s for s in variant if s.op != "dynamic_relu"]
        assert {s.tokens for s in bridges} == {config.num_tokens}
        assert {s.heads for s in bridges} == {mobileformer.bridges.BRIDGE_HEADS}
        assert {s.op for s in variant} == set(sites.OPS)
        # the last stage's map is 7x7 at 224 px, and its channels are the config's last width
        assert any(s.chw == (config.last_channels, 7, 7) for s in bridges)
        assert all(s.pieces == 2 for s in variant if s.op == "dynamic_relu")
    assert all(s.tokens == 100 for s in sites.detection_sites())


def test_default_plan_meets_every_layout_at_every_site():
    selection = plan.Selection("cpu", sites.OPS, ("cpu",), ("fp32", "fp16", "bf16", "fp64"),
                               numerics.LAYOUTS, tuple(mobileformer.VARIANT_NAMES))
    cases = plan.plan(selection)
    at_batch_1 = [c for c in cases if c.group == "sites"]
    every_site = set(sites.all_sites())
    for site in every_site:
        mine = [c for c in at_batch_1 if c.site == site]
        assert {c.dtype for c in mine} == set(selection.dtypes)
        assert {c.layout for c in mine} == set(numerics.LAYOUTS)
    pairs = {(c.dtype, c.layout) for c in at_batch_1}
    assert len(pairs) == 12
    training = [c for c in cases if c.group == "training"]
    assert training and {c.batch for c in training} == {plan.TRAINING_BATCH["cpu"]}
    assert {c.layout for c in training} == {"channels_last"}
    full = plan.plan(selection.__class__(**{**vars(selection), "depth": "full"}))
    assert len([c for c in full if c.group == "sites"]) == 3 * len(at_batch_1)


def test_numerics_verdicts():
    expected = torch.tensor([1.0, -2.0, 4.0])
    assert numerics.tight(expected + 1e-5, expected).ok            # 1e-5 <= 2e-5 * 4
    assert not numerics.tight(expected + 1e-4, expected).ok
    assert not numerics.tight(expected * float("nan"), expected).ok
    fp32 = torch.tensor([1.0, 1.0 / 3.0])
    low = fp32.to(torch.bfloat16)
    assert numerics.within_2x(low, low, fp32).ok
    assert not numerics.within_2x(low + 0.01, low, fp32).ok
    with pytest.raises(AssertionError, match="exceeds twice the reference"):
        numerics.assert_within_2x(low + 0.01, low, fp32, "out")


def test_subcommand_of_the_console_script():
    status = bench_cli.main(["check", "--quick", "--ops", "f2m_attention", "--backends", "cpu",
                             "--dtypes", "fp32", "--layouts", "channels_last", "--no-timing",
                             "--seed", "1"])
    assert status == 0
    help_text = subprocess.run([sys.executable, "-m", "mf_kernels", "check", "--help"],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--fail-on-skip" in help_text.stdout
