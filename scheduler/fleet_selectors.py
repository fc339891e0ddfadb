"""Reads for the Fleet pages and the inventory API. Each selector owns its joins and runs a fixed
number of queries whatever the fleet's size (pinned in tests)."""

import datetime
from collections import defaultdict
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import F, Prefetch, Q
from django.utils import timezone

from governance.access import can, is_platform_staff, team_roles
from scheduler.models import Allocation, AllocationRequest, GpuDevice, GpuHealthEvent, MigSlice, Node, Reservation


@dataclass
class FlavorCount:
    flavor: str
    total: int = 0
    used: int = 0
    unavailable: int = 0  # unhealthy or vanished

    @property
    def free(self) -> int:
        return self.total - self.used - self.unavailable


@dataclass
class NodeSummary:
    node: Node
    models: list[FlavorCount] = field(default_factory=list)  # whole GPUs per model
    mig: list[FlavorCount] = field(default_factory=list)  # MIG slices per profile
    gpu_count: int = 0
    used_count: int = 0  # devices (GPUs or slices) with a live allocation
    preempting: int = 0

    @property
    def name(self) -> str:
        return self.node.name


@dataclass
class TeamUsage:
    team_id: int
    team_name: str
    team_slug: str
    by_flavor: dict[str, int] = field(default_factory=dict)
    devices: int = 0
    borrowed: int = 0
    preemptible: int = 0
    preempting: int = 0
    requests: set = field(default_factory=set)

    @property
    def request_count(self) -> int:
        return len(self.requests)


@dataclass
class FleetOverview:
    nodes: list[NodeSummary]
    totals: list[FlavorCount]
    by_team: list[TeamUsage]
    simulated: bool
    states: dict[str, int]


def _live_allocation_rows():
    return Allocation.objects.filter(released_at__isnull=True).values(
        "id", "request_id", "node_id", "gpu_id", "mig_slice_id", "mig_slice__gpu_id", "team_id", "team__name", "team__slug",
        "gpu__model", "mig_slice__profile", "borrowed", "preemptible", "preempt_at",
    )


def _nodes_with_devices():
    return Node.objects.prefetch_related(
        Prefetch("gpus", queryset=GpuDevice.objects.order_by("index")),
        Prefetch("gpus__mig_slices", queryset=MigSlice.objects.order_by("index")),
    ).order_by("name")


def fleet_overview() -> FleetOverview:
    """Nodes with GPUs per model and MIG slices (used / free), fleet totals, and live allocations
    by team. Four queries."""
    nodes = list(_nodes_with_devices())
    live = list(_live_allocation_rows())
    busy_gpus = {a["gpu_id"] for a in live if a["gpu_id"]}
    busy_slices = {a["mig_slice_id"] for a in live if a["mig_slice_id"]}
    preempting_by_node: dict[int, int] = defaultdict(int)
    for a in live:
        if a["preempt_at"]:
            preempting_by_node[a["node_id"]] += 1

    totals: dict[str, FlavorCount] = {}
    summaries = [_summarise(node, busy_gpus, busy_slices, preempting_by_node.get(node.pk, 0), totals) for node in nodes]

    by_team: dict[int, TeamUsage] = {}
    for a in live:
        usage = by_team.setdefault(a["team_id"], TeamUsage(a["team_id"], a["team__name"], a["team__slug"]))
        flavor = a["gpu__model"] or f"MIG {a['mig_slice__profile']}"
        usage.by_flavor[flavor] = usage.by_flavor.get(flavor, 0) + 1
        usage.devices += 1
        usage.borrowed += a["borrowed"]
        usage.preemptible += a["preemptible"] or a["borrowed"]
        usage.preempting += a["preempt_at"] is not None
        usage.requests.add(a["request_id"])
    states = {state: 0 for state in Node.State.values}
    for node in nodes:
        states[node.state] += 1
    return FleetOverview(
        nodes=summaries,
        totals=sorted(totals.values(), key=lambda c: (c.flavor.startswith("MIG"), c.flavor)),
        by_team=sorted(by_team.values(), key=lambda u: (-u.devices, u.team_name)),
        simulated=gpus_simulated(nodes),
        states=states,
    )


