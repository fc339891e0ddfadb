"""Preemption through the database: victims are marked and warned, released by a later pass once
their grace period is over, and their devices go to the within-quota request that reclaimed them."""

import datetime

import pytest
from django.utils import timezone

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from scheduler import signals
from scheduler.models import Allocation, AllocationRequest, PriorityClass
from scheduler.services import allocation_request_create, schedule_pass_run
from tests.factories import MembershipFactory, UserFactory
from tests.scheduler.engine_fixtures import grant, policy, small_fleet

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def listen():
    got = {"preempting": [], "released": [], "placed": []}
    handlers = {
        "preempting": lambda sender, request_id, preempt_at, **kw: got["preempting"].append((request_id, preempt_at)),
        "released": lambda sender, request_id, reason, **kw: got["released"].append((request_id, reason)),
        "placed": lambda sender, request_ids, **kw: got["placed"].extend(request_ids),
    }
    signals.allocation_preempting.connect(handlers["preempting"], weak=False, dispatch_uid="tp-pre")
    signals.allocation_released.connect(handlers["released"], weak=False, dispatch_uid="tp-rel")
    signals.allocation_placed.connect(handlers["placed"], weak=False, dispatch_uid="tp-pla")
    yield got
    signals.allocation_preempting.disconnect(dispatch_uid="tp-pre")
    signals.allocation_released.disconnect(dispatch_uid="tp-rel")
    signals.allocation_placed.disconnect(dispatch_uid="tp-pla")


def test_borrowed_gpus_are_reclaimed_after_a_grace_period(team, other_team, member, settings, listen):
    settings.PORTAL_PREEMPT_GRACE_SECONDS = 120
    settings.PORTAL_PREEMPT_MIN_RUNTIME_SECONDS = 0
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    policy(other_team, borrow_limit=4)
    borrower = UserFactory(username="bo-borrower")
    MembershipFactory(team=other_team, user=borrower)
    borrowed = allocation_request_create(team=other_team, user=borrower, flavor="H100", count=4, priority=PriorityClass.BATCH)
    borrowed.refresh_from_db()
    assert borrowed.state == "placed" and all(a.borrowed for a in borrowed.allocations.all())

    mine = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    mine.refresh_from_db()
    assert mine.state == "pending"
    assert mine.pending_reasons[0]["code"] == "preemption_in_progress"
    marks = list(Allocation.objects.filter(request=borrowed).values_list("preempt_at", flat=True))
    assert len(marks) == 4 and all(marks)
    assert [rid for rid, _ in listen["preempting"]] == [borrowed.pk]
    assert AuditEvent.objects.filter(action="allocation.preempt", target_id=str(borrowed.pk)).count() == 1

    # Within the grace period nothing moves and no second victim is chosen.
    again = schedule_pass_run()
    assert again.preempting == [] and again.placed == []

    later = schedule_pass_run(now=timezone.now() + datetime.timedelta(seconds=121))
    assert later.released == [borrowed.pk]
    assert later.placed == [mine.pk]
    borrowed.refresh_from_db()
    assert borrowed.state == "finished"
    assert set(borrowed.allocations.values_list("release_reason", flat=True)) == {"preempted"}
    assert (borrowed.pk, "preempted") in listen["released"]
    assert mine.pk in listen["placed"]
    assert audit_chain_verify().ok


def test_non_preemptible_within_quota_work_is_never_preempted(team, other_team, member, settings):
    settings.PORTAL_PREEMPT_MIN_RUNTIME_SECONDS = 0
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    grant(other_team, "H100", 4)  # grants oversubscribe the fleet
    theirs_user = UserFactory(username="theo")
    MembershipFactory(team=other_team, user=theirs_user)
    theirs = allocation_request_create(team=other_team, user=theirs_user, flavor="H100", count=4, priority=PriorityClass.BEST_EFFORT)
    mine = allocation_request_create(team=team, user=member, flavor="H100", count=1)
    mine.refresh_from_db()
    assert mine.state == "pending"
    assert not Allocation.objects.filter(request=theirs, preempt_at__isnull=False).exists()
    assert mine.pending_reasons[0]["code"] == "no_capacity_together"
    assert mine.estimated_start is not None


