"""GPU inventory and node state: what hardware exists and which nodes may receive work.

Writes only, one service per state change (STYLE.md). A node agent reports its inventory
(`node_register`, from scheduler.gpus) and beats (`node_heartbeat`); a periodic check marks silent
nodes down (`nodes_mark_down`); platform admins drain, undrain and confirm a down node gone.

Node state machine (Node.State):
    ready ──drain──▶ draining ──undrain──▶ ready
    ready/draining ──no heartbeat for 3 intervals──▶ down ──heartbeat/register──▶ ready (or draining
    when an admin's drain is still in force: `drain_reason` outlives an outage)
    down ──confirm gone (admin)──▶ down + gone_confirmed_at: its live allocations are released and
    their requests go back to the queue.
Only `ready` nodes receive new work; a down node's allocations stay held until it returns or an
admin confirms it gone. Every change of state is audited in its transaction and sends a
scheduling pass on commit.
"""

import datetime
import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from governance.audit import PendingEvent, audit_record, audit_record_many, diff
from governance.models import User
from portal.errors import Conflict, DomainError, NotFound
from portal.tasks import enqueue
from scheduler import gpus
from scheduler.models import Allocation, AllocationRequest, GpuDevice, GpuHealthEvent, MigSlice, Node

log = logging.getLogger(__name__)

# Heartbeats a node may miss before it is marked down.
MISSED_HEARTBEATS_FOR_DOWN = 3
VANISHED_MESSAGE = "vanished from the node's inventory"
# A vanished GPU keeps its row (allocations and telemetry reference it) but gives its index to the
# GPU that now sits there: it is parked at this offset + its primary key, unique per node.
PARKED_INDEX_BASE = 1_000_000
DRAIN_REASON_MAX = 200


def _send_pass() -> None:
    from scheduler.tasks import schedule_pass

    enqueue(schedule_pass)


def heartbeat_interval() -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.PORTAL_HEARTBEAT_SECONDS)


def down_after() -> datetime.timedelta:
    """How long a node may stay silent before it is marked down."""
    return MISSED_HEARTBEATS_FOR_DOWN * heartbeat_interval()


# --- registration ------------------------------------------------------------------------------


@dataclass
class _InventoryChanges:
    gpus_added: list[str] = field(default_factory=list)
    gpus_vanished: list[str] = field(default_factory=list)
    gpus_returned: list[str] = field(default_factory=list)
    gpus_changed: list[str] = field(default_factory=list)
    slices_added: list[str] = field(default_factory=list)
    slices_vanished: list[str] = field(default_factory=list)
    slices_removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


_GPU_FIELDS = ("model", "memory_mb", "serial", "nvlink_group", "mig_enabled")


def node_register(*, info: gpus.NodeInfo, now: datetime.datetime | None = None) -> Node:
    """Create or refresh a node and its GPUs and MIG slices from an inventory report; idempotent.

    Rows are matched by UUID, never duplicated. A GPU or slice missing from the report keeps its
    row (allocations and telemetry reference it) and is marked unhealthy; a slice no allocation ever
    referenced is simply removed. A down node that reports comes back (ready, or draining while an
    admin's drain is in force). Audited only when something changed, so agent restarts are quiet."""
    now = now or timezone.now()
    with transaction.atomic():
        node, created = Node.objects.select_for_update().get_or_create(
            name=info.name,
            defaults={"labels": info.labels, "capacity": info.capacity, "simulated": info.simulated,
                      "last_heartbeat": now, "state_changed_at": now, "created_at": now},
        )
        before = {"labels": node.labels, "capacity": node.capacity, "simulated": node.simulated, "state": node.state}
        node.labels, node.capacity, node.simulated = dict(info.labels), dict(info.capacity), info.simulated
        node.last_heartbeat = now
        returned = not created and node.state == Node.State.DOWN
        if returned:
            node.state = Node.State.DRAINING if node.drain_reason else Node.State.READY
            node.gone_confirmed_at = None
            node.state_changed_at = now
        node.save()
        changes = _sync_gpus(node, info, now)
        after = {"labels": node.labels, "capacity": node.capacity, "simulated": node.simulated, "state": node.state}
        audit_changes = {**({} if created else diff(before, after)), **changes.as_dict()}
        if created:
            audit_changes["gpus"] = len(info.gpus)
            audit_record(action="node.register", actor=None, target=node, changes=audit_changes)
        elif returned:
            audit_record(action="node.return", actor=None, target=node, changes=audit_changes)
        elif audit_changes:
            audit_record(action="node.inventory_change", actor=None, target=node, changes=audit_changes)
        if created or returned or changes.as_dict():
            _send_pass()
    return node


