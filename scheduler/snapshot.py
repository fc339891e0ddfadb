"""Build the engine's input from the database in a fixed, small number of queries.

Everything is read with `values_list` (no model instances) and sorted by id inside the engine, so
the decision does not depend on the order rows come back in.
"""

import datetime
import math
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.db.models import F, FloatField, Func, Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from governance.models import QuotaGrant, TeamPolicy
from scheduler import engine
from scheduler.models import Allocation, AllocationRequest, GpuDevice, MigSlice, Node, Reservation, UsageLedger


def grace_seconds() -> float:
    return float(settings.PORTAL_PREEMPT_GRACE_SECONDS)


def min_runtime_seconds() -> float:
    return float(settings.PORTAL_PREEMPT_MIN_RUNTIME_SECONDS)


def half_life_seconds() -> float:
    return float(settings.PORTAL_FAIRSHARE_HALF_LIFE_HOURS) * 3600.0


def decay(value: float, elapsed_s: float) -> float:
    if elapsed_s <= 0:
        return value
    return value * math.pow(0.5, elapsed_s / half_life_seconds())


@dataclass
class DbSnapshot:
    """The engine's snapshot plus what the pass needs to write back cheaply."""

    engine: engine.Snapshot
    now: datetime.datetime
    node_of_key: dict[int, int] = field(default_factory=dict)


def ts(value: datetime.datetime | float | None) -> float | None:
    if value is None or isinstance(value, float):
        return value
    return value.timestamp()


class _Epoch(Func):
    """A timestamp as float seconds since the epoch, computed by PostgreSQL: loading thousands of
    timestamptz values into datetimes (and back to floats for the engine) is most of a snapshot's
    client time."""

    template = "EXTRACT(EPOCH FROM %(expressions)s)::float8"
    output_field = FloatField()


def seconds_of(name: str, postgres: bool):
    """The column in epoch seconds on PostgreSQL; as is elsewhere (read it through `ts`)."""
    return _Epoch(F(name)) if postgres else F(name)


def rows_of(queryset, postgres: bool):
    """The rows of a values_list() queryset. On PostgreSQL straight from the cursor, the same SQL:
    psycopg already gives the Python values (ints, bools, text, floats from ::float8), and Django's
    per-value converters (a float() call for each annotated float) took half the time of reading
    the 10,000 pending requests. Elsewhere as Django gives them (SQLite's converters are needed)."""
    return rows_of_all([queryset], postgres)[0]


def rows_of_all(querysets: list, postgres: bool) -> list:
    """The rows of several values_list() querysets (see rows_of). On PostgreSQL all are sent at once
    in pipeline mode: the server runs the next query while this process turns the previous one's
    rows into Python values."""
    if not postgres:
        return [list(qs) for qs in querysets]
    statements = [qs.query.get_compiler(using=qs.db).as_sql() for qs in querysets]
    cursors = [connection.cursor() for _ in statements]
    try:
        with connection.connection.pipeline():
            for cursor, (sql, params) in zip(cursors, statements):
                cursor.execute(sql, params)
            return [cursor.fetchall() for cursor in cursors]
    finally:
        for cursor in cursors:
            cursor.close()


def queue_facts_shown() -> dict[int, tuple]:
    """What each pending request shows now, as a pass would write it: request id -> (reasons as
    stored JSON text, position in its team, global position, estimate in epoch seconds). A pass
    compares its facts with these to skip unchanged rows without decoding JSON or building datetimes."""
    postgres = connection.vendor == "postgresql"
    rows = AllocationRequest.objects.filter(state=AllocationRequest.State.PENDING).annotate(
        eta_s=seconds_of("estimated_start", postgres), reasons_text=Cast("pending_reasons", TextField())).values_list(
        "id", "reasons_text", "queue_position_team", "queue_position_global", "eta_s")
    return {req_id: (reasons, pos_team, pos_global, ts(eta)) for req_id, reasons, pos_team, pos_global, eta in rows_of(rows, postgres)}