def test_lower_priority_preemptible_work_yields_to_within_quota_interactive(team, other_team, member, settings):
    settings.PORTAL_PREEMPT_MIN_RUNTIME_SECONDS = 0
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    grant(other_team, "H100", 4)
    theirs_user = UserFactory(username="theo")
    MembershipFactory(team=other_team, user=theirs_user)
    theirs = allocation_request_create(team=other_team, user=theirs_user, flavor="H100", count=4,
                                       priority=PriorityClass.BEST_EFFORT, preemptible=True)
    allocation_request_create(team=team, user=member, flavor="H100", count=2)
    assert Allocation.objects.filter(request=theirs, preempt_at__isnull=False).count() == 4


def test_young_allocations_are_not_preempted(team, other_team, member, settings):
    settings.PORTAL_PREEMPT_MIN_RUNTIME_SECONDS = 3600
    small_fleet(nodes=1, gpus=4)
    grant(team, "H100", 4)
    policy(other_team, borrow_limit=4)
    borrower = UserFactory(username="bo")
    MembershipFactory(team=other_team, user=borrower)
    borrowed = allocation_request_create(team=other_team, user=borrower, flavor="H100", count=4)
    mine = allocation_request_create(team=team, user=member, flavor="H100", count=4)
    mine.refresh_from_db()
    assert mine.state == AllocationRequest.State.PENDING
    assert not Allocation.objects.filter(request=borrowed, preempt_at__isnull=False).exists()
    # An hour later the borrowed work is old enough to be reclaimed.
    schedule_pass_run(now=timezone.now() + datetime.timedelta(seconds=3601))
    assert Allocation.objects.filter(request=borrowed, preempt_at__isnull=False).count() == 4


@pytest.mark.parametrize("fair_reclaim", [True, False])
def test_borrowing_request_reclaims_from_a_team_far_above_its_fair_share(team, other_team, member, settings, listen, fair_reclaim):
    from scheduler.models import UsageLedger

    settings.PORTAL_PREEMPT_GRACE_SECONDS = 120
    settings.PORTAL_PREEMPT_MIN_RUNTIME_SECONDS = 0
    settings.PORTAL_FAIR_RECLAIM = fair_reclaim
    small_fleet(nodes=1, gpus=4)
    policy(team, borrow_limit=4)
    policy(other_team, borrow_limit=4)
    UsageLedger.objects.create(team=other_team, flavor="H100", gpu_seconds=500 * 3600.0)  # 500 GPU-hours lately
    heavy_user = UserFactory(username="heavy")
    MembershipFactory(team=other_team, user=heavy_user)
    heavy = allocation_request_create(team=other_team, user=heavy_user, flavor="H100", count=4, priority=PriorityClass.BATCH)
    heavy.refresh_from_db()
    assert heavy.state == "placed" and all(a.borrowed for a in heavy.allocations.all())

    light = allocation_request_create(team=team, user=member, flavor="H100", count=2, priority=PriorityClass.BATCH)
    light.refresh_from_db()
    assert light.state == "pending"
    if not fair_reclaim:
        assert light.pending_reasons[0]["code"] == "waiting_for_quota"
        assert listen["preempting"] == [] and not Allocation.objects.filter(preempt_at__isnull=False).exists()
        return
    assert light.pending_reasons[0]["code"] == "preemption_in_progress"
    assert "fair share" in light.pending_reasons[0]["message"]
    assert [rid for rid, _ in listen["preempting"]] == [heavy.pk]
    later = schedule_pass_run(now=timezone.now() + datetime.timedelta(seconds=121))
    assert later.released == [heavy.pk] and later.placed == [light.pk]
    assert all(a.borrowed and a.preemptible for a in Allocation.objects.filter(request=light))
    # The light team now holds borrowed GPUs but stays below the heavy team: no reclaim back.
    allocation_request_create(team=other_team, user=heavy_user, flavor="H100", count=2, priority=PriorityClass.BATCH)
    assert schedule_pass_run().preempting == []
    assert audit_chain_verify().ok
