"""bench/telemetry.py --tiny runs end to end (ingest, then fan-out through uvicorn and Redis) and
ends with one key=value line. Figures are not asserted (speed is the bench's business)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_tiny_mode_runs_and_reports(redis_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    # its own SQLite file and Redis: never the test database
    env.update({"REDIS_URL": redis_url, "PORTAL_LOCAL_DIR": str(tmp_path), "SECRET_KEY": "bench-test"})
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "telemetry.py"), "--tiny"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    figures = dict(pair.split("=", 1) for pair in last.split())
    assert figures["gpus"] == "64" and figures["database"] == "sqlite"
    assert int(figures["ingest_samples_per_s"]) > 0
    assert int(figures["fanout_received"]) == int(figures["fanout_expected"]) == 20 * 5
    assert float(figures["fanout_p99_ms"]) > 0 and float(figures["fanout_vs_raw_redis_p99_ratio"]) > 0
