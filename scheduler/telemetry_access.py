"""Who may watch which GPUs live (issue 5). Registered on governance.access's RuleSet so views,
the metrics endpoint and the websocket consumer all ask the one access layer.

- a team's GPUs: anyone in the team (viewer and up) and platform staff;
- one GPU: platform staff, or a member of a team that holds it right now (a workspace page
  subscribes to its own GPUs this way, without the scheduler knowing about workspaces);
- a node or the whole fleet: platform admins, approvers, auditors.
"""

import rules
from django.db.models import Q
from django.http import Http404

from governance.access import is_platform_admin, is_platform_staff, is_team_viewer, perms, require, team_roles
from scheduler.models import Allocation, GpuDevice, Node
from scheduler import metrics  # noqa: F401 - connects the scheduling-pass duration recorder


def gpu_holder_team_ids(gpu: GpuDevice) -> set[int]:
    """Teams holding the GPU or one of its MIG slices now (cached on the object)."""
    cached = getattr(gpu, "_holder_team_ids", None)
    if cached is None:
        cached = set(
            Allocation.objects.filter(released_at__isnull=True)
            .filter(Q(gpu_id=gpu.pk) | Q(mig_slice__gpu_id=gpu.pk))
            .values_list("team_id", flat=True)
        )
        gpu._holder_team_ids = cached
    return cached


@rules.predicate
def is_member_of_holding_team(user, gpu) -> bool:
    if not isinstance(gpu, GpuDevice):
        return False
    roles = team_roles(user)
    return bool(roles) and bool(gpu_holder_team_ids(gpu) & set(roles))


for _name, _rule in {
    "telemetry.view_team": is_team_viewer | is_platform_staff,
    "telemetry.view_gpu": is_platform_staff | is_member_of_holding_team,
    "telemetry.view_node": is_platform_staff,
    "telemetry.view_fleet": is_platform_staff,
    "telemetry.metrics": is_platform_admin,
}.items():
    if not perms.rule_exists(_name):
        perms.add_rule(_name, _rule)


def gpu_get_for_user(user, uuid: str, perm: str = "telemetry.view_gpu") -> GpuDevice:
    """The GPU, or 404 when the user may not see it (we do not confirm that it exists)."""
    gpu = GpuDevice.objects.select_related("node").filter(uuid=uuid).first()
    if gpu is None or not perms.test_rule(perm, user, gpu):
        raise Http404("No such GPU.")
    return gpu


def node_get_for_user(user, node_id: int, perm: str = "telemetry.view_node") -> Node:
    """The node for fleet staff; 404 when it does not exist, 403 (audited) for anyone else."""
    node = Node.objects.filter(pk=node_id).first()
    if node is None:
        raise Http404("No such node.")
    require(user, perm, node)
    return node