def _summarise(node: Node, busy_gpus: set, busy_slices: set, preempting: int,
               totals: dict[str, FlavorCount] | None = None) -> NodeSummary:
    """Count a node's devices (prefetched) per model / MIG profile; add them to `totals` when given."""
    totals = {} if totals is None else totals
    models: dict[str, FlavorCount] = {}
    mig: dict[str, FlavorCount] = {}
    summary = NodeSummary(node=node, preempting=preempting)
    for gpu in node.gpus.all():
        summary.gpu_count += 1
        if gpu.mig_enabled:
            for sl in gpu.mig_slices.all():
                key = f"MIG {sl.profile}"
                _count_device(mig.setdefault(sl.profile, FlavorCount(sl.profile)), totals.setdefault(key, FlavorCount(key)),
                              used=sl.pk in busy_slices, ok=sl.healthy and gpu.healthy)
                summary.used_count += sl.pk in busy_slices
            continue
        _count_device(models.setdefault(gpu.model, FlavorCount(gpu.model)), totals.setdefault(gpu.model, FlavorCount(gpu.model)),
                      used=gpu.pk in busy_gpus, ok=gpu.healthy)
        summary.used_count += gpu.pk in busy_gpus
    summary.models = sorted(models.values(), key=lambda c: c.flavor)
    summary.mig = sorted(mig.values(), key=lambda c: c.flavor)
    return summary


def _count_device(count: FlavorCount, total: FlavorCount, *, used: bool, ok: bool) -> None:
    for c in (count, total):
        c.total += 1
        if used:
            c.used += 1
        elif not ok:
            c.unavailable += 1


def gpus_simulated(nodes=None) -> bool:
    """Whether what the fleet pages show is simulated: the source says so, or any node row does."""
    # Read the setting, not gpus.source(): a web host without drivers must not try NVML.
    if settings.PORTAL_GPU_SOURCE.startswith("simulated"):
        return True
    return any(n.simulated for n in nodes) if nodes is not None else Node.objects.filter(simulated=True).exists()


def node_summary(*, node: Node) -> NodeSummary:
    """One node's row as on the Fleet page (after an action swaps it). Four queries."""
    return node_summaries([_nodes_with_devices().get(pk=node.pk)])[0]


def node_summaries(nodes: list[Node]) -> list[NodeSummary]:
    """Summaries of nodes fetched with `node_list()` (devices prefetched): one more query."""
    live = list(_live_allocation_rows().filter(node_id__in=[n.pk for n in nodes]))
    busy_gpus = {a["gpu_id"] for a in live if a["gpu_id"]}
    busy_slices = {a["mig_slice_id"] for a in live if a["mig_slice_id"]}
    preempting: dict[int, int] = defaultdict(int)
    for a in live:
        if a["preempt_at"]:
            preempting[a["node_id"]] += 1
    return [_summarise(node, busy_gpus, busy_slices, preempting.get(node.pk, 0)) for node in nodes]


# --- one node --------------------------------------------------------------------------------


@dataclass
class DeviceRow:
    gpu: GpuDevice
    allocation: Allocation | None
    slices: list[tuple[MigSlice, Allocation | None]]


@dataclass
class NodeDetail:
    node: Node
    devices: list[DeviceRow]
    health_events: list[GpuHealthEvent]


def node_detail(*, node: Node, events: int = 20) -> NodeDetail:
    """A node's GPUs and slices, each with the live allocation holding it, and its latest health events."""
    node = _nodes_with_devices().get(pk=node.pk)
    live = (Allocation.objects.filter(node=node, released_at__isnull=True)
            .select_related("team", "request", "request__user"))
    by_gpu, by_slice = {}, {}
    for allocation in live:
        if allocation.gpu_id:
            by_gpu[allocation.gpu_id] = allocation
        else:
            by_slice[allocation.mig_slice_id] = allocation
    devices = [DeviceRow(gpu=g, allocation=by_gpu.get(g.pk), slices=[(s, by_slice.get(s.pk)) for s in g.mig_slices.all()])
               for g in node.gpus.all()]
    health = list(GpuHealthEvent.objects.filter(node=node).select_related("gpu").order_by("-ts")[:events])
    return NodeDetail(node=node, devices=devices, health_events=health)


