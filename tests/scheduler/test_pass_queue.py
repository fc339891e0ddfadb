"""What the pass tells waiting requests, reservations, fair-share accounting, node states, and the
triggers that run a pass (quota changes)."""

import datetime

import pytest
from django.db import transaction
from django.utils import timezone

from governance.models import AuditEvent
from portal.errors import Conflict, DomainError
from scheduler.models import Allocation, AllocationRequest, Node, Reservation, UsageLedger
from scheduler.selectors import flavor_availability, pending_queue, request_wait_info, team_quota_usage
from scheduler.services import (allocation_release, allocation_request_create, reservation_cancel, reservation_create,
                                schedule_pass_run)
from tests.factories import MembershipFactory, UserFactory
from tests.scheduler.engine_fixtures import demo_fleet, grant, small_fleet

pytestmark = pytest.mark.django_db(transaction=True)


def test_waiting_requests_get_positions_reasons_and_estimated_start(team, other_team, member):
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 8)
    grant(other_team, "H100", 8)
    first = allocation_request_create(team=team, user=member, flavor="H100", count=4)
    second = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    other_user = UserFactory(username="ola")
    MembershipFactory(team=other_team, user=other_user)
    third = allocation_request_create(team=other_team, user=other_user, flavor="H100", count=1)
    for r in (first, second, third):
        r.refresh_from_db()
    assert first.state == "placed"
    # The other team holds nothing, so fair share puts it first in the queue.
    assert (third.queue_position_global, third.queue_position_team) == (1, 1)
    assert (second.queue_position_global, second.queue_position_team) == (2, 1)
    assert second.estimated_start is not None and second.estimated_start >= first.placed_at
    info = request_wait_info(second)
    assert info.waiting and info.reasons[0]["label"]
    assert [r.pk for r in pending_queue()] == [third.pk, second.pk]


def test_quota_change_triggers_a_pass(team, member, platform_admin):
    from governance.services import quota_grant_create

    small_fleet(nodes=1, gpus=4)
    req = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    req.refresh_from_db()
    assert req.pending_reasons[0]["code"] == "waiting_for_quota"
    quota_grant_create(actor=platform_admin, team=team, flavor="H100", count=2)
    req.refresh_from_db()
    assert req.state == "placed"


def test_reservation_keeps_gpus_for_its_team(team, other_team, member, platform_admin):
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    grant(other_team, "H100", 4)
    now = timezone.now()
    res = reservation_create(team=other_team, flavor="H100", count=4, starts_at=now + datetime.timedelta(hours=1),
                             ends_at=now + datetime.timedelta(hours=3), actor=platform_admin)
    long = allocation_request_create(team=team, user=member, flavor="H100", count=1, max_duration_s=4 * 3600)
    short = allocation_request_create(team=team, user=member, flavor="H100", count=1, max_duration_s=1800)
    long.refresh_from_db()
    short.refresh_from_db()
    assert short.state == "placed"
    assert long.state == "pending" and "reserved" in [r["code"] for r in long.pending_reasons]
    with pytest.raises(Conflict):
        reservation_create(team=team, flavor="H100", count=1, starts_at=now + datetime.timedelta(hours=2),
                           ends_at=now + datetime.timedelta(hours=4), actor=platform_admin)
    reservation_cancel(reservation=res, actor=platform_admin)
    long.refresh_from_db()
    assert long.state == "placed"
    assert not Reservation.objects.exists()
    assert AuditEvent.objects.filter(action__startswith="reservation.").count() == 2


def test_reservation_input_is_checked_and_changes_nothing(team, platform_admin, member):
    from django.core.exceptions import PermissionDenied

    small_fleet(nodes=1, gpus=4)
    now = timezone.now()
    events = AuditEvent.objects.count()
    with pytest.raises(DomainError):
        reservation_create(team=team, flavor="H100", count=5, starts_at=now, ends_at=now + datetime.timedelta(hours=1), actor=platform_admin)
    with pytest.raises(DomainError):
        reservation_create(team=team, flavor="H100", count=1, starts_at=now, ends_at=now - datetime.timedelta(hours=1), actor=platform_admin)
    with pytest.raises(PermissionDenied):
        reservation_create(team=team, flavor="H100", count=1, starts_at=now, ends_at=now + datetime.timedelta(hours=1), actor=member)
    assert not Reservation.objects.exists()
    assert AuditEvent.objects.exclude(outcome="denied").count() == events


def test_usage_is_accounted_with_decay_for_fair_share(team, member, settings):
    settings.PORTAL_FAIRSHARE_HALF_LIFE_HOURS = 1
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    req = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    req.refresh_from_db()
    start = req.placed_at
    schedule_pass_run(now=start + datetime.timedelta(seconds=100))
    ledger = UsageLedger.objects.get(team=team, flavor="H100")
    assert ledger.gpu_seconds == pytest.approx(200, rel=0.05)
    allocation_release(request=req, reason="done")
    # (The release happened in real time, before the pass's simulated clock: nothing more is added.)
    schedule_pass_run(now=start + datetime.timedelta(seconds=100 + 3600))
    ledger.refresh_from_db()
    assert ledger.gpu_seconds == pytest.approx(100, rel=0.05), "one half-life later, half remains"


