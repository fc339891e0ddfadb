"""The workspace REST API: create, list (query count pinned), detail with the scheduler's pending
info, actions, and bad input answered with a JSON 4xx that changes nothing."""

import datetime

import pytest

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from scheduler.models import AllocationRequest
from tests.factories import make_token
from tests.workspaces.lifecycle_support import fleet, h100_quota, lab_image  # noqa: F401
from workspaces import services
from workspaces.models import Workspace

pytestmark = pytest.mark.django_db
URL = "/api/v1/workspaces/"


def _bearer(user, scopes=("read", "write")):
    return {"HTTP_AUTHORIZATION": f"Bearer {make_token(user, scopes=scopes)[1]}"}


def _counts():
    return Workspace.objects.count(), AllocationRequest.objects.count(), AuditEvent.objects.count()


def test_create_returns_the_pending_workspace(client, member, team, fleet, h100_quota, lab_image):
    response = client.post(URL, {"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": 2, "duration_hours": 1.5,
                                 "sharing": "team", "name": "api-ws"}, content_type="application/json", **_bearer(member))
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["state"], body["team"], body["owner"], body["gpu_count"], body["flavor"], body["sharing"]) == \
        ("pending", "vision", member.username, 2, "H100", "team")
    assert body["lab_url"] is None and "lab_token" not in body and "pending_reasons" in body
    assert audit_chain_verify().ok


def test_create_mig_slices(client, member, team, fleet, lab_image):
    response = client.post(URL, {"team": "vision", "image": "lab", "flavor": "1g.18gb", "mig": True},
                           content_type="application/json", **_bearer(member))
    assert response.status_code == 201, response.content
    assert response.json()["mig"] is True


@pytest.mark.parametrize("payload, field", [
    ({"team": "vision", "image": "lab", "flavor": "H100", "gpus": 2}, "gpus"),                 # unknown key
    ({"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": "2"}, "gpu_count"),     # wrong type
    ({"team": "vision", "image": "lab", "flavor": "H100", "gpu_count": 9}, "gpu_count"),       # policy
    ({"team": "vision", "image": "nope", "flavor": "H100"}, "image"),                          # not in catalogue
    ({"team": "vision", "image": "lab", "flavor": "Z9000"}, "flavor"),                         # not in fleet
    ({"team": "vision", "image": "lab", "flavor": "1g.18gb", "mig": True, "gpu_count": 3}, "gpu_count"),  # never fits
    ({"team": "vision", "image": "lab", "flavor": "H100", "duration_hours": 999}, "duration_hours"),
])
def test_bad_input_is_a_json_400_and_changes_nothing(client, member, team, fleet, h100_quota, lab_image, payload, field):
    before = _counts()
    response = client.post(URL, payload, content_type="application/json", **_bearer(member))
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] and body["detail"] and field in body.get("fields", {})
    assert _counts() == before


def test_read_only_token_cannot_launch(client, member, team, fleet, h100_quota, lab_image):
    before = _counts()
    response = client.post(URL, {"team": "vision", "image": "lab", "flavor": "H100"}, content_type="application/json",
                           **_bearer(member, scopes=("read",)))
    assert response.status_code == 403
    assert _counts()[:2] == before[:2]


def test_list_query_count_is_pinned(client, member, team, fleet, lab_image, django_assert_max_num_queries):
    team.policy.max_workspaces_per_user = 50
    team.policy.save()

    def make(n):
        for i in range(n):
            services.workspace_create(user=member, team=team, image=lab_image, flavor="H100", name=f"w{i}",
                                      duration=datetime.timedelta(hours=1))

    make(2)
    client.force_login(member)
    client.get(URL)
    with django_assert_max_num_queries(6) as few:
        client.get(URL)
    make(10)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = client.get(URL)
    assert response.json()["count"] == 12


def test_detail_carries_pending_reasons_queue_position_and_estimate(client, member, team, fleet, lab_image):
    workspace = services.workspace_create(user=member, team=team, image=lab_image, flavor="H100",
                                          duration=datetime.timedelta(hours=1))
    eta = datetime.datetime(2030, 1, 1, 14, 20, tzinfo=datetime.UTC)
    AllocationRequest.objects.filter(pk=workspace.allocation_request_id).update(
        pending_reasons=[{"code": "waiting_for_quota", "message": "No H100 quota left"}],
        queue_position_team=2, queue_position_global=7, estimated_start=eta)
    client.force_login(member)
    body = client.get(f"{URL}{workspace.pk}/").json()
    assert body["pending_reasons"][0]["code"] == "waiting_for_quota"
    assert (body["queue_position_team"], body["queue_position_global"]) == (2, 7)
    assert body["estimated_start"].startswith("2030-01-01T14:20")


def test_actions_cancel_extend_restart_and_state_conflicts(client, member, team, fleet, h100_quota, lab_image):
    workspace = services.workspace_create(user=member, team=team, image=lab_image, flavor="H100",
                                          duration=datetime.timedelta(hours=1))
    auth = _bearer(member)
    assert client.post(f"{URL}{workspace.pk}/extend/", {"hours": 1}, content_type="application/json", **auth).status_code == 200
    events = AuditEvent.objects.count()
    stop = client.post(f"{URL}{workspace.pk}/stop/", {}, content_type="application/json", **auth)
    assert stop.status_code == 409 and stop.json()["error"] == "bad_state"
    assert AuditEvent.objects.count() == events
    cancel = client.post(f"{URL}{workspace.pk}/cancel/", {"reason": "wrong image"}, content_type="application/json", **auth)
    assert cancel.status_code == 200 and cancel.json()["state"] == "stopped"
    assert cancel.json()["stop_reason"] == "cancelled: wrong image"
    restart = client.post(f"{URL}{workspace.pk}/restart/", {}, content_type="application/json", **auth)
    assert restart.status_code == 200 and restart.json()["state"] == "pending"
    bad = client.post(f"{URL}{workspace.pk}/extend/", {"hours": "2"}, content_type="application/json", **auth)
    assert bad.status_code == 400 and "hours" in bad.json()["fields"]
