"""bench/launch.py runs end to end in its --tiny mode and ends with its one key=value line.
(The figures themselves are for people to read: no timed assertion here.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _docker_ready() -> bool:
    try:
        import docker

        client = docker.from_env()
        client.ping()
        client.images.get("portal-lab:ci")
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.slow
def test_bench_launch_tiny_runs_and_ends_with_its_figures():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PORTAL_TASKS")}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "launch.py"), "--tiny"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    figures = dict(pair.split("=", 1) for pair in last.split())
    assert set(figures) == {"launch_overhead_ratio", "docker_launch_overhead_ratio", "proxy_p50_ratio",
                            "proxy_p99_ratio", "ws_rtt_overhead_ms"}
    for key in ("launch_overhead_ratio", "proxy_p50_ratio", "proxy_p99_ratio"):
        assert float(figures[key]) > 0
    float(figures["ws_rtt_overhead_ms"])  # a number (it may be negative in a noisy tiny run)
    if _docker_ready():
        assert float(figures["docker_launch_overhead_ratio"]) > 0
    else:
        assert figures["docker_launch_overhead_ratio"] == "na"
