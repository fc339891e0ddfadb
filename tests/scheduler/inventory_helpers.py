"""Small inventories built by hand, for tests that change a node's hardware between reports."""

from django.utils import timezone

from scheduler.gpus import GpuInfo, NodeInfo, SliceInfo
from scheduler.models import Allocation, AllocationRequest, GpuDevice, MigSlice


def gpu(node: str, index: int, *, uuid: str | None = None, model: str = "H100", slices: tuple[str, ...] = (), group: str = "") -> GpuInfo:
    uuid = uuid or f"GPU-{node}-{index}"
    return GpuInfo(
        uuid=uuid, index=index, model=model, memory_mb=81920, serial=f"S-{uuid}", nvlink_group=group,
        mig_enabled=bool(slices),
        slices=tuple(SliceInfo(uuid=f"MIG-{uuid}-{s}", index=s, profile=p, memory_mb=18432) for s, p in enumerate(slices)),
    )


def node_info(name: str, gpus: list[GpuInfo], **labels) -> NodeInfo:
    return NodeInfo(name=name, gpus=tuple(gpus), labels=labels or {"zone": "test"}, capacity={"cpu": 64}, simulated=True)


def allocate(*, team, user, device: GpuDevice | MigSlice, state=AllocationRequest.State.PLACED) -> Allocation:
    """A placed request holding one device, written directly (as a scheduling pass would)."""
    is_slice = isinstance(device, MigSlice)
    gpu_row = device.gpu if is_slice else device
    request = AllocationRequest.objects.create(team=team, user=user, flavor=device.profile if is_slice else device.model,
                                               mig=is_slice, count=1, state=state, placed_at=timezone.now())
    return Allocation.objects.create(request=request, team=team, node=gpu_row.node, gpu=None if is_slice else device,
                                     mig_slice=device if is_slice else None,
                                     planned_end=timezone.now() + timezone.timedelta(hours=1))
