"""Allocation requests in the API: fleet viewers see every request, team people their teams'
requests, each with its ranked reasons, queue positions and estimated start."""

import pytest
from django.urls import reverse
from django.utils import timezone

from scheduler.inventory import node_register
from scheduler.models import AllocationRequest, GpuDevice
from tests.scheduler.inventory_helpers import allocate, gpu, node_info

pytestmark = pytest.mark.django_db

REASONS = [{"code": "waiting_for_quota", "message": "The team's H100 grant (4) is in use."},
           {"code": "queued_behind", "message": "1 request of the team is ahead."}]


@pytest.fixture
def requests_of_two_teams(team, other_team, member, outsider):
    mine = AllocationRequest.objects.create(team=team, user=member, flavor="H100", count=2, queue_position_global=2,
                                            queue_position_team=1, pending_reasons=REASONS,
                                            estimated_start=timezone.now() + timezone.timedelta(minutes=30))
    theirs = AllocationRequest.objects.create(team=other_team, user=outsider, flavor="H100", count=1, queue_position_global=1,
                                              queue_position_team=1)
    return mine, theirs


def test_team_people_see_only_their_teams_requests_with_reasons(client, viewer, requests_of_two_teams):
    mine, theirs = requests_of_two_teams
    client.force_login(viewer)
    body = client.get(reverse("api-allocation-request-list")).json()
    assert [r["id"] for r in body["results"]] == [mine.pk]
    row = body["results"][0]
    assert row["pending_reasons"] == REASONS
    assert row["queue_position_team"] == 1 and row["queue_position_global"] == 2 and row["estimated_start"]
    assert row["team"] == "vision" and row["priority_label"].startswith("interactive")
    assert client.get(reverse("api-allocation-request-detail", args=[theirs.pk])).status_code == 404


def test_fleet_viewers_see_the_whole_queue_in_order(client, approver, requests_of_two_teams):
    mine, theirs = requests_of_two_teams
    client.force_login(approver)
    body = client.get(reverse("api-allocation-request-list") + "?state=pending").json()
    assert [r["id"] for r in body["results"]] == [theirs.pk, mine.pk]
    assert client.get(reverse("api-allocation-request-list") + "?team=speech").json()["count"] == 1
    assert client.get(reverse("api-allocation-request-list") + "?state=bogus").status_code == 400


def test_request_detail_lists_its_devices(client, member, team):
    node_register(info=node_info("n1", [gpu("n1", 0)]))
    allocation = allocate(team=team, user=member, device=GpuDevice.objects.get())
    client.force_login(member)
    body = client.get(reverse("api-allocation-request-detail", args=[allocation.request_id])).json()
    assert body["state"] == "placed"
    assert body["allocations"] == [{
        "node": "n1", "gpu": "GPU-n1-0", "mig_slice": None, "borrowed": False, "preemptible": False,
        "started_at": body["allocations"][0]["started_at"], "planned_end": body["allocations"][0]["planned_end"],
        "preempt_at": None, "released_at": None, "release_reason": "",
    }]