def _sync_gpus(node: Node, info: gpus.NodeInfo, now: datetime.datetime) -> _InventoryChanges:
    changes = _InventoryChanges()
    reported = {g.uuid: g for g in info.gpus}
    # Rows of this node, plus any reported UUID registered under another node (a GPU moved hosts).
    existing = {g.uuid: g for g in GpuDevice.objects.select_for_update().filter(Q(node=node) | Q(uuid__in=list(reported)))}
    vanished = [g for uuid, g in existing.items() if uuid not in reported and g.node_id == node.pk]
    claimed_indexes = {g.index for g in info.gpus}

    # Two phases so that index swaps never collide on (node, index): first park every row whose
    # index must change, then give each its final index.
    to_park = [g for g in existing.values() if g.uuid in reported and (g.index != reported[g.uuid].index or g.node_id != node.pk)]
    to_park += [g for g in vanished if g.index in claimed_indexes]
    for gpu in to_park:
        gpu.index = PARKED_INDEX_BASE + gpu.pk
        GpuDevice.objects.filter(pk=gpu.pk).update(index=gpu.index)

    health_events = []
    for gpu in vanished:
        if gpu.healthy or gpu.health_message != VANISHED_MESSAGE:
            gpu.healthy, gpu.health_message = False, VANISHED_MESSAGE
            gpu.save(update_fields=["healthy", "health_message"])
            changes.gpus_vanished.append(gpu.uuid)
            health_events.append(GpuHealthEvent(node=node, gpu=gpu, ts=now, kind="vanished",
                                                message=f"GPU {gpu.uuid} is no longer reported by {node.name}."))

    new_rows = []
    for report in info.gpus:
        gpu = existing.get(report.uuid)
        if gpu is None:
            new_rows.append(GpuDevice(node=node, uuid=report.uuid, index=report.index, model=report.model,
                                      memory_mb=report.memory_mb, serial=report.serial, nvlink_group=report.nvlink_group,
                                      mig_enabled=report.mig_enabled))
            changes.gpus_added.append(report.uuid)
            continue
        dirty = gpu.index != report.index or gpu.node_id != node.pk
        if any(getattr(gpu, f) != getattr(report, f) for f in _GPU_FIELDS):
            changes.gpus_changed.append(report.uuid)
            dirty = True
        for f in _GPU_FIELDS:
            setattr(gpu, f, getattr(report, f))
        gpu.index, gpu.node = report.index, node
        if not gpu.healthy and gpu.health_message == VANISHED_MESSAGE:
            # Back in the report: healthy again. Other health problems are telemetry's to clear.
            gpu.healthy, gpu.health_message = True, ""
            changes.gpus_returned.append(report.uuid)
            dirty = True
        if dirty:
            gpu.save()
    if new_rows:
        GpuDevice.objects.bulk_create(new_rows)
    if health_events:
        GpuHealthEvent.objects.bulk_create(health_events)

    gpu_rows = {g.uuid: g for g in GpuDevice.objects.filter(node=node)}
    _sync_slices(node, info, gpu_rows, changes)
    return changes


def _sync_slices(node: Node, info: gpus.NodeInfo, gpu_rows: dict[str, GpuDevice], changes: _InventoryChanges) -> None:
    reported = {s.uuid: (g.uuid, s) for g in info.gpus for s in g.slices}
    existing = {s.uuid: s for s in MigSlice.objects.select_for_update(of=("self",)).select_related("gpu").filter(Q(gpu__node=node) | Q(uuid__in=list(reported)))}
    referenced = set(Allocation.objects.filter(mig_slice__in=[s.pk for s in existing.values()]).values_list("mig_slice_id", flat=True))
    new_rows = []
    for uuid, (gpu_uuid, report) in reported.items():
        gpu = gpu_rows[gpu_uuid]
        row = existing.get(uuid)
        if row is None:
            new_rows.append(MigSlice(gpu=gpu, uuid=uuid, profile=report.profile, index=report.index, memory_mb=report.memory_mb))
            changes.slices_added.append(uuid)
            continue
        wanted = {"gpu_id": gpu.pk, "profile": report.profile, "index": report.index, "memory_mb": report.memory_mb, "healthy": True}
        if any(getattr(row, k) != v for k, v in wanted.items()):
            for k, v in wanted.items():
                setattr(row, k, v)
            row.save()
    for uuid, row in existing.items():
        if uuid in reported or row.gpu.node_id != node.pk:
            continue
        if row.pk in referenced:
            if row.healthy:
                row.healthy = False
                row.save(update_fields=["healthy"])
                changes.slices_vanished.append(uuid)
        else:
            row.delete()
            changes.slices_removed.append(uuid)
    if new_rows:
        MigSlice.objects.bulk_create(new_rows)


