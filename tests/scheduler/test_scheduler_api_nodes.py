"""The inventory API: nodes and GPUs for fleet viewers, node actions for platform admins."""

import json

import pytest
from django.urls import reverse
from django.utils import timezone

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from scheduler.inventory import inventory_sync_all, node_register, nodes_mark_down
from scheduler.models import AllocationRequest, GpuDevice, MigSlice, Node
from tests.factories import make_token
from tests.scheduler.inventory_helpers import allocate, gpu, node_info

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet():
    return inventory_sync_all()


def _post(client, url, body=None, **extra):
    return client.post(url, data=json.dumps(body or {}), content_type="application/json", **extra)


def test_node_list_shows_state_heartbeat_and_counts(client, auditor, fleet, team, member):
    allocate(team=team, user=member, device=GpuDevice.objects.get(node__name="dgx-h100-a", index=0))
    allocate(team=team, user=member, device=MigSlice.objects.get(profile="3g.71gb"))
    client.force_login(auditor)
    body = client.get(reverse("api-node-list")).json()
    assert body["count"] == len(fleet)
    nodes = {n["name"]: n for n in body["results"]}
    a = nodes["dgx-h100-a"]
    assert a["state"] == "ready" and a["simulated"] and a["last_heartbeat"]
    assert a["gpus"] == [{"flavor": "H100", "total": 8, "used": 1, "free": 7, "unavailable": 0}]
    h200 = nodes["hgx-h200-a"]
    assert {"flavor": "3g.71gb", "total": 1, "used": 1, "free": 0, "unavailable": 0} in h200["mig_slices"]
    assert h200["gpus"][0]["total"] == 7  # the MIG GPU is counted by its slices, not whole


def test_gpu_list_filters_and_shows_holders(client, platform_admin, fleet, team, member):
    held = GpuDevice.objects.get(node__name="a100-pcie-a", index=2)
    allocation = allocate(team=team, user=member, device=held)
    client.force_login(platform_admin)
    body = client.get(reverse("api-gpu-list") + "?node=a100-pcie-a").json()
    assert body["count"] == 4
    rows = {g["uuid"]: g for g in body["results"]}
    assert rows[held.uuid]["allocation"]["team"] == "vision"
    assert rows[held.uuid]["allocation"]["request"] == allocation.request_id
    assert sum(1 for g in body["results"] if g["allocation"] is None) == 3
    mig = client.get(reverse("api-gpu-list") + "?model=H200&node=hgx-h200-a").json()["results"]
    assert [len(g["mig_slices"]) for g in mig].count(4) == 1
    assert client.get(reverse("api-gpu-list") + "?healthy=maybe").status_code == 400


def test_drain_undrain_over_the_api_with_a_token(client, platform_admin, fleet):
    _, secret = make_token(platform_admin, scopes=("read", "write"))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    response = _post(client, reverse("api-node-drain", args=["dgx-h100-b"]), {"reason": "BMC upgrade"}, **auth)
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "draining" and response.json()["drain_reason"] == "BMC upgrade"
    again = _post(client, reverse("api-node-drain", args=["dgx-h100-b"]), {}, **auth)
    assert again.status_code == 409 and again.json()["error"] == "already_draining"
    response = _post(client, reverse("api-node-undrain", args=["dgx-h100-b"]), {}, **auth)
    assert response.json()["state"] == "ready"
    event = AuditEvent.objects.get(action="node.drain")
    assert event.actor_label.startswith("token:")
    assert audit_chain_verify().ok


def test_read_token_cannot_drain(client, platform_admin, fleet):
    _, secret = make_token(platform_admin, scopes=("read",))
    response = _post(client, reverse("api-node-drain", args=["dgx-h100-b"]), {}, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 403
    assert Node.objects.get(name="dgx-h100-b").state == Node.State.READY


@pytest.mark.parametrize("body", [{"reason": 5}, {"reason": "x" * 201}, {"why": "typo"}])
def test_bad_drain_input_is_400_and_changes_nothing(client, platform_admin, fleet, body):
    client.force_login(platform_admin)
    before = AuditEvent.objects.count()
    response = _post(client, reverse("api-node-drain", args=["dgx-h100-b"]), body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid" and response.json()["fields"]
    assert Node.objects.get(name="dgx-h100-b").drain_reason == ""
    assert AuditEvent.objects.count() == before


def test_confirm_gone_requeues_the_nodes_requests_and_keeps_others(client, platform_admin, team, member):
    node_register(info=node_info("n1", [gpu("n1", 0), gpu("n1", 1)]))
    node_register(info=node_info("n2", [gpu("n2", 0)]))
    lost = allocate(team=team, user=member, device=GpuDevice.objects.get(uuid="GPU-n1-0"))
    kept = allocate(team=team, user=member, device=GpuDevice.objects.get(uuid="GPU-n2-0"))
    client.force_login(platform_admin)

    early = _post(client, reverse("api-node-confirm-gone", args=["n1"]), {})
    assert early.status_code == 409 and early.json()["error"] == "not_down"

    nodes_mark_down(now=timezone.now() + timezone.timedelta(minutes=5))
    Node.objects.filter(name="n2").update(state=Node.State.READY)
    response = _post(client, reverse("api-node-confirm-gone", args=["n1"]), {"note": "motherboard dead"})
    assert response.status_code == 200, response.content
    assert response.json()["requeued_requests"] == [lost.request_id]
    assert response.json()["node"]["gone_confirmed_at"]
    lost.refresh_from_db()
    kept.refresh_from_db()
    assert lost.released_at and "motherboard dead" in lost.release_reason
    assert kept.released_at is None
    request = AllocationRequest.objects.get(pk=lost.request_id)
    assert request.state == AllocationRequest.State.PENDING and request.placed_at is None
    assert AuditEvent.objects.filter(action="allocation.release", target_id=str(lost.request_id)).count() == 1
    assert _post(client, reverse("api-node-confirm-gone", args=["n1"]), {}).status_code == 409


def test_unknown_node_is_404(client, platform_admin, fleet):
    client.force_login(platform_admin)
    assert client.get(reverse("api-node-detail", args=["nope"])).status_code == 404
    assert _post(client, reverse("api-node-drain", args=["nope"]), {}).status_code == 404
