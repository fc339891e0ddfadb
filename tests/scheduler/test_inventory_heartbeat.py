"""Heartbeats: a node silent for 3 intervals goes down (time driven by explicit `now=`), keeps its
allocations, and comes back when it beats again."""

import datetime

import pytest
from django.utils import timezone

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from portal.errors import NotFound
from scheduler import gpus
from scheduler.inventory import node_drain, node_heartbeat, node_register, nodes_mark_down
from scheduler.models import Allocation, GpuDevice, Node
from tests.scheduler.inventory_helpers import allocate, gpu, node_info

pytestmark = pytest.mark.django_db

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)


def seconds(s: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=s)


@pytest.fixture
def interval(settings):
    settings.PORTAL_HEARTBEAT_SECONDS = 10
    return 10


def test_heartbeat_moves_last_heartbeat_with_one_query(interval, django_assert_num_queries):
    node_register(info=node_info("n1", [gpu("n1", 0)]), now=T0)
    with django_assert_num_queries(1):
        node_heartbeat("n1", now=T0 + seconds(10))
    assert Node.objects.get(name="n1").last_heartbeat == T0 + seconds(10)


def test_node_goes_down_only_after_three_missed_intervals(interval):
    node_register(info=node_info("n1", [gpu("n1", 0)]), now=T0)
    node_register(info=node_info("n2", [gpu("n2", 0)]), now=T0)
    node_heartbeat("n2", now=T0 + seconds(25))

    assert nodes_mark_down(now=T0 + seconds(29)) == []
    assert nodes_mark_down(now=T0 + seconds(31)) == ["n1"]

    n1, n2 = Node.objects.get(name="n1"), Node.objects.get(name="n2")
    assert n1.state == Node.State.DOWN and n1.state_changed_at == T0 + seconds(31)
    assert n2.state == Node.State.READY
    event = AuditEvent.objects.get(action="node.down")
    assert event.target_id == str(n1.pk) and event.changes["state"] == ["ready", "down"]
    # Running it again changes nothing and records nothing.
    assert nodes_mark_down(now=T0 + seconds(32)) == []
    assert AuditEvent.objects.filter(action="node.down").count() == 1
    assert audit_chain_verify().ok


def test_down_node_keeps_its_allocations_and_returns_on_heartbeat(interval, team, member):
    node_register(info=node_info("n1", [gpu("n1", 0)]), now=T0)
    allocation = allocate(team=team, user=member, device=GpuDevice.objects.get())
    nodes_mark_down(now=T0 + seconds(60))

    allocation.refresh_from_db()
    assert allocation.released_at is None

    node_heartbeat("n1", now=T0 + seconds(70))
    node = Node.objects.get(name="n1")
    assert node.state == Node.State.READY and node.last_heartbeat == T0 + seconds(70)
    assert AuditEvent.objects.get(action="node.return").changes["state"] == ["down", "ready"]
    allocation.refresh_from_db()
    assert allocation.released_at is None


def test_draining_node_that_goes_down_comes_back_draining(interval, platform_admin):
    node = node_register(info=node_info("n1", [gpu("n1", 0)]), now=timezone.now())
    node_drain(node=node, actor=platform_admin, reason="PSU swap")
    nodes_mark_down(now=timezone.now() + seconds(31))
    assert Node.objects.get(name="n1").state == Node.State.DOWN

    node_register(info=node_info("n1", [gpu("n1", 0)]))
    node = Node.objects.get(name="n1")
    assert node.state == Node.State.DRAINING and node.drain_reason == "PSU swap"


def test_heartbeat_of_an_unregistered_node_registers_it_from_the_source():
    name = gpus.source().node_names()[0]
    node_heartbeat(name)
    node = Node.objects.get(name=name)
    assert node.gpus.count() == len(gpus.source().inventory(name).gpus)
    assert AuditEvent.objects.filter(action="node.register").count() == 1


def test_heartbeat_of_an_unknown_node_is_refused_and_creates_nothing():
    with pytest.raises(NotFound):
        node_heartbeat("no-such-node")
    assert Node.objects.count() == 0
    assert AuditEvent.objects.count() == 0


def test_a_never_beating_node_goes_down_from_its_creation_time(interval):
    Node.objects.create(name="ghost", created_at=T0)
    assert nodes_mark_down(now=T0 + seconds(31)) == ["ghost"]


def test_mark_down_sends_a_scheduling_pass_on_commit(interval, django_capture_on_commit_callbacks):
    node_register(info=node_info("n1", [gpu("n1", 0)]), now=T0)
    with django_capture_on_commit_callbacks() as callbacks:
        nodes_mark_down(now=T0 + seconds(31))
    assert len(callbacks) == 1
    assert Allocation.objects.count() == 0


def test_beat_task_keeps_every_simulated_node_beating_in_embedded_mode():
    from scheduler import tasks

    tasks.node_heartbeat.apply(throw=True)
    names = set(gpus.source().node_names())
    assert set(Node.objects.values_list("name", flat=True)) == names
    stamps = dict(Node.objects.values_list("name", "last_heartbeat"))
    tasks.node_heartbeat.apply(throw=True)
    assert all(Node.objects.get(name=n).last_heartbeat > stamps[n] for n in names)


def test_under_celery_the_central_beat_beats_for_no_node(settings):
    """Each node agent beats for itself; a central beat must never keep a dead node alive."""
    from scheduler import agent

    settings.PORTAL_TASKS = "celery"
    assert agent.local_node_names() == []


def test_inventory_sync_command_registers_the_fleet():
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("inventory_sync", stdout=out)
    assert f"{len(gpus.source().node_names())} node(s) registered" in out.getvalue()
    assert "(simulated)" in out.getvalue()
    assert Node.objects.count() == len(gpus.source().node_names())


def test_embedded_down_check_never_flaps_its_own_nodes(interval):
    """After the demo server was stopped for a while, its first check beats the local nodes first."""
    from scheduler import tasks

    for name in gpus.source().node_names():
        node_register(info=gpus.source().inventory(name), now=T0)  # beat long ago
    assert tasks.nodes_mark_down.apply(throw=True).result == []
    assert set(Node.objects.values_list("state", flat=True)) == {Node.State.READY}
    assert not AuditEvent.objects.filter(action="node.down").exists()
