"""Reads about the queue and capacity, for pages, the API and the workspace form. Each selector
owns its joins so callers never trigger per-row queries."""

from dataclasses import dataclass

from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from governance.models import QuotaGrant, Team, TeamPolicy
from scheduler.models import Allocation, AllocationRequest, GpuDevice, MigSlice, Node

REASON_LABELS = {
    "waiting_for_quota": "Waiting for quota",
    "no_capacity_together": "No node has enough free together",
    "needs_one_node": "Needs one node",
    "node_draining": "Node draining",
    "blocked_by_policy": "Blocked by policy",
    "preemption_in_progress": "Preemption in progress",
    "reserved": "Held for a reservation",
    "queued_behind": "Queued behind others",
}


def pending_queue(*, teams: QuerySet | list | None = None) -> QuerySet:
    """Pending requests in queue order (the last pass's global position; new ones last), with team and user."""
    qs = AllocationRequest.objects.filter(state=AllocationRequest.State.PENDING).select_related("team", "user")
    if teams is not None:
        qs = qs.filter(team__in=teams)
    # Rows the pass has not seen yet have no position: after the ranked ones, oldest first.
    return qs.order_by(F("queue_position_global").asc(nulls_last=True), "created_at", "id")


def requests_for_teams(*, teams, states=None) -> QuerySet:
    qs = AllocationRequest.objects.filter(team__in=teams).select_related("team", "user")
    if states:
        qs = qs.filter(state__in=states)
    return qs.order_by("-created_at", "-id")


@dataclass(frozen=True)
class WaitInfo:
    waiting: bool
    reasons: list[dict]
    position_team: int | None
    position_global: int | None
    estimated_start: object


def request_wait_info(request: AllocationRequest) -> WaitInfo:
    """Why a request waits, ranked, with labels; empty once placed or ended."""
    if request.state != AllocationRequest.State.PENDING:
        return WaitInfo(False, [], None, None, None)
    reasons = [{**r, "label": REASON_LABELS.get(r.get("code"), r.get("code", ""))} for r in (request.pending_reasons or [])]
    return WaitInfo(True, reasons, request.queue_position_team, request.queue_position_global, request.estimated_start)


def live_allocations(*, request_ids=None, team=None) -> QuerySet:
    qs = Allocation.objects.filter(released_at__isnull=True).select_related("node", "gpu", "mig_slice", "mig_slice__gpu", "team", "request")
    if request_ids is not None:
        qs = qs.filter(request_id__in=request_ids)
    if team is not None:
        qs = qs.filter(team=team)
    return qs.order_by("node__name", "gpu__index", "mig_slice__gpu__index", "mig_slice__index")


def request_devices(request: AllocationRequest) -> list[dict]:
    """The devices a request holds: node, GPU or slice UUID, index (what a launcher needs)."""
    rows = []
    for a in live_allocations(request_ids=[request.pk]):
        if a.gpu_id:
            rows.append({"node": a.node.name, "uuid": a.gpu.uuid, "index": a.gpu.index, "model": a.gpu.model, "mig": False})
        else:
            rows.append({"node": a.node.name, "uuid": a.mig_slice.uuid, "index": a.mig_slice.gpu.index,
                         "model": a.mig_slice.profile, "mig": True})
    return rows


def flavor_availability() -> list[dict]:
    """Per flavor (GPU model or MIG profile): devices in the fleet, on ready nodes, and free now on
    ready nodes. Three queries whatever the fleet's size."""
    busy_gpus = set(Allocation.objects.filter(released_at__isnull=True, gpu__isnull=False).values_list("gpu_id", flat=True))
    busy_slices = set(Allocation.objects.filter(released_at__isnull=True, mig_slice__isnull=False).values_list("mig_slice_id", flat=True))
    busy_parents = set(Allocation.objects.filter(released_at__isnull=True, mig_slice__isnull=False).values_list("mig_slice__gpu_id", flat=True))
    out: dict[tuple[str, bool], dict] = {}
    for gpu_id, model, state in GpuDevice.objects.filter(mig_enabled=False, healthy=True, node__gone_confirmed_at__isnull=True).values_list(
            "id", "model", "node__state"):
        row = out.setdefault((model, False), {"flavor": model, "mig": False, "total": 0, "ready": 0, "free": 0})
        row["total"] += 1
        if state == Node.State.READY:
            row["ready"] += 1
            if gpu_id not in busy_gpus and gpu_id not in busy_parents:
                row["free"] += 1
    for slice_id, gpu_id, profile, state in MigSlice.objects.filter(
            gpu__mig_enabled=True, healthy=True, gpu__healthy=True, gpu__node__gone_confirmed_at__isnull=True).values_list(
            "id", "gpu_id", "profile", "gpu__node__state"):
        row = out.setdefault((profile, True), {"flavor": profile, "mig": True, "total": 0, "ready": 0, "free": 0})
        row["total"] += 1
        if state == Node.State.READY:
            row["ready"] += 1
            if slice_id not in busy_slices and gpu_id not in busy_gpus:
                row["free"] += 1
    return sorted(out.values(), key=lambda r: (r["mig"], r["flavor"]))


def team_quota_usage(team: Team, *, now=None) -> list[dict]:
    """Per flavor: granted now, held within grants, borrowed, and the team's borrowing limit."""
    now = now or timezone.now()
    granted: dict[str, int] = {}
    for flavor, count in QuotaGrant.objects.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now), team=team, starts_at__lte=now).values_list("flavor", "count"):
        granted[flavor] = granted.get(flavor, 0) + count
    held: dict[str, dict] = {}
    rows = (Allocation.objects.filter(team=team, released_at__isnull=True)
            .values("gpu__model", "mig_slice__profile", "borrowed").annotate(n=Count("id")))
    for row in rows:
        flavor = row["gpu__model"] or row["mig_slice__profile"]
        entry = held.setdefault(flavor, {"used": 0, "borrowed": 0})
        entry["borrowed" if row["borrowed"] else "used"] += row["n"]
    limit = TeamPolicy.objects.filter(team=team).values_list("borrow_limit", flat=True).first() or 0
    flavors = sorted(set(granted) | set(held))
    return [{"flavor": f, "granted": granted.get(f, 0), "used": held.get(f, {}).get("used", 0),
             "borrowed": held.get(f, {}).get("borrowed", 0), "borrow_limit": limit} for f in flavors]