def test_down_node_gets_nothing_and_keeps_its_allocations(team, member):
    nodes = small_fleet(nodes=2, gpus=2)
    grant(team, "H100", 4)
    first = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    held_node = Allocation.objects.filter(request=first).first().node
    Node.objects.filter(pk=held_node.pk).update(state=Node.State.DOWN)
    other = [n for n in nodes if n.pk != held_node.pk][0]
    Node.objects.filter(pk=other.pk).update(state=Node.State.DRAINING)
    second = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    second.refresh_from_db()
    assert second.state == "pending"
    assert "node_draining" in [r["code"] for r in second.pending_reasons]
    assert Allocation.objects.filter(request=first, released_at__isnull=True).count() == 2
    Node.objects.filter(pk=other.pk).update(state=Node.State.READY)
    schedule_pass_run()
    second.refresh_from_db()
    assert second.state == "placed"
    assert {a.node_id for a in second.allocations.all()} == {other.pk}


def test_mig_slices_and_availability_on_the_demo_fleet(team, member):
    demo_fleet()
    grant(team, "1g.18gb", 2)
    grant(team, "H200", 8)
    sliced = allocation_request_create(team=team, user=member, flavor="1g.18gb", count=2, mig=True)
    sliced.refresh_from_db()
    assert sliced.state == "placed"
    assert all(a.mig_slice_id and not a.gpu_id for a in sliced.allocations.all())
    with pytest.raises(DomainError, match="At most 7"):
        # One H200 is in MIG mode: only 7 whole H200 exist, so 8 could never be placed.
        allocation_request_create(team=team, user=member, flavor="H200", count=8)
    whole = allocation_request_create(team=team, user=member, flavor="H200", count=7)
    whole.refresh_from_db()
    assert whole.state == "placed"
    assert not whole.allocations.filter(gpu__mig_enabled=True).exists()
    avail = {(r["flavor"], r["mig"]): r for r in flavor_availability()}
    assert avail[("1g.18gb", True)]["free"] == 0 and avail[("1g.18gb", True)]["total"] == 2
    assert avail[("H200", False)]["total"] == 7 and avail[("H200", False)]["free"] == 0
    usage = {u["flavor"]: u for u in team_quota_usage(team)}
    assert usage["1g.18gb"]["used"] == 2 and usage["H200"]["granted"] == 8


def test_a_cancelled_request_is_not_placed_by_a_pass_that_saw_it_pending(team, member):
    from scheduler.snapshot import snapshot_build
    from scheduler import engine
    from scheduler.services import PassResult, _pass_write, allocation_request_cancel

    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    req = AllocationRequest.objects.create(team=team, user=member, flavor="H100", count=1)
    snap = snapshot_build()
    decision = engine.decide(snap.engine)
    assert [p.request_id for p in decision.placements] == [req.pk]
    allocation_request_cancel(request=req, actor=member, reason="gone")
    with transaction.atomic():
        _pass_write(decision, snap, PassResult())
    assert not Allocation.objects.exists()
    req.refresh_from_db()
    assert req.state == "cancelled"


def test_request_devices_and_live_allocations_selectors(team, member, django_assert_max_num_queries):
    from scheduler.selectors import live_allocations, request_devices

    demo_fleet()
    grant(team, "H100", 8)
    grant(team, "3g.71gb", 1)
    whole = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    sliced = allocation_request_create(team=team, user=member, flavor="3g.71gb", count=1, mig=True)
    devices = request_devices(whole)
    assert len(devices) == 2 and all(d["uuid"].startswith("GPU-") and not d["mig"] for d in devices)
    assert len({d["node"] for d in devices}) == 1
    [slice_dev] = request_devices(sliced)
    assert slice_dev["mig"] and slice_dev["uuid"].startswith("MIG-") and slice_dev["model"] == "3g.71gb"
    with django_assert_max_num_queries(1):
        rows = [(a.node.name, a.team.slug, a.request.flavor, a.gpu or a.mig_slice.gpu) for a in live_allocations(team=team)]
    assert len(rows) == 3


def test_the_snapshot_carries_each_team_fair_share_weight(team, other_team):
    from governance.models import TeamPolicy
    from scheduler.snapshot import snapshot_build

    TeamPolicy.objects.filter(team=team).update(fair_share_weight=3)
    weights = {t.id: t.weight for t in snapshot_build().engine.teams}
    assert weights[team.pk] == 3 and weights[other_team.pk] is None
