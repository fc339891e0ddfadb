"""A scheduling pass places requests best-fit, writes allocations, preemption marks and audit events
in one transaction and the waiting requests' queue facts in a second, audits each placement, and
signals the workspaces app after commit."""

import pytest
from django.core.exceptions import PermissionDenied

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from portal.errors import DomainError
from scheduler import signals
from scheduler.models import Allocation, AllocationRequest, PriorityClass
from scheduler.services import allocation_release, allocation_request_cancel, allocation_request_create, schedule_pass_run
from tests.scheduler.engine_fixtures import demo_fleet, grant, small_fleet

pytestmark = pytest.mark.django_db(transaction=True)


def test_request_within_quota_is_placed_on_commit_and_signalled(team, member):
    demo_fleet()
    grant(team, "H100", 8)
    placed = []
    signals.allocation_placed.connect(lambda sender, request_ids, **kw: placed.extend(request_ids), weak=False, dispatch_uid="t1")
    try:
        req = allocation_request_create(team=team, user=member, flavor="H100", count=4)
    finally:
        signals.allocation_placed.disconnect(dispatch_uid="t1")
    req.refresh_from_db()
    assert req.state == AllocationRequest.State.PLACED
    assert placed == [req.pk]
    allocs = list(Allocation.objects.filter(request=req))
    assert len(allocs) == 4
    assert len({a.node_id for a in allocs}) == 1
    assert len({a.gpu.nvlink_group for a in allocs}) == 1, "4 GPUs fit one NVLink group: they must share it"
    assert not any(a.borrowed for a in allocs)
    assert AuditEvent.objects.filter(action="allocation.place", target_id=str(req.pk)).count() == 1
    assert audit_chain_verify().ok


def test_best_fit_uses_the_fullest_node(team, member):
    small_fleet(nodes=2, gpus=4)
    grant(team, "H100", 8)
    first = allocation_request_create(team=team, user=member, flavor="H100", count=3)
    second = allocation_request_create(team=team, user=member, flavor="H100", count=1)
    node_of = lambda r: {a.node_id for a in Allocation.objects.filter(request=r)}
    assert node_of(first) == node_of(second), "the single GPU goes to the node left with one free"


def test_without_quota_or_borrowing_the_request_waits_with_a_reason(team, member):
    small_fleet(nodes=1, gpus=4)
    req = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    req.refresh_from_db()
    assert req.state == AllocationRequest.State.PENDING
    assert req.pending_reasons[0]["code"] == "waiting_for_quota"
    assert req.queue_position_global == 1 and req.queue_position_team == 1
    assert not Allocation.objects.exists()


def test_borrowing_up_to_the_limit_is_preemptible(team, member):
    from tests.scheduler.engine_fixtures import policy

    small_fleet(nodes=1, gpus=4)
    policy(team, borrow_limit=2)
    req = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    req.refresh_from_db()
    assert req.state == AllocationRequest.State.PLACED
    assert all(a.borrowed and a.preemptible for a in req.allocations.all())
    more = allocation_request_create(team=team, user=member, flavor="H100", count=1)
    more.refresh_from_db()
    assert more.state == AllocationRequest.State.PENDING
    assert more.pending_reasons[0]["code"] == "waiting_for_quota"


def test_request_validation_changes_nothing(team, member, viewer):
    small_fleet(nodes=1, gpus=4)
    before = (AllocationRequest.objects.count(), AuditEvent.objects.count())
    with pytest.raises(DomainError) as unknown:
        allocation_request_create(team=team, user=member, flavor="B200", count=1)
    assert unknown.value.code == "unknown_flavor"
    with pytest.raises(DomainError) as too_large:
        allocation_request_create(team=team, user=member, flavor="H100", count=5, same_node=True)
    assert too_large.value.code == "too_large"
    with pytest.raises(DomainError):
        allocation_request_create(team=team, user=member, flavor="H100", count=0)
    assert (AllocationRequest.objects.count(), AuditEvent.objects.count()) == before
    with pytest.raises(PermissionDenied):
        allocation_request_create(team=team, user=viewer, flavor="H100", count=1)
    assert AllocationRequest.objects.count() == before[0]
    assert AuditEvent.objects.filter(outcome="denied").count() == 1


def test_release_frees_devices_and_the_next_request_gets_them(team, member):
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 8)
    first = allocation_request_create(team=team, user=member, flavor="H100", count=4)
    second = allocation_request_create(team=team, user=member, flavor="H100", count=4)
    second.refresh_from_db()
    assert second.state == "pending"
    assert second.estimated_start is not None, "estimated from the first request's planned end"
    released = []
    signals.allocation_released.connect(lambda sender, request_id, reason, **kw: released.append((request_id, reason)),
                                        weak=False, dispatch_uid="t2")
    try:
        allocation_release(request=first, reason="workspace stopped", actor=member)
    finally:
        signals.allocation_released.disconnect(dispatch_uid="t2")
    assert released == [(first.pk, "workspace stopped")]
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.state == "finished"
    assert second.state == "placed"
    assert Allocation.objects.filter(released_at__isnull=True).count() == 4
    assert audit_chain_verify().ok


def test_cancel_pending_request(team, member):
    small_fleet(nodes=1, gpus=4)
    req = allocation_request_create(team=team, user=member, flavor="H100", count=1)
    allocation_request_cancel(request=req, actor=member, reason="changed my mind")
    req.refresh_from_db()
    assert req.state == "cancelled" and req.pending_reasons == []
    again = allocation_request_cancel(request=req, actor=member, reason="twice")
    assert again.state == "cancelled"
    assert AuditEvent.objects.filter(action="allocation_request.cancel").count() == 1


