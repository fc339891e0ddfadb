"""Authorization table for the telemetry pages, history JSON and /metrics (issue 5)."""

from django.utils import timezone

from scheduler.models import Allocation, AllocationRequest, GpuDevice, Node
from tests.authz import Case, page

TEAM_SEE = dict(viewer=200, member=200, admin=200, owner=200)
STAFF_SEE = dict(approver=200, auditor=200, platform_admin=200)
TEAM_403 = dict(outsider=403, viewer=403, member=403, admin=403, owner=403)


def _node(world):
    return Node.objects.create(name="authz-tel-node", simulated=True)


def _gpu(world, index):
    return GpuDevice.objects.create(node=world.get("tel_node"), uuid=f"GPU-authz-tel-{index}", index=index, model="H100", memory_mb=81920)


def _held_gpu(world):
    """A GPU the team `vision` holds now."""
    gpu = _gpu(world, 0)
    request = AllocationRequest.objects.create(team=world.team, user=world.user("member"), flavor="H100",
                                               state=AllocationRequest.State.PLACED)
    Allocation.objects.create(request=request, team=world.team, node=gpu.node, gpu=gpu, started_at=timezone.now())
    return gpu


OBJECTS = {
    "tel_node": _node,
    "tel_held_gpu": _held_gpu,
    "tel_free_gpu": lambda w: _gpu(w, 1),
}


def _held(world):
    return {"uuid": world.get("tel_held_gpu").uuid}


def _free(world):
    return {"uuid": world.get("tel_free_gpu").uuid}


def _node_id(world):
    return {"node_id": world.get("tel_node").pk}


CASES = {
    "telemetry-gpu": [
        Case(expect=page(outsider=404, **TEAM_SEE, **STAFF_SEE), kwargs=_held),
        Case(expect=page(outsider=404, viewer=404, member=404, admin=404, owner=404, **STAFF_SEE), kwargs=_free),
    ],
    "telemetry-gpu-history": [
        Case(expect=page(outsider=404, **TEAM_SEE, **STAFF_SEE), kwargs=_held, query="window=hour"),
        Case(expect=page(outsider=404, viewer=404, member=404, admin=404, owner=404, **STAFF_SEE), kwargs=_free),
    ],
    "telemetry-team-gpus": [Case(expect=page(outsider=404, **TEAM_SEE, **STAFF_SEE), kwargs={"slug": "vision"})],
    "telemetry-team-history": [Case(expect=page(outsider=404, **TEAM_SEE, **STAFF_SEE), kwargs={"slug": "vision"})],
    "telemetry-fleet-heatmap": [Case(expect=page(**TEAM_403, **STAFF_SEE))],
    "telemetry-node-history": [Case(expect=page(**TEAM_403, **STAFF_SEE), kwargs=_node_id, query="window=day")],
    # scrapers use the bearer token (tests/telemetry/test_metrics.py); a browser session needs platform admin
    "metrics": [Case(expect=dict(anonymous=401, **TEAM_403, approver=403, auditor=403, platform_admin=200))],
}