def node_history(*, node: Node, limit: int = 20):
    """The node's recorded state changes (registered, down, returned, drained, confirmed gone ...),
    newest first, from the audit trail."""
    from governance.models import AuditEvent

    events = list(AuditEvent.objects.filter(target_type="scheduler.node", target_id=str(node.pk)).order_by("-id")[:limit])
    for event in events:
        event.details = "; ".join(
            f"{key}: {value[0]} → {value[1]}" if isinstance(value, list) and len(value) == 2 else f"{key}: {value}"
            for key, value in (event.changes or {}).items())
    return events


# --- lists for the API -------------------------------------------------------------------------


def node_list():
    """Nodes with their GPUs and slices prefetched (three queries)."""
    return _nodes_with_devices()


def gpu_list(*, node: str = "", model: str = "", healthy: bool | None = None):
    qs = GpuDevice.objects.select_related("node").prefetch_related(
        Prefetch("mig_slices", queryset=MigSlice.objects.order_by("index"))).order_by("node__name", "index")
    if node:
        qs = qs.filter(node__name=node)
    if model:
        qs = qs.filter(model=model)
    if healthy is not None:
        qs = qs.filter(healthy=healthy)
    return qs


def live_allocations_by_device(*, gpu_ids=None) -> tuple[dict[int, dict], dict[int, dict]]:
    """{gpu_id: allocation facts}, {slice_id: allocation facts} for live allocations (one query)."""
    rows = Allocation.objects.filter(released_at__isnull=True)
    if gpu_ids is not None:
        rows = rows.filter(Q(gpu_id__in=gpu_ids) | Q(mig_slice__gpu_id__in=gpu_ids))
    by_gpu, by_slice = {}, {}
    for a in rows.values("gpu_id", "mig_slice_id", "request_id", "team__slug", "borrowed", "preempt_at", "planned_end"):
        facts = {"request": a["request_id"], "team": a["team__slug"], "borrowed": a["borrowed"],
                 "preempt_at": a["preempt_at"], "planned_end": a["planned_end"]}
        if a["gpu_id"]:
            by_gpu[a["gpu_id"]] = facts
        else:
            by_slice[a["mig_slice_id"]] = facts
    return by_gpu, by_slice


# --- the queue -------------------------------------------------------------------------------


def allocation_requests_visible_to(user, *, state: str = "", team_slug: str = ""):
    """Platform staff see every request; others those of their teams (any role). Queue order, as
    scheduler.selectors.pending_queue, whatever the state."""
    qs = AllocationRequest.objects.select_related("team", "user")
    if not (is_platform_staff(user) or can(user, "fleet.view")):
        qs = qs.filter(team_id__in=list(team_roles(user)))
    if state:
        qs = qs.filter(state=state)
    if team_slug:
        qs = qs.filter(team__slug=team_slug)
    return qs.order_by(F("queue_position_global").asc(nulls_last=True), "created_at", "id")


# --- reservations ----------------------------------------------------------------------------


def reservations_current(*, now: datetime.datetime | None = None):
    """Reservations not yet over, soonest first."""
    now = now or timezone.now()
    return Reservation.objects.filter(ends_at__gt=now).select_related("team", "created_by").order_by("starts_at", "id")


def flavors_in_fleet() -> tuple[list[str], list[str]]:
    """(whole-GPU models, MIG profiles) present in the inventory (two queries)."""
    models = sorted(set(GpuDevice.objects.filter(mig_enabled=False).values_list("model", flat=True)))
    profiles = sorted(set(MigSlice.objects.filter(gpu__mig_enabled=True).values_list("profile", flat=True)))
    return models, profiles