def test_pass_twice_changes_nothing_more(team, member):
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    allocation_request_create(team=team, user=member, flavor="H100", count=4)
    allocation_request_create(team=team, user=member, flavor="H100", count=2, priority=PriorityClass.BATCH)
    events = AuditEvent.objects.count()
    first = schedule_pass_run()
    second = schedule_pass_run()
    assert first.placed == [] and second.placed == []
    assert AuditEvent.objects.count() == events
    assert Allocation.objects.count() == 4


def test_a_pass_that_changes_nothing_rewrites_no_waiting_row(team, other_team, member):
    small_fleet(nodes=2, gpus=4)
    grant(team, "H100", 8)
    for count in (4, 4, 2, 1, 3):
        allocation_request_create(team=team, user=member, flavor="H100", count=count)
    first = schedule_pass_run()
    assert first.waiting == 3
    again = schedule_pass_run(now=first_now_plus(seconds=1))
    assert again.placed == [] and again.waiting_rewritten == 0, "an idle beat must not rewrite the queue"


def first_now_plus(**delta):
    import datetime

    from django.utils import timezone

    return timezone.now() + datetime.timedelta(**delta)


def test_extend_moves_the_planned_end_and_is_audited(team, member):
    from scheduler.services import allocation_request_extend

    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    req = allocation_request_create(team=team, user=member, flavor="H100", count=2, max_duration_s=3600)
    alloc = Allocation.objects.filter(request=req).first()
    assert (alloc.planned_end - alloc.started_at).total_seconds() == 3600
    allocation_request_extend(request=req, max_duration_s=7200, actor=member)
    alloc.refresh_from_db()
    assert (alloc.planned_end - alloc.started_at).total_seconds() == 7200
    assert AuditEvent.objects.filter(action="allocation_request.extend", target_id=str(req.pk)).count() == 1
    allocation_release(request=req, reason="done")
    from portal.errors import Conflict

    with pytest.raises(Conflict):
        allocation_request_extend(request=req, max_duration_s=9000, actor=member)


def test_queue_facts_follow_in_their_own_transaction_and_a_failure_there_keeps_the_placements(team, member, monkeypatch, caplog):
    from scheduler import services

    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    placed = AllocationRequest.objects.create(team=team, user=member, flavor="H100", count=4)
    waiting = AllocationRequest.objects.create(team=team, user=member, flavor="H100", count=2)

    def broken(changed):
        raise RuntimeError("facts table unavailable")

    monkeypatch.setattr(services, "_write_waiting", broken)
    result = schedule_pass_run()
    assert result.placed == [placed.pk] and result.devices_placed == 4
    assert Allocation.objects.filter(request=placed, released_at__isnull=True).count() == 4
    waiting.refresh_from_db()
    assert waiting.state == "pending" and waiting.pending_reasons == [], "the facts were not written"
    assert "writing the queue facts failed" in caplog.text
    assert audit_chain_verify().ok

    monkeypatch.undo()
    again = schedule_pass_run()
    assert not again.skipped and again.waiting_rewritten == 1
    waiting.refresh_from_db()
    assert waiting.pending_reasons[0]["code"] == "waiting_for_quota" and waiting.queue_position_global == 1


def test_a_failed_pass_changes_nothing_and_does_not_keep_the_pass_lock(team, member, monkeypatch):
    from scheduler import services

    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    req = AllocationRequest.objects.create(team=team, user=member, flavor="H100", count=1)

    def broken(snapshot):
        raise RuntimeError("engine bug")

    monkeypatch.setattr(services.engine, "decide", broken)
    with pytest.raises(RuntimeError):
        schedule_pass_run()
    assert not Allocation.objects.exists()
    monkeypatch.undo()
    result = schedule_pass_run()
    assert not result.skipped, "the lock was released when the pass failed"
    assert result.placed == [req.pk]


def test_a_device_with_allocations_cannot_be_deleted(team, member):
    from django.db.models import ProtectedError

    from scheduler.models import GpuDevice

    small_fleet(nodes=1, gpus=1)
    grant(team, "H100", 1)
    req = allocation_request_create(team=team, user=member, flavor="H100", count=1)
    gpu = GpuDevice.objects.get()
    allocation_release(request=req, reason="done")
    with pytest.raises(ProtectedError):
        gpu.delete()
    assert Allocation.objects.filter(gpu=gpu).count() == 1


def test_workspaces_are_told_once_the_queue_facts_are_written_and_the_pass_lock_is_free(team, member):
    from scheduler.services import _pass_lock

    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    placed = AllocationRequest.objects.create(team=team, user=member, flavor="H100", count=4)
    waiting = AllocationRequest.objects.create(team=team, user=member, flavor="H100", count=1)
    seen = {}

    def receiver(sender, request_ids, **kwargs):
        seen["placed"] = request_ids
        seen["facts"] = AllocationRequest.objects.get(pk=waiting.pk).pending_reasons
        with _pass_lock(connection.vendor == "postgresql") as taken:
            seen["lock_free"] = taken

    from django.db import connection

    signals.allocation_placed.connect(receiver, weak=False, dispatch_uid="t-order")
    try:
        schedule_pass_run()
    finally:
        signals.allocation_placed.disconnect(dispatch_uid="t-order")
    assert seen["placed"] == [placed.pk]
    assert seen["facts"] and seen["facts"][0]["code"] == "waiting_for_quota"
    assert seen["lock_free"] is True
