"""/metrics: Prometheus text format, base units and labels, protected by token or platform admin."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from governance.models import AuditEvent
from scheduler import metrics, telemetry
from tests.telemetry.conftest import gpu_of

TOKEN = "scrape-secret-0123456789"


@pytest.fixture
def sampled(fleet, team, member, allocate, settings):
    settings.PORTAL_METRICS_TOKEN = TOKEN
    allocate(team, member, gpu=gpu_of(fleet["tel-a"], 0))
    for name in fleet:
        telemetry.telemetry_sample_node(node_name=name)
    return fleet


def _families(response) -> dict:
    assert response["Content-Type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(response.content.decode())}


def test_scraper_with_the_token_gets_per_gpu_gauges_in_base_units(client, sampled, team):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    families = _families(response)
    util = families["portal_gpu_utilization_ratio"].samples
    memory = {tuple(sorted(s.labels.items())): s.value for s in families["portal_gpu_memory_total_bytes"].samples}
    assert len(util) == 9  # 4 + (2 whole + 2 slices) + 1 readable of the faulty node
    assert all(0.0 <= s.value <= 1.0 for s in util)
    held = [s for s in util if s.labels["team"] == team.slug]
    assert len(held) == 1 and held[0].labels["node"] == "tel-a" and held[0].labels["gpu_index"] == "0"
    assert held[0].labels["model"] == "H100" and held[0].labels["gpu_uuid"].startswith("GPU-")
    assert held[0].labels["simulated"] == "true" and held[0].labels["mig_slice"] == ""
    assert 80 * 2**30 in memory.values()
    assert all(10 <= s.value <= 1000 for s in families["portal_gpu_power_watts"].samples)
    assert all(20 <= s.value <= 100 for s in families["portal_gpu_temperature_celsius"].samples)
    assert all(s.value >= 1e8 for s in families["portal_gpu_sm_clock_hertz"].samples)
    healthy = {s.labels["gpu_uuid"]: s.value for s in families["portal_gpu_healthy"].samples}
    assert healthy[gpu_of(sampled["tel-faulty"], 1).uuid] == 0.0
    mig = [s for s in util if s.labels["mig_slice"] != ""]
    assert sorted(s.labels["mig_slice"] for s in mig) == ["0", "1"]


def test_portal_figures_are_exported(client, sampled):
    metrics.pass_duration_record(0.25)
    metrics.ws_clients_change(+2)
    metrics.ws_clients_change(-1)
    families = _families(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"))
    assert {s.labels["state"] for s in families["portal_workspaces"].samples} >= {"running", "pending", "failed"}
    assert families["portal_allocation_requests_pending"].samples[0].value == 0
    assert families["portal_allocations_live"].samples[0].value == 1
    assert families["portal_schedule_pass_duration_seconds"].samples[0].value == 0.25
    assert families["portal_websocket_clients"].samples[0].value >= 1
    assert "portal_workspace_launches" in families and "portal_workspace_failures" in families
    states = {(s.labels["node"], s.labels["state"]): s.value for s in families["portal_node_state"].samples}
    assert states[("tel-a", "ready")] == 1.0 and states[("tel-a", "down")] == 0.0


def test_wrong_or_missing_token_is_401_and_changes_nothing(client, sampled):
    before = AuditEvent.objects.count()
    for header in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": TOKEN}):
        response = client.get("/metrics", **header)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert AuditEvent.objects.count() == before


def test_no_token_configured_means_no_token_works(client, fleet, settings):
    settings.PORTAL_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_platform_admin_session_works_and_others_are_refused_and_audited(client, sampled, platform_admin, auditor):
    client.force_login(platform_admin)
    assert client.get("/metrics").status_code == 200
    client.force_login(auditor)
    assert client.get("/metrics").status_code == 403
    assert AuditEvent.objects.filter(action="telemetry.metrics", outcome="denied", actor=auditor).count() == 1


def test_scheduling_pass_duration_comes_from_the_pass_task(client, sampled):
    from scheduler.tasks import schedule_pass

    summary = schedule_pass.apply().get()
    families = _families(client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"))
    assert not summary["skipped"]
    assert families["portal_schedule_pass_duration_seconds"].samples[0].value == pytest.approx(summary["total_ms"] / 1000, abs=1e-3)
    assert families["portal_schedule_passes"].samples[0].value >= 1
