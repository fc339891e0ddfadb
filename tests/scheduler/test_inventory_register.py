"""Registering a node's inventory: idempotent, matched by UUID, vanished hardware kept but unhealthy."""

import pytest

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from scheduler import gpus
from scheduler.inventory import PARKED_INDEX_BASE, VANISHED_MESSAGE, inventory_sync_all, node_register
from scheduler.models import Allocation, GpuDevice, GpuHealthEvent, MigSlice, Node
from tests.scheduler.inventory_helpers import allocate, gpu, node_info

pytestmark = pytest.mark.django_db


def test_sync_registers_the_whole_simulated_fleet_once():
    source = gpus.source()
    nodes = inventory_sync_all()
    assert sorted(n.name for n in nodes) == sorted(source.node_names())
    expected_gpus = sum(len(source.inventory(n).gpus) for n in source.node_names())
    expected_slices = sum(len(g.slices) for n in source.node_names() for g in source.inventory(n).gpus)
    assert GpuDevice.objects.count() == expected_gpus
    assert MigSlice.objects.count() == expected_slices > 0
    assert all(n.simulated and n.state == Node.State.READY and n.last_heartbeat for n in Node.objects.all())
    assert AuditEvent.objects.filter(action="node.register").count() == len(nodes)

    inventory_sync_all()
    inventory_sync_all()

    assert Node.objects.count() == len(nodes)
    assert GpuDevice.objects.count() == expected_gpus
    assert MigSlice.objects.count() == expected_slices
    # Nothing changed, so nothing more was audited.
    assert AuditEvent.objects.count() == len(nodes)
    assert audit_chain_verify().ok


def test_mig_gpu_is_registered_with_its_slices():
    inventory_sync_all()
    mig_gpu = GpuDevice.objects.get(mig_enabled=True)
    assert mig_gpu.model == "H200"
    assert list(mig_gpu.mig_slices.values_list("profile", flat=True)) == ["3g.71gb", "2g.35gb", "1g.18gb", "1g.18gb"]
    assert all(s.healthy for s in mig_gpu.mig_slices.all())


def test_labels_capacity_and_gpu_facts_are_refreshed_and_audited():
    node_register(info=node_info("n1", [gpu("n1", 0), gpu("n1", 1)], zone="a"))
    node_register(info=node_info("n1", [gpu("n1", 0, model="H200"), gpu("n1", 1)], zone="b"))
    node = Node.objects.get(name="n1")
    assert node.labels == {"zone": "b"}
    assert GpuDevice.objects.get(uuid="GPU-n1-0").model == "H200"
    event = AuditEvent.objects.filter(action="node.inventory_change").get()
    assert event.changes["labels"] == [{"zone": "a"}, {"zone": "b"}]
    assert event.changes["gpus_changed"] == ["GPU-n1-0"]


def test_vanished_gpu_keeps_its_row_and_allocation_and_is_marked_unhealthy(team, member):
    node_register(info=node_info("n1", [gpu("n1", 0), gpu("n1", 1)]))
    held = GpuDevice.objects.get(uuid="GPU-n1-1")
    allocation = allocate(team=team, user=member, device=held)

    node_register(info=node_info("n1", [gpu("n1", 0)]))

    held.refresh_from_db()
    allocation.refresh_from_db()
    assert not held.healthy and held.health_message == VANISHED_MESSAGE
    assert allocation.released_at is None  # the workspace decides; inventory never deletes what is referenced
    assert GpuHealthEvent.objects.filter(gpu=held, kind="vanished").count() == 1
    assert AuditEvent.objects.get(action="node.inventory_change").changes["gpus_vanished"] == ["GPU-n1-1"]

    # Reported again: healthy again, same row.
    node_register(info=node_info("n1", [gpu("n1", 0), gpu("n1", 1)]))
    held.refresh_from_db()
    assert held.healthy and held.health_message == ""
    assert GpuDevice.objects.filter(node__name="n1").count() == 2


def test_replaced_gpu_takes_the_index_and_the_old_row_is_parked(team, member):
    node_register(info=node_info("n1", [gpu("n1", 0), gpu("n1", 1)]))
    old = GpuDevice.objects.get(uuid="GPU-n1-0")
    allocate(team=team, user=member, device=old, state="finished")

    node_register(info=node_info("n1", [gpu("n1", 0, uuid="GPU-new"), gpu("n1", 1)]))

    old.refresh_from_db()
    new = GpuDevice.objects.get(uuid="GPU-new")
    assert new.index == 0 and new.healthy
    assert old.index == PARKED_INDEX_BASE + old.pk and not old.healthy
    assert Allocation.objects.filter(gpu=old).count() == 1


def test_gpus_that_swap_indexes_are_updated_without_collision():
    node_register(info=node_info("n1", [gpu("n1", 0, uuid="A"), gpu("n1", 1, uuid="B")]))
    node_register(info=node_info("n1", [gpu("n1", 1, uuid="A"), gpu("n1", 0, uuid="B")]))
    assert dict(GpuDevice.objects.values_list("uuid", "index")) == {"A": 1, "B": 0}


def test_changed_mig_layout_removes_unused_slices_and_keeps_referenced_ones_unhealthy(team, member):
    node_register(info=node_info("n1", [gpu("n1", 0, slices=("3g.40gb", "2g.20gb", "1g.10gb"))]))
    referenced = MigSlice.objects.get(index=1)
    allocate(team=team, user=member, device=referenced)

    node_register(info=node_info("n1", [gpu("n1", 0, slices=("3g.40gb",))]))

    assert list(MigSlice.objects.filter(healthy=True).values_list("profile", flat=True)) == ["3g.40gb"]
    referenced.refresh_from_db()
    assert not referenced.healthy
    assert not MigSlice.objects.filter(profile="1g.10gb").exists()
    event = AuditEvent.objects.get(action="node.inventory_change")
    assert event.changes["slices_vanished"] == [referenced.uuid]
    assert len(event.changes["slices_removed"]) == 1


def test_gpu_leaving_mig_mode_is_whole_again():
    node_register(info=node_info("n1", [gpu("n1", 0, slices=("1g.10gb", "1g.10gb"))]))
    node_register(info=node_info("n1", [gpu("n1", 0)]))
    row = GpuDevice.objects.get()
    assert not row.mig_enabled
    assert row.mig_slices.count() == 0


def test_a_gpu_moved_to_another_node_follows_it():
    node_register(info=node_info("n1", [gpu("n1", 0, uuid="X")]))
    node_register(info=node_info("n2", [gpu("n2", 0, uuid="X")]))
    assert GpuDevice.objects.get(uuid="X").node.name == "n2"
    assert GpuDevice.objects.count() == 1
