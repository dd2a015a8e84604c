"""The device script's driver (bench/gpu/): a hang is cut and reported, a crash fails only its
part, the files come back flat and few enough for the device tool, the table is printed last.
(The whole dry run of the script runs in CI: `bash bench/gpu/run.sh --dry-run`.)"""
import json
import os
import sys
import tarfile
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "gpu"))

import driver  # noqa: E402
from gpu_common import Result  # noqa: E402


def hangs(ctx):
    finished = ctx.run("hang", [sys.executable, "-c", "import time; time.sleep(60)"], 1.5)
    return Result("hang", "timeout" if finished.timed_out else "fail", finished.seconds,
                  "timed out" if finished.timed_out else "did not time out")


def crashes(ctx):
    raise RuntimeError("the part itself broke")


def works(ctx):
    finished = ctx.run("works", [sys.executable, "-c", "print('hello from a part')"], 30)
    return Result("works", "pass" if finished.returncode == 0 else "fail", finished.seconds,
                  finished.tail(1))


@pytest.fixture
def fake_stage(monkeypatch):
    monkeypatch.setattr(driver, "stages", lambda dry: {"1": [hangs, crashes, works]})


def test_a_hang_is_cut_a_crash_fails_its_part_only_and_files_come_back_flat(
        fake_stage, tmp_path, capsys):
    results = driver.run_stage("1", dry=True, out=str(tmp_path), budget_s=120)
    status = {r.name: r.status for r in results}
    assert status == {"hang": "timeout", "crashes": "fail", "works": "pass"}
    assert all(r.seconds < 30 for r in results)
    files = sorted(os.listdir(tmp_path))
    assert files == ["stage1-junit.xml", "stage1-logs.tar.gz", "stage1.json", "stage1.md"]
    assert all(os.path.isfile(tmp_path / f) for f in files)  # flat: no folders to lose
    record = json.loads((tmp_path / "stage1.json").read_text())
    assert record["failed"] == ["hang", "crashes"]
    with tarfile.open(tmp_path / "stage1-logs.tar.gz") as tar:
        names = tar.getnames()
    assert "stage1-logs/works.log" in names and "stage1-logs/hang.log" in names
    suite = ET.parse(tmp_path / "stage1-junit.xml").getroot()
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    printed = capsys.readouterr().out.rstrip().splitlines()
    assert printed[-1].startswith("=") and "written to" in printed[-2]  # the table comes last
    assert any(line.startswith("hang") and "TIMEOUT" in line for line in printed)


def test_a_spent_budget_skips_the_rest(fake_stage, tmp_path):
    results = driver.run_stage("1", dry=True, out=str(tmp_path), budget_s=5)
    assert [r.status for r in results][-1] == "skip"
    assert "budget" in results[-1].summary


def test_command_line_names_unknown_parts(capsys):
    with pytest.raises(SystemExit):
        driver.main(["--stage", "1", "--only", "chek"])
    assert "unknown part(s) ['chek']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        driver.main([])


def test_the_cxx_standard_check_covers_what_setup_compiles():
    """tools/cxx_std_check.py's translation units are setup.py's .cpp sources (read off the
    build's record when there is one)."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "cxx_std_check", os.path.join(ROOT, "tools", "cxx_std_check.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    units = tool.translation_units()
    assert "csrc/library.cpp" in units and all(u.endswith(".cpp") for u in units)
    record = os.path.join(ROOT, "mf_kernels", "_build_info.json")
    try:
        with open(record) as f:
            built = json.load(f)["sources"]
    except (OSError, ValueError, KeyError):
        pytest.skip("no build record (mf_kernels/_build_info.json) to compare with")
    if any(os.path.getmtime(os.path.join(ROOT, u)) > os.path.getmtime(record) for u in units):
        pytest.skip("the build is older than the sources (rebuild to compare)")
    assert units == sorted(s for s in built if s.endswith(".cpp"))
