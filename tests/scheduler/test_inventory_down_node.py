"""A down node gets nothing new from the scheduling pass, keeps its allocations (nobody else gets
those GPUs) until it returns or a platform admin confirms it gone; then its requests are placed
elsewhere. Uses the real pass (scheduler.services.schedule_pass_run) on committed rows."""

import pytest
from django.utils import timezone

from governance.audit import audit_chain_verify
from scheduler.inventory import node_confirm_gone, node_drain, node_heartbeat, node_register, nodes_mark_down
from scheduler.models import Allocation, AllocationRequest, Node
from scheduler.services import allocation_request_create, schedule_pass_run
from tests.factories import MembershipFactory, UserFactory
from tests.scheduler.engine_fixtures import grant
from tests.scheduler.inventory_helpers import gpu, node_info

pytestmark = pytest.mark.django_db(transaction=True)


def _two_nodes():
    node_register(info=node_info("n1", [gpu("n1", i) for i in range(2)]))
    node_register(info=node_info("n2", [gpu("n2", i) for i in range(2)]))


def _nodes_of(request) -> set[str]:
    return set(Allocation.objects.filter(request=request, released_at__isnull=True).values_list("node__name", flat=True))


def _silence(*names):
    """Make the other nodes beat now and let `names` fall silent long enough to go down."""
    later = timezone.now() + timezone.timedelta(minutes=5)
    for node in Node.objects.exclude(name__in=names):
        node_heartbeat(node.name, now=later)
    return nodes_mark_down(now=later)


def test_down_node_gets_nothing_new(team, member):
    _two_nodes()
    grant(team, "H100", 4)
    assert _silence("n1") == ["n1"]

    first = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    second = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    schedule_pass_run()
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.state == AllocationRequest.State.PLACED and _nodes_of(first) == {"n2"}
    assert second.state == AllocationRequest.State.PENDING
    assert second.pending_reasons  # it says why it waits
    assert not Allocation.objects.filter(node__name="n1").exists()


def test_drained_node_gets_nothing_new(team, member, platform_admin):
    _two_nodes()
    grant(team, "H100", 4)
    node_drain(node=Node.objects.get(name="n2"), actor=platform_admin, reason="test")
    request = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    other = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    schedule_pass_run()
    request.refresh_from_db()
    other.refresh_from_db()
    assert _nodes_of(request) == {"n1"}
    assert other.state == AllocationRequest.State.PENDING


def test_down_nodes_allocations_are_held_until_confirmed_gone_then_requeued(team, other_team, member, platform_admin):
    node_register(info=node_info("n1", [gpu("n1", 0), gpu("n1", 1)]))
    grant(team, "H100", 2)
    grant(other_team, "H100", 2)
    held = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    held.refresh_from_db()
    assert held.state == AllocationRequest.State.PLACED and _nodes_of(held) == {"n1"}

    assert _silence("n1") == ["n1"]
    rival_user = UserFactory(username="rita")
    MembershipFactory(team=other_team, user=rival_user)
    rival = allocation_request_create(team=other_team, user=rival_user, flavor="H100", count=2)
    schedule_pass_run()
    held.refresh_from_db()
    rival.refresh_from_db()
    # The down node's GPUs stay with their holder: nobody else gets them, no new node appears.
    assert held.state == AllocationRequest.State.PLACED and _nodes_of(held) == {"n1"}
    assert rival.state == AllocationRequest.State.PENDING

    # A replacement node arrives (the waiting rival gets half of it), then the admin confirms n1
    # gone: the held request goes back to the queue and is placed again on the new node.
    node_register(info=node_info("n3", [gpu("n3", 0), gpu("n3", 1), gpu("n3", 2), gpu("n3", 3)]))
    requeued = node_confirm_gone(node=Node.objects.get(name="n1"), actor=platform_admin, note="dead PSU")
    assert requeued == [held.pk]
    schedule_pass_run()
    held.refresh_from_db()
    rival.refresh_from_db()
    assert held.state == AllocationRequest.State.PLACED and _nodes_of(held) == {"n3"}
    assert rival.state == AllocationRequest.State.PLACED and _nodes_of(rival) == {"n3"}
    assert not Allocation.objects.filter(node__name="n1", released_at__isnull=True).exists()
    assert audit_chain_verify().ok


def test_node_that_returns_keeps_its_allocations_and_takes_work_again(team, member):
    _two_nodes()
    grant(team, "H100", 4)
    held = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    held.refresh_from_db()
    home = _nodes_of(held)
    _silence(*home)
    node_heartbeat(next(iter(home)))
    assert Node.objects.get(name=next(iter(home))).state == Node.State.READY
    more = allocation_request_create(team=team, user=member, flavor="H100", count=2)
    more.refresh_from_db()
    held.refresh_from_db()
    assert _nodes_of(held) == home
    assert more.state == AllocationRequest.State.PLACED
