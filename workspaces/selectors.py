"""Workspace reads. Each selector owns its joins; list pages and the list endpoint pin their query counts."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.db.models import Count, Min, Q
from django.utils import timezone

from governance.access import is_platform_staff, team_roles
from governance.models import QuotaGrant, Team
from scheduler.models import Allocation, GpuDevice, MigSlice, Node
from workspaces.models import Image, Workspace


def workspace_list_for_user(*, user, team: Team | None = None, live_only: bool = False):
    """What the user may see: their own, every workspace of teams they belong to, all for platform staff."""
    qs = Workspace.objects.select_related("team", "owner", "image", "node", "allocation_request")
    if not is_platform_staff(user):
        qs = qs.filter(Q(owner_id=user.pk) | Q(team_id__in=list(team_roles(user))))
    if team is not None:
        qs = qs.filter(team=team)
    if live_only:
        qs = qs.filter(state__in=Workspace.LIVE_STATES)
    return qs.order_by("-created_at", "-id")


def workspace_devices(*, workspace: Workspace) -> list[Allocation]:
    """The live allocations (GPU or MIG slice) behind a workspace, for its page and charts."""
    if not workspace.allocation_request_id:
        return []
    return list(Allocation.objects.filter(request_id=workspace.allocation_request_id, released_at__isnull=True)
                .select_related("gpu", "mig_slice__gpu", "node").order_by("gpu__index", "mig_slice__index", "id"))


def workspace_preempt_at(*, workspace: Workspace) -> datetime.datetime | None:
    """When the scheduler will take the GPUs back (a preemption warning), or None."""
    if not workspace.allocation_request_id:
        return None
    return (Allocation.objects.filter(request_id=workspace.allocation_request_id, released_at__isnull=True,
                                      preempt_at__isnull=False).aggregate(at=Min("preempt_at"))["at"])


def image_choices_for(*, team: Team | None):
    images = Image.objects.filter(active=True).order_by("name")
    if team is None:
        return images
    allowed = team.policy.allowed_images
    return images.filter(name__in=allowed) if allowed else images


def flavor_choices() -> list[tuple[str, str]]:
    """GPU models and MIG profiles present in the inventory, as form choices ("H100", "mig:1g.18gb")."""
    models = GpuDevice.objects.filter(mig_enabled=False).values_list("model", flat=True).distinct().order_by("model")
    profiles = MigSlice.objects.values_list("profile", flat=True).distinct().order_by("profile")
    return [(m, f"{m} (whole GPU)") for m in models] + [(f"mig:{p}", f"MIG slice {p}") for p in profiles]


@dataclass(frozen=True)
class CapacityHint:
    flavor: str
    mig: bool
    free_now: int
    largest_on_one_node: int
    quota: int
    in_use: int
    estimated_start: datetime.datetime | None

    @property
    def quota_left(self) -> int:
        return max(0, self.quota - self.in_use)


def capacity_hint(*, team: Team, flavor: str, mig: bool, count: int) -> CapacityHint:
    """Free devices of a flavor now, the team's quota left, and when `count` could start (a few queries)."""
    now = timezone.now()
    ready = Node.objects.filter(state=Node.State.READY)
    if mig:
        devices = MigSlice.objects.filter(profile=flavor, gpu__node__in=ready, gpu__mig_enabled=True, healthy=True)
        free = devices.exclude(pk__in=Allocation.objects.filter(released_at__isnull=True, mig_slice__isnull=False)
                               .values("mig_slice_id"))
        live = Allocation.objects.filter(mig_slice__profile=flavor, released_at__isnull=True)
        per_node = free.values("gpu__node").annotate(n=Count("id")).order_by("-n").values_list("n", flat=True)[:1]
        team_live = Allocation.objects.filter(team=team, mig_slice__profile=flavor, released_at__isnull=True).count()
    else:
        devices = GpuDevice.objects.filter(model=flavor, mig_enabled=False, node__in=ready, healthy=True)
        free = devices.exclude(pk__in=Allocation.objects.filter(released_at__isnull=True, gpu__isnull=False)
                               .values("gpu_id"))
        live = Allocation.objects.filter(gpu__model=flavor, released_at__isnull=True)
        per_node = free.values("node").annotate(n=Count("id")).order_by("-n").values_list("n", flat=True)[:1]
        team_live = Allocation.objects.filter(team=team, gpu__model=flavor, mig_slice__isnull=True, released_at__isnull=True).count()
    free_now = free.count()
    largest = next(iter(per_node), 0)
    grants = QuotaGrant.objects.filter(team=team, flavor=flavor, starts_at__lte=now).filter(
        Q(ends_at__isnull=True) | Q(ends_at__gt=now))
    quota = sum(grants.values_list("count", flat=True))
    eta = None
    if largest < count:
        # The count-th planned end among live allocations of this flavor: a rough earliest start.
        ends = list(live.filter(planned_end__isnull=False).order_by("planned_end").values_list("planned_end", flat=True)[: max(count - largest, 1)])
        eta = ends[-1] if ends else None
    return CapacityHint(flavor=flavor, mig=mig, free_now=free_now, largest_on_one_node=largest, quota=quota,
                        in_use=team_live, estimated_start=eta)


def workspace_idle_status_or_none(workspace: Workspace):
    """Colleague W2's idle status (warning banner), when the culler module is present."""
    try:
        from workspaces.housekeeping import workspace_idle_status
    except ImportError:
        return None
    try:
        return workspace_idle_status(workspace)
    except Exception:  # noqa: BLE001 — a banner must never break the page
        return None
