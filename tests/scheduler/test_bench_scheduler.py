"""The scheduler benchmark runs (tiny version) and ends with its key=value line. Its figures are
printed, never asserted: speed is measured by `python bench/scheduler.py`, not by tests."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["placements_per_s", "pass_ms", "decide_ms", "util_vs_bound", "fifo_util_vs_bound", "fairness_gap", "interactive_p95_wait_s"]


@pytest.mark.timeout(300)
def test_bench_scheduler_tiny_runs_and_reports_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "scheduler.py"), "--tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    pairs = dict(item.split("=", 1) for item in last.split())
    assert list(pairs) == KEYS
    for key in KEYS:
        float(pairs[key])  # every figure is a number
    assert "[pass]" in proc.stdout and "[trace]" in proc.stdout
