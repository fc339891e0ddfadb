"""The Fleet page: nodes with states and GPU counts, the pending queue with its reasons, live
allocations by team, a simulated label; node actions swap one row over htmx."""

import pytest
from django.urls import reverse

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from scheduler.inventory import inventory_sync_all, nodes_mark_down
from scheduler.models import AllocationRequest, GpuDevice, Node
from tests.scheduler.inventory_helpers import allocate

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def fleet():
    return inventory_sync_all()


def test_fleet_page_shows_nodes_gpus_mig_and_the_simulated_label(client, platform_admin, fleet, team, member):
    allocate(team=team, user=member, device=GpuDevice.objects.filter(model="H100").first())
    client.force_login(platform_admin)
    response = client.get(reverse("fleet"))
    assert response.status_code == 200
    html = response.content.decode()
    for node in fleet:
        assert f'data-node="{node.name}"' in html
    assert "simulated" in html
    assert "3g.71gb" in html  # the MIG slices of the H200 node
    assert "Vision" in html  # live allocations by team
    assert html.count("Drain</button>") == len(fleet)


def test_pending_queue_lists_reasons_positions_and_estimated_start(client, auditor, fleet, team, member):
    from django.utils import timezone

    AllocationRequest.objects.create(
        team=team, user=member, flavor="H100", count=8, queue_position_global=1, queue_position_team=1,
        estimated_start=timezone.now() + timezone.timedelta(hours=2),
        pending_reasons=[{"code": "no_capacity_together", "message": "No node has 8 free H100 together."},
                         {"code": "queued_behind", "message": "2 earlier requests first."}])
    client.force_login(auditor)
    html = client.get(reverse("fleet")).content.decode()
    assert "No node has 8 free H100 together." in html
    assert "2 earlier requests first." in html
    assert 'data-code="no_capacity_together"' in html
    assert "Drain</button>" not in html  # auditors see, never act

    fragment = client.get(reverse("fleet") + "?part=queue", **HTMX)
    assert fragment.status_code == 200
    body = fragment.content.decode()
    assert body.lstrip().startswith('<section id="fleet-queue"')
    assert "No node has 8 free H100 together." in body and "<html" not in body


def test_nodes_fragment_refreshes_states_and_heartbeats(client, approver, fleet):
    from django.utils import timezone

    nodes_mark_down(now=timezone.now() + timezone.timedelta(hours=1))
    client.force_login(approver)
    body = client.get(reverse("fleet") + "?part=nodes", **HTMX).content.decode()
    assert body.lstrip().startswith('<tbody id="fleet-nodes"')
    assert body.count("badge state-down") == len(fleet)
    assert "Drain</button>" not in body


