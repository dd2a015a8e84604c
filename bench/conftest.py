"""pytest-benchmark configuration shared by the suites in bench/.

Each benchmark sets ``benchmark.group`` to the shape it measures and ``benchmark.extra_info
["impl"]`` to what it runs ("reference", "fused", ...). At the end of the session this file
prints, per group, every implementation's median and its ratio to the reference's median,
measured in the same run. CPU suites run on MF_BENCH_THREADS threads (default 1).
"""
import os
from collections import defaultdict

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(int(os.environ.get("MF_BENCH_THREADS", "1")))


@pytest.fixture
def cpu_threads():
    return torch.get_num_threads()


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = defaultdict(dict)
    for bench in session.benchmarks:
        if bench.stats is None:  # skipped or failed
            continue
        groups[bench.group][bench.extra_info.get("impl", bench.name)] = bench.stats.median
    write = terminalreporter.write_line
    write("")
    write(f"Ratios to the reference (median time; < 1 is faster), {torch.get_num_threads()} "
          "CPU thread(s):")
    for group in sorted(groups):
        medians = groups[group]
        base = medians.get("reference")
        parts = []
        for impl, median in sorted(medians.items()):
            ratio = f" ({median / base:.3f}x)" if base and impl != "reference" else ""
            parts.append(f"{impl} {median * 1e6:.1f} us{ratio}")
        write(f"  {group}: " + ", ".join(parts))