def inventory_sync_all(*, now: datetime.datetime | None = None) -> list[Node]:
    """Register every node the GPU source knows (the whole simulated fleet in the embedded default;
    this host under NVML). For `manage.py inventory_sync` and the demo seed."""
    source = gpus.source()
    return [node_register(info=source.inventory(name), now=now) for name in source.node_names()]


# --- heartbeats ------------------------------------------------------------------------------


def node_heartbeat(name: str, *, now: datetime.datetime | None = None) -> None:
    """The node `name` is alive. One UPDATE when it is up; a down node comes back (audited, a pass
    is sent), and a node never registered is registered from the GPU source."""
    now = now or timezone.now()
    if Node.objects.filter(name=name).exclude(state=Node.State.DOWN).update(last_heartbeat=now):
        return
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(name=name).first()
        if node is None:
            try:
                info = gpus.source().inventory(name)
            except KeyError:
                raise NotFound(f"No node named {name!r} in the GPU source.", code="unknown_node") from None
            node_register(info=info, now=now)
            return
        node.last_heartbeat = now
        if node.state != Node.State.DOWN:  # came back between the UPDATE and the lock
            node.save(update_fields=["last_heartbeat"])
            return
        was_gone = node.gone_confirmed_at
        node.state = Node.State.DRAINING if node.drain_reason else Node.State.READY
        node.gone_confirmed_at = None
        node.state_changed_at = now
        node.save(update_fields=["last_heartbeat", "state", "gone_confirmed_at", "state_changed_at"])
        audit_record(action="node.return", actor=None, target=node,
                     changes={"state": [Node.State.DOWN, node.state], **({"gone_confirmed_at": [was_gone, None]} if was_gone else {})})
        _send_pass()


def nodes_mark_down(*, now: datetime.datetime | None = None) -> list[str]:
    """Mark down every ready or draining node silent for 3 heartbeat intervals; returns their names.
    Their allocations stay held: the engine places nothing there and hands nothing of theirs out."""
    now = now or timezone.now()
    cutoff = now - down_after()
    silent = Q(last_heartbeat__lt=cutoff) | Q(last_heartbeat__isnull=True, created_at__lt=cutoff)
    with transaction.atomic():
        nodes = list(Node.objects.select_for_update().filter(silent, state__in=[Node.State.READY, Node.State.DRAINING]))
        if not nodes:
            return []
        events = []
        for node in nodes:
            events.append(PendingEvent(action="node.down", actor=None, target_type="scheduler.node", target_id=node.pk,
                                       changes={"state": [node.state, Node.State.DOWN],
                                                "last_heartbeat": node.last_heartbeat.isoformat() if node.last_heartbeat else None}))
            node.state, node.state_changed_at = Node.State.DOWN, now
        Node.objects.bulk_update(nodes, ["state", "state_changed_at"])
        audit_record_many(events)
        _send_pass()
    for node in nodes:
        log.warning("node %s marked down: no heartbeat since %s", node.name, node.last_heartbeat)
    return [n.name for n in nodes]


# --- admin actions ---------------------------------------------------------------------------


def _locked(node: Node) -> Node:
    return Node.objects.select_for_update().get(pk=node.pk)


def node_drain(*, node: Node, actor: User, reason: str = "") -> Node:
    """Stop placing new work on the node; running work stays. Precondition: no drain in force."""
    reason = (reason or "").strip() or f"drained by {actor.username}"
    if len(reason) > DRAIN_REASON_MAX:
        raise DomainError(f"The reason may be at most {DRAIN_REASON_MAX} characters.", code="invalid",
                          fields={"reason": [f"At most {DRAIN_REASON_MAX} characters."]})
    now = timezone.now()
    with transaction.atomic():
        node = _locked(node)
        if node.drain_reason:
            raise Conflict(f"Node {node.name} is already drained ({node.drain_reason}).", code="already_draining")
        before = node.state
        node.drain_reason = reason
        if node.state == Node.State.READY:  # a down node stays down, and comes back draining
            node.state, node.state_changed_at = Node.State.DRAINING, now
        node.save(update_fields=["drain_reason", "state", "state_changed_at"])
        audit_record(action="node.drain", actor=actor, target=node,
                     changes={"state": [before, node.state], "drain_reason": ["", reason]})
        _send_pass()
    return node


