"""The scheduler benchmark runs (tiny version) and ends with its key=value line. Its figures are
printed, never asserted: speed is measured by `python bench/scheduler.py`, not by tests."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["placements_per_s", "pass_ms", "decide_ms", "util_vs_bound", "fifo_util_vs_bound", "fairness_gap", "interactive_p95_wait_s",
        "fluid_fairness_gap",
        "seeds_fairness_gap_mean", "seeds_fairness_gap_max", "seeds_util_vs_bound_min", "seeds_fluid_fairness_gap_mean"]


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


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scheduler", ROOT / "bench" / "scheduler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fluid_reference_splits_by_weight_and_by_attained_share():
    bench = _bench_module()
    hour = 3600.0
    # Two teams that each want all 4 GPUs for the whole hour; team 2 weighs three times team 1.
    jobs = [bench.Job(1, 1, "H100", 4, 50, True, False, 0.0, 10 * hour, 10 * hour),
            bench.Job(2, 2, "H100", 4, 50, True, False, 0.0, 10 * hour, 10 * hour)]
    maxmin = bench.fluid_reference("maxmin", jobs, [1, 3], {"H100": 4}, hour)
    assert maxmin["fairness_gap"] == pytest.approx(0.0, abs=1e-9)  # 1 GPU and 3 GPUs all along
    assert maxmin["util_vs_bound"] == pytest.approx(1.0)
    attained = bench.fluid_reference("attained", jobs, [1, 3], {"H100": 4}, hour, half_life_s=None)
    assert attained["fairness_gap"] < 0.05  # strict turns by used/weight land close to 1:3
    # A team that asks for less than its weighted share gets all it asks; the other takes the rest.
    small = [bench.Job(1, 1, "H100", 1, 50, True, False, 0.0, 10 * hour, 10 * hour),
             bench.Job(2, 2, "H100", 4, 50, True, False, 0.0, 10 * hour, 10 * hour)]
    assert bench.fluid_reference("maxmin", small, [3, 1], {"H100": 4}, hour)["fairness_gap"] == pytest.approx(0.0, abs=1e-9)
