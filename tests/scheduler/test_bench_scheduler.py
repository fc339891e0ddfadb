"""The scheduler benchmark runs (tiny version) and ends with its key=value line. Its figures are
printed, never asserted: speed is measured by `python bench/scheduler.py`, not by tests."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["placements_per_s", "pass_ms", "decide_ms", "util_vs_bound", "fifo_util_vs_bound", "fairness_gap", "interactive_p95_wait_s",
        "seeds_fairness_gap_mean", "seeds_fairness_gap_max", "seeds_util_vs_bound_min"]


@pytest.mark.timeout(300)
def test_bench_scheduler_tiny_runs_and_reports_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scheduler.py"), "--tiny", "--seeds", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    pairs = dict(item.split("=", 1) for item in last.split())
    assert list(pairs) == KEYS
    for key in KEYS:
        float(pairs[key])  # every figure is a number
    assert "[pass]" in proc.stdout and "[trace]" in proc.stdout
    seed_lines = [line for line in proc.stdout.splitlines() if line.startswith("[trace seeds]")]
    assert [line.split(":")[0] for line in seed_lines[:2]] == ["[trace seeds] seed 1", "[trace seeds] seed 2"]
    assert "2 traces: fairness_gap mean" in seed_lines[2]