def node_undrain(*, node: Node, actor: User) -> Node:
    """Let the node receive new work again. Precondition: a drain is in force."""
    now = timezone.now()
    with transaction.atomic():
        node = _locked(node)
        if not node.drain_reason:
            raise Conflict(f"Node {node.name} is not drained.", code="not_draining")
        before, reason = node.state, node.drain_reason
        node.drain_reason = ""
        if node.state == Node.State.DRAINING:
            node.state, node.state_changed_at = Node.State.READY, now
        node.save(update_fields=["drain_reason", "state", "state_changed_at"])
        audit_record(action="node.undrain", actor=actor, target=node,
                     changes={"state": [before, node.state], "drain_reason": [reason, ""]})
        _send_pass()
    return node


def node_confirm_gone(*, node: Node, actor: User, note: str = "") -> list[int]:
    """An admin confirms a down node will not come back: its live allocations are released (with the
    reason) and their requests go back to the queue. Returns the requeued request ids.
    Precondition: the node is down and not yet confirmed gone."""
    now = timezone.now()
    note = (note or "").strip()[:200]
    with transaction.atomic():
        node = _locked(node)
        if node.state != Node.State.DOWN:
            raise Conflict(f"Node {node.name} is {node.state}; only a down node can be confirmed gone.", code="not_down")
        if node.gone_confirmed_at is not None:
            raise Conflict(f"Node {node.name} was already confirmed gone.", code="already_gone")
        node.gone_confirmed_at = now
        node.save(update_fields=["gone_confirmed_at"])
        reason = f"node {node.name} confirmed gone by {actor.username}" + (f": {note}" if note else "")
        # Lock requests before their allocations, the order the scheduling pass uses.
        request_ids = sorted(set(Allocation.objects.filter(node=node, released_at__isnull=True).values_list("request_id", flat=True)))
        requests = list(AllocationRequest.objects.select_for_update().filter(pk__in=request_ids).order_by("pk"))
        live = list(Allocation.objects.select_for_update().filter(request_id__in=request_ids, released_at__isnull=True).order_by("pk"))
        for allocation in live:
            allocation.released_at, allocation.release_reason = now, reason[:200]
        Allocation.objects.bulk_update(live, ["released_at", "release_reason"])
        requeued = []
        for request in requests:
            if request.state == AllocationRequest.State.PLACED:
                request.state, request.placed_at, request.estimated_start = AllocationRequest.State.PENDING, None, None
                request.pending_reasons = [{"code": "requeued", "message": f"Requeued: {reason}."}]
                requeued.append(request)
        AllocationRequest.objects.bulk_update(requeued, ["state", "placed_at", "estimated_start", "pending_reasons"])
        devices_by_request: dict[int, int] = {}
        for allocation in live:
            devices_by_request[allocation.request_id] = devices_by_request.get(allocation.request_id, 0) + 1
        events = [PendingEvent(action="node.confirm_gone", actor=actor, target_type="scheduler.node", target_id=node.pk,
                               changes={"gone_confirmed_at": [None, now.isoformat()], "released_requests": request_ids,
                                        **({"note": note} if note else {})})]
        events += [PendingEvent(action="allocation.release", actor=actor, target_type="scheduler.allocationrequest",
                                target_id=r.pk, team_id=r.team_id,
                                changes={"reason": reason, "devices": devices_by_request.get(r.pk, 0),
                                         "state": [AllocationRequest.State.PLACED, r.state] if r in requeued else r.state})
                   for r in requests]
        audit_record_many(events)
        _send_released(request_ids, reason)
        _send_pass()
    return request_ids


def _send_released(request_ids: list[int], reason: str) -> None:
    """Tell the workspaces (after commit) that these requests lost their devices."""
    from scheduler.signals import allocation_released

    def send():
        for request_id in request_ids:
            allocation_released.send(sender=Node, request_id=request_id, reason=reason)

    transaction.on_commit(send)

