"""Telemetry fixtures: a small simulated fleet registered as inventory rows, and allocations."""

from pathlib import Path

import pytest
from django.utils import timezone

from scheduler import gpus
from scheduler.models import Allocation, AllocationRequest, GpuDevice, MigSlice, Node

FLEET = Path(__file__).with_name("fleet.yaml")


@pytest.fixture
def fleet(settings, db):
    """Inventory rows for tests/telemetry/fleet.yaml, the GPU source pointed at it.
    Returns {node name: Node}."""
    settings.PORTAL_GPU_SOURCE = f"simulated:{FLEET}"
    nodes = {}
    for info in gpus.load_fleet_file(FLEET):
        node = Node.objects.create(name=info.name, labels=info.labels, simulated=True, last_heartbeat=timezone.now())
        for g in info.gpus:
            row = GpuDevice.objects.create(node=node, uuid=g.uuid, index=g.index, model=g.model, memory_mb=g.memory_mb,
                                           serial=g.serial, nvlink_group=g.nvlink_group, mig_enabled=g.mig_enabled)
            for s in g.slices:
                MigSlice.objects.create(gpu=row, uuid=s.uuid, profile=s.profile, index=s.index, memory_mb=s.memory_mb)
        nodes[info.name] = node
    return nodes


@pytest.fixture
def allocate(db):
    """allocate(team, user, gpu=GpuDevice | mig_slice=MigSlice) -> a live Allocation."""

    def make(team, user, *, gpu=None, mig_slice=None, started_at=None):
        node = gpu.node if gpu else mig_slice.gpu.node
        request = AllocationRequest.objects.create(team=team, user=user, flavor=gpu.model if gpu else mig_slice.profile,
                                                   mig=mig_slice is not None, state=AllocationRequest.State.PLACED)
        return Allocation.objects.create(request=request, team=team, node=node, gpu=gpu, mig_slice=mig_slice,
                                         started_at=started_at or timezone.now())

    return make


def gpu_of(node: Node, index: int) -> GpuDevice:
    return GpuDevice.objects.select_related("node").get(node=node, index=index)
