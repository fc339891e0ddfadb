"""The node agent for real: a `celery -A portal worker -Q node.<name>` subprocess with
PORTAL_NODE_NAME registers its node from the GPU source when ready, beats, consumes its own
queue, and once stopped goes down. Needs Redis (broker) and PostgreSQL (a database shared with
another process); skipped without them locally, failing in CI (PORTAL_REQUIRE_SERVICES=1)."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection
from django.utils import timezone

from governance.models import AuditEvent
from scheduler.inventory import down_after, nodes_mark_down
from scheduler.models import GpuDevice, MigSlice, Node
from tests.conftest import service_missing

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    s = connection.settings_dict
    auth = quote(s["USER"] or "")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"])
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _wait_for(predicate, *, deadline_s: float, what: str, log: Path):
    """Poll until `predicate()` is truthy; a generous deadline only turns a hang into a clear failure."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen; worker log:\n{log.read_text()[-4000:]}")


@pytest.fixture
def node_agent(redis_url, tmp_path):
    if connection.vendor != "postgresql":
        service_missing("PostgreSQL (DATABASE_URL) for a database shared with the worker process")
    name = f"agent-{uuid.uuid4().hex[:8]}"
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "nodes:\n"
        f"  - name: {name}\n"
        "    labels: {zone: test}\n"
        "    gpus: {model: H100, count: 2, memory_gb: 80, mig: {1: [3g.40gb, 1g.10gb]}}\n"
    )
    log = tmp_path / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY", "test-only"),
        "PORTAL_TASKS": "eager",  # passes the agent triggers run inline in the worker
        "PORTAL_NODE_NAME": name,
        "PORTAL_GPU_SOURCE": f"simulated:{fleet}",
        "PORTAL_HEARTBEAT_SECONDS": "1",
    }
    celery = Path(sys.executable).with_name("celery")
    process = subprocess.Popen(
        [str(celery), "-A", "portal", "worker", "-Q", f"node.{name}", "-n", f"node-{name}@%h", "--pool=solo",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "info"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield name, log, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_worker_registers_its_node_beats_and_consumes_its_queue(node_agent, redis_url):
    name, log, process = node_agent

    node = _wait_for(lambda: Node.objects.filter(name=name).first(), deadline_s=60, what="registration", log=log)
    assert node.state == Node.State.READY and node.simulated and node.labels == {"zone": "test"}
    assert GpuDevice.objects.filter(node=node).count() == 2
    assert sorted(MigSlice.objects.filter(gpu__node=node).values_list("profile", flat=True)) == ["1g.10gb", "3g.40gb"]
    assert AuditEvent.objects.filter(action="node.register", target_id=str(node.pk)).count() == 1

    first = node.last_heartbeat
    _wait_for(lambda: Node.objects.get(pk=node.pk).last_heartbeat > first, deadline_s=30, what="a heartbeat", log=log)

    # Work sent to the node's queue reaches this worker: a heartbeat task, through the real broker.
    from celery import Celery

    sender = Celery(broker=redis_url)
    before = Node.objects.get(pk=node.pk).last_heartbeat
    sent = sender.send_task("scheduler.tasks.node_heartbeat", args=[name], queue=f"node.{name}")
    _wait_for(lambda: f"[{sent.id}] succeeded" in log.read_text(), deadline_s=30, what="the queued task", log=log)
    assert Node.objects.get(pk=node.pk).last_heartbeat > before
    sender.close()

    # Stopped, the node falls silent and goes down after 3 intervals.
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)
    last = Node.objects.get(pk=node.pk).last_heartbeat
    assert nodes_mark_down(now=last + down_after() / 2) == []
    assert name in nodes_mark_down(now=last + down_after() + timezone.timedelta(seconds=1))
    assert Node.objects.get(pk=node.pk).state == Node.State.DOWN