def test_drain_over_htmx_swaps_the_row_and_audits(client, platform_admin, fleet):
    client.force_login(platform_admin)
    response = client.post(reverse("fleet-node-drain", args=["dgx-h100-a"]), {"reason": "firmware"}, **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith("<tr") and "state-draining" in body and "Undrain" in body
    node = Node.objects.get(name="dgx-h100-a")
    assert node.state == Node.State.DRAINING and node.drain_reason == "firmware"
    assert AuditEvent.objects.filter(action="node.drain", actor=platform_admin).count() == 1

    response = client.post(reverse("fleet-node-undrain", args=["dgx-h100-a"]), **HTMX)
    assert "state-ready" in response.content.decode()
    assert Node.objects.get(name="dgx-h100-a").state == Node.State.READY
    assert audit_chain_verify().ok


def test_refused_transition_is_shown_in_the_row_and_changes_nothing(client, platform_admin, fleet):
    client.force_login(platform_admin)
    before = AuditEvent.objects.count()
    response = client.post(reverse("fleet-node-confirm-gone", args=["dgx-h100-a"]), **HTMX)
    assert response.status_code == 200
    assert "only a down node can be confirmed gone" in response.content.decode()
    assert Node.objects.get(name="dgx-h100-a").gone_confirmed_at is None
    assert AuditEvent.objects.count() == before


def test_plain_post_redirects_back_with_a_message(client, platform_admin, fleet):
    client.force_login(platform_admin)
    response = client.post(reverse("fleet-node-drain", args=["dgx-h100-b"]), {"reason": ""}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("fleet")
    assert "is drained" in response.content.decode()
    assert Node.objects.get(name="dgx-h100-b").drain_reason == f"drained by {platform_admin.username}"


def test_confirm_gone_from_the_page_requeues_the_nodes_requests(client, platform_admin, fleet, team, member):
    from django.utils import timezone

    gpu = GpuDevice.objects.filter(node__name="a100-pcie-a").first()
    allocation = allocate(team=team, user=member, device=gpu)
    nodes_mark_down(now=timezone.now() + timezone.timedelta(hours=1))
    client.force_login(platform_admin)
    response = client.post(reverse("fleet-node-confirm-gone", args=["a100-pcie-a"]), {"note": "decommissioned"}, **HTMX)
    assert "gone" in response.content.decode()
    allocation.refresh_from_db()
    assert allocation.released_at is not None and "confirmed gone" in allocation.release_reason
    assert AllocationRequest.objects.get(pk=allocation.request_id).state == AllocationRequest.State.PENDING


def test_node_detail_lists_gpus_holders_and_slices(client, approver, fleet, team, member):
    gpu = GpuDevice.objects.get(node__name="hgx-h200-a", index=0)
    allocate(team=team, user=member, device=gpu)
    client.force_login(approver)
    response = client.get(reverse("fleet-node", args=["hgx-h200-a"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert gpu.uuid in html and "Vision" in html and member.username in html
    assert "2g.35gb" in html
    assert "simulated" in html


def test_unknown_node_is_404_for_staff(client, platform_admin, fleet):
    client.force_login(platform_admin)
    assert client.get(reverse("fleet-node", args=["nope"])).status_code == 404


def _window():
    from django.utils import timezone

    start = timezone.now() + timezone.timedelta(days=2)
    fmt = "%Y-%m-%dT%H:%M"
    return start.strftime(fmt), (start + timezone.timedelta(hours=6)).strftime(fmt)


def test_reservation_form_reserves_and_cancels_over_htmx(client, platform_admin, fleet, team):
    from scheduler.models import Reservation

    client.force_login(platform_admin)
    starts, ends = _window()
    response = client.post(reverse("fleet-reservation-create"), {"team": "vision", "flavor": "mig:1g.18gb", "count": 2,
                                                                  "starts_at": starts, "ends_at": ends, "note": "course"}, **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<section id="fleet-reservations"') and "Reserved 2 1g.18gb for Vision" in body
    reservation = Reservation.objects.get()
    assert (reservation.flavor, reservation.count, reservation.note) == ("1g.18gb", 2, "course")

    response = client.post(reverse("fleet-reservation-cancel", args=[reservation.pk]), **HTMX)
    assert response.status_code == 200 and "No current or upcoming reservation" in response.content.decode()
    assert not Reservation.objects.exists()


def test_invalid_reservation_shows_the_error_in_the_form_and_changes_nothing(client, platform_admin, fleet, team):
    from scheduler.models import Reservation

    client.force_login(platform_admin)
    before = AuditEvent.objects.count()
    starts, ends = _window()
    response = client.post(reverse("fleet-reservation-create"), {"team": "vision", "flavor": "A100", "count": 50,
                                                                  "starts_at": starts, "ends_at": ends}, **HTMX)
    assert response.status_code == 200
    assert "The fleet has only 4 A100." in response.content.decode()
    plain = client.post(reverse("fleet-reservation-create"), {"team": "vision", "flavor": "A100", "count": 1,
                                                               "starts_at": ends, "ends_at": starts})
    assert plain.status_code == 400 and "The window must end after it starts." in plain.content.decode()
    assert not Reservation.objects.exists()
    assert AuditEvent.objects.count() == before


def test_vanished_gpu_is_counted_unavailable(client, platform_admin, fleet):
    from scheduler.gpus import source
    from scheduler.inventory import node_register

    info = source().inventory("a100-pcie-a")
    node_register(info=type(info)(name=info.name, gpus=info.gpus[:3], labels=info.labels, capacity=info.capacity, simulated=True))
    client.force_login(platform_admin)
    html = client.get(reverse("fleet")).content.decode()
    assert "1 unavailable" in html


def test_node_history_is_shown_to_auditors_only(client, auditor, approver, platform_admin, fleet):
    from scheduler.inventory import node_drain

    node_drain(node=Node.objects.get(name="dgx-h100-a"), actor=platform_admin, reason="cabling")
    url = reverse("fleet-node", args=["dgx-h100-a"])
    client.force_login(auditor)
    html = client.get(url).content.decode()
    assert 'id="history"' in html and "node.drain" in html and "drain_reason:  → cabling" in html
    client.force_login(approver)
    assert 'id="history"' not in client.get(url).content.decode()