def snapshot_build(*, now: datetime.datetime | None = None) -> DbSnapshot:
    now = now or timezone.now()
    now_s = now.timestamp()
    postgres = connection.vendor == "postgresql"
    queries = [
        Node.objects.filter(gone_confirmed_at__isnull=True).values_list("id", "name", "state"),
        GpuDevice.objects.filter(node__gone_confirmed_at__isnull=True).values_list(
            "id", "node_id", "model", "mig_enabled", "nvlink_group", "index", "healthy"),
        MigSlice.objects.filter(gpu__mig_enabled=True, gpu__healthy=True, healthy=True,
                                gpu__node__gone_confirmed_at__isnull=True).values_list(
            "id", "gpu_id", "gpu__node_id", "profile", "index"),
        Allocation.objects.filter(released_at__isnull=True).annotate(
            started_s=seconds_of("started_at", postgres), planned_end_s=seconds_of("planned_end", postgres),
            preempt_at_s=seconds_of("preempt_at", postgres)).values_list(
            "id", "request_id", "team_id", "gpu_id", "mig_slice_id", "node_id", "borrowed", "preemptible",
            "request__priority", "started_s", "planned_end_s", "preempt_at_s", "gpu__model", "mig_slice__profile"),
        AllocationRequest.objects.filter(state=AllocationRequest.State.PENDING).annotate(
            created_s=seconds_of("created_at", postgres)).values_list(
            "id", "team_id", "flavor", "count", "mig", "same_node", "nvlink_preferred", "priority", "preemptible",
            "max_duration_s", "created_s"),
        QuotaGrant.objects.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now), starts_at__lte=now).values_list(
            "team_id", "flavor", "count"),
        UsageLedger.objects.values_list("team_id", "gpu_seconds", "decayed_at"),
        TeamPolicy.objects.values_list("team_id", "borrow_limit", "lending_limit", "fair_share_weight"),
        Reservation.objects.filter(ends_at__gt=now).values_list("id", "team_id", "flavor", "count", "starts_at", "ends_at"),
    ]
    (node_rows, gpu_rows, slice_rows, live_rows, pending_rows, grant_rows, usage_rows, policy_rows,
     reservation_rows) = rows_of_all(queries, postgres)

    nodes = [engine.NodeIn(id=i, name=name, state=state) for i, name, state in node_rows]
    node_ids = {n.id for n in nodes}
    devices: list[engine.DeviceIn] = []
    for gpu_id, node_id, model, mig_enabled, group, index, healthy in gpu_rows:
        if healthy and not mig_enabled:
            devices.append(engine.DeviceIn(key=gpu_id, node_id=node_id, flavor=model, mig=False, group=group or "",
                                           parent=gpu_id, index=index))
    for slice_id, gpu_id, node_id, profile, index in slice_rows:
        devices.append(engine.DeviceIn(key=-slice_id, node_id=node_id, flavor=profile, mig=True, group="",
                                       parent=gpu_id, index=index))

    allocations = []
    for (alloc_id, req_id, team_id, gpu_id, slice_id, node_id, borrowed, preemptible, priority, started, planned_end,
         preempt_at, model, profile) in live_rows:
        allocations.append(engine.AllocIn(
            id=alloc_id, request_id=req_id, team_id=team_id, key=gpu_id if gpu_id is not None else -slice_id,
            node_id=node_id, flavor=model if gpu_id is not None else profile, borrowed=borrowed,
            preemptible=preemptible or borrowed, priority=priority, started_at=ts(started),
            planned_end=ts(planned_end), preempt_at=ts(preempt_at)))

    requests = [engine.RequestIn(req_id, team_id, flavor, count, mig, same_node, nvlink, priority, preemptible,
                                 max_duration_s, ts(created))
                for (req_id, team_id, flavor, count, mig, same_node, nvlink, priority, preemptible, max_duration_s,
                     created) in pending_rows]

    grants: dict[tuple[int, str], int] = {}
    for team_id, flavor, count in grant_rows:
        grants[(team_id, flavor)] = grants.get((team_id, flavor), 0) + count

    usage: dict[int, float] = {}
    for team_id, gpu_seconds, decayed_at in usage_rows:
        usage[team_id] = usage.get(team_id, 0.0) + decay(gpu_seconds, (now - decayed_at).total_seconds())
    teams = [engine.TeamIn(id=team_id, borrow_limit=borrow, lending_limit=lend, usage=usage.get(team_id, 0.0), weight=weight)
             for team_id, borrow, lend, weight in policy_rows]

    reservations = [engine.ReservationIn(id=i, team_id=t, flavor=f, count=c, starts_at=s.timestamp(), ends_at=e.timestamp())
                    for i, t, f, c, s, e in reservation_rows]

    snap = engine.Snapshot(
        now=now_s, nodes=nodes, devices=[d for d in devices if d.node_id in node_ids], allocations=allocations,
        requests=requests, teams=teams, grants=grants, reservations=reservations, grace_s=grace_seconds(),
        min_runtime_s=min_runtime_seconds(), fair_reclaim=settings.PORTAL_FAIR_RECLAIM,
    )
    return DbSnapshot(engine=snap, now=now, node_of_key={d.key: d.node_id for d in snap.devices})
