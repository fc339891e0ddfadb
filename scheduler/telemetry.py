"""GPU telemetry (issue 5): sample -> one batch insert per node -> one published message per node;
rollups into 60 s and 3600 s buckets; retention; history read at the right resolution.

Data path per node and interval:
    gpus.source().sample(node)            readings for every GPU and MIG slice
    samples_store(rows)                   ONE insert (COPY on PostgreSQL, bulk_create elsewhere)
    publish(message)                      the node's message to `fleet` and `node.<id>`, each
                                          holding team's share to `team.<id>`, each GPU's to `gpu.<uuid>`
NVML errors become GpuHealthEvent rows (deduplicated), never exceptions out of the sampler.
"""

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Avg, Count, F, Max, Min, Q, Sum
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from scheduler import gpus
from scheduler.models import Allocation, GpuDevice, GpuHealthEvent, GpuRollup, GpuSample, Node

log = logging.getLogger(__name__)
UTC = datetime.UTC

GROUP_FLEET = "fleet"
MINUTE, HOUR = 60, 3600
# A GPU's telemetry health message starts with this, so recovery only clears what telemetry set.
HEALTH_PREFIX = "telemetry: "
# The same NVML error on the same GPU is recorded again at most this often (not every second).
HEALTH_REPEAT_SECONDS = 300
# Rollups recompute this much before the last finished bucket, so late samples are counted.
ROLLUP_OVERLAP_SECONDS = 120


def group_gpu(uuid: str) -> str:
    return f"gpu.{uuid}"


def group_node(node_id: int) -> str:
    return f"node.{node_id}"


def group_team(team_id: int) -> str:
    return f"team.{team_id}"


def raw_retention() -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.PORTAL_TELEMETRY_RAW_SECONDS)


def minute_retention() -> datetime.timedelta:
    return datetime.timedelta(days=settings.PORTAL_TELEMETRY_MINUTE_DAYS)


def hour_retention() -> datetime.timedelta:
    return datetime.timedelta(days=settings.PORTAL_TELEMETRY_HOUR_DAYS)


# --- sampling ----------------------------------------------------------------------------------


@dataclass
class NodeContext:
    """What the sampler needs to know about a node, read once per interval."""

    node_id: int
    name: str
    gpu_ids: dict[str, int]  # GPU uuid -> GpuDevice id
    gpu_models: dict[str, str]
    healthy: dict[str, tuple[bool, str]]  # GPU uuid -> (healthy, health_message)
    # device uuid (GPU or MIG slice) -> (team id, allocation request id)
    holders: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def busy(self) -> dict[str, str]:
        return {uuid: str(request_id) for uuid, (_team, request_id) in self.holders.items()}


def node_contexts(node_names: list[str]) -> dict[str, NodeContext]:
    """The nodes' GPUs and who holds them now, in two queries however many nodes; nodes that are
    not registered (or have no GPU) are left out."""
    contexts: dict[int, NodeContext] = {}
    for pk, uuid, model, healthy, message, node_id, name in GpuDevice.objects.filter(node__name__in=node_names).values_list(
            "id", "uuid", "model", "healthy", "health_message", "node_id", "node__name"):
        ctx = contexts.get(node_id)
        if ctx is None:
            ctx = contexts[node_id] = NodeContext(node_id=node_id, name=name, gpu_ids={}, gpu_models={}, healthy={})
        ctx.gpu_ids[uuid] = pk
        ctx.gpu_models[uuid] = model
        ctx.healthy[uuid] = (healthy, message)
    if contexts:
        allocations = Allocation.objects.filter(node_id__in=list(contexts), released_at__isnull=True).values_list(
            "node_id", "team_id", "request_id", "gpu__uuid", "mig_slice__uuid")
        for node_id, team_id, request_id, gpu_uuid, slice_uuid in allocations:
            contexts[node_id].holders[slice_uuid or gpu_uuid] = (team_id, request_id)
    return {ctx.name: ctx for ctx in contexts.values()}


def node_context(node_name: str) -> NodeContext | None:
    return node_contexts([node_name]).get(node_name)


def _heartbeat_due(node_name: str, now: float) -> bool:
    """The node's heartbeat rides on sampling, but at most once per heartbeat interval."""
    last = _last_heartbeat.get(node_name, 0.0)
    if now - last < settings.PORTAL_HEARTBEAT_SECONDS:
        return False
    _last_heartbeat[node_name] = now
    return True


_last_heartbeat: dict[str, float] = {}


def telemetry_sample_node(*, node_name: str, now: float | None = None, publish: bool = True) -> int:
    """Sample every GPU of one registered node (the node agent's job each interval): one insert,
    one published message. Returns the number of samples stored."""
    return telemetry_sample_nodes(node_names=[node_name], now=now, publish=publish)


def telemetry_sample_nodes(*, node_names: list[str], now: float | None = None, publish: bool = True) -> int:
    """Sample every GPU of the registered nodes among `node_names`; store all their samples in ONE
    insert (COPY on PostgreSQL); publish one message per node. Returns the samples stored.
    Never raises for a GPU's or a node's read error: those become health events. A process that
    samples many nodes (the embedded default's simulated fleet) costs three queries and one insert
    per interval, whatever the fleet's size."""
    now = time.time() if now is None else now
    ts = datetime.datetime.fromtimestamp(now, UTC)
    source = gpus.source()
    rows, messages = [], []
    contexts = node_contexts(node_names)
    for node_name, ctx in contexts.items():
        try:
            readings = source.sample(node_name, busy=ctx.busy, now=now)
        except Exception as exc:  # noqa: BLE001 - a driver/library mismatch must not kill the agent
            log.warning("sampling node %s failed: %s", node_name, exc)
            _health_record(ctx, None, kind="sampler_error", message=str(exc)[:480], now=now)
            continue
        failed = []
        for r in readings:
            gpu_id = ctx.gpu_ids.get(r.uuid)
            if gpu_id is None:
                continue  # not registered yet: the inventory catches up within minutes
            if r.error:
                failed.append(r)
                continue
            # plain tuples in COPY_COLUMNS order: thousands per interval, no model instances
            rows.append((gpu_id, r.slice_index, ts, r.util_gpu, r.util_mem, r.mem_used_bytes, r.mem_total_bytes,
                         r.power_w, r.power_limit_w, r.temp_c, r.sm_clock_mhz, r.ecc_errors))
        if failed or any(not h for h, _m in ctx.healthy.values()):
            _health_update(ctx, failed, {r.uuid for r in readings if not r.error and r.slice_index == -1}, now)
        if publish:
            messages.append(node_message(ctx, readings, now))
    samples_store(rows)
    for node_name in contexts:
        if _heartbeat_due(node_name, now):
            _heartbeat(node_name)
    for message in messages:
        publish_node(message)
    return len(rows)


def _heartbeat(node_name: str) -> None:
    try:
        from scheduler.inventory import node_heartbeat

        node_heartbeat(node_name)
    except Exception:  # noqa: BLE001 - the agent's own beat thread is the primary heartbeat
        log.exception("heartbeat of %s while sampling failed", node_name)


COPY_COLUMNS = ("gpu_id", "slice_index", "ts", "util_gpu", "util_mem", "mem_used_bytes", "mem_total_bytes",
                "power_w", "power_limit_w", "temp_c", "sm_clock_mhz", "ecc_errors")


def samples_store(rows: list[tuple]) -> None:
    """One insert for the whole batch of rows (tuples in COPY_COLUMNS order): COPY on PostgreSQL
    (several times faster than INSERT for thousands of rows), bulk_create elsewhere."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        GpuSample.objects.bulk_create([GpuSample(**dict(zip(COPY_COLUMNS, row))) for row in rows], batch_size=2000)
        return
    sql = f"COPY {GpuSample._meta.db_table} ({', '.join(COPY_COLUMNS)}) FROM STDIN"
    started = time.monotonic()
    with connection.cursor() as cursor:
        with cursor.cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
    if connection.queries_logged:  # COPY bypasses Django's cursor wrapper: log it like a query
        connection.queries_log.append({"sql": f"{sql} -- {len(rows)} rows", "time": f"{time.monotonic() - started:.3f}"})


def _health_record(ctx: NodeContext, gpu_id: int | None, *, kind: str, message: str, now: float) -> None:
    since = datetime.datetime.fromtimestamp(now - HEALTH_REPEAT_SECONDS, UTC)
    if GpuHealthEvent.objects.filter(node_id=ctx.node_id, gpu_id=gpu_id, kind=kind, ts__gte=since).exists():
        return
    GpuHealthEvent.objects.create(node_id=ctx.node_id, gpu_id=gpu_id, kind=kind, message=message[:500],
                                  ts=datetime.datetime.fromtimestamp(now, UTC))


def _health_update(ctx: NodeContext, failed: list[gpus.GpuReading], read_ok: set[str], now: float) -> None:
    """A GPU that fails to read is marked unhealthy (the engine places nothing on it) with an event;
    one that reads again after telemetry marked it is healthy again, with an event."""
    for r in failed:
        gpu_id = ctx.gpu_ids[r.uuid]
        message = f"{HEALTH_PREFIX}{r.error}"[:300]
        with transaction.atomic():
            _health_record(ctx, gpu_id, kind=r.error_kind or "nvml_error", message=r.error, now=now)
            if ctx.healthy.get(r.uuid, (True, ""))[0]:
                GpuDevice.objects.filter(pk=gpu_id).update(healthy=False, health_message=message)
    for uuid in read_ok:
        healthy, msg = ctx.healthy.get(uuid, (True, ""))
        if not healthy and msg.startswith(HEALTH_PREFIX):
            with transaction.atomic():
                GpuDevice.objects.filter(pk=ctx.gpu_ids[uuid]).update(healthy=True, health_message="")
                GpuHealthEvent.objects.create(node_id=ctx.node_id, gpu_id=ctx.gpu_ids[uuid], kind="recovered",
                                              message="reads again", ts=datetime.datetime.fromtimestamp(now, UTC))


def reading_item(r: gpus.GpuReading, team_id: int | None, model: str) -> dict:
    """One GPU or slice in a published message: short keys, base units (bytes, watts, celsius)."""
    item = {"uuid": r.uuid, "i": r.index, "s": r.slice_index, "model": model, "team": team_id,
            "u": r.util_gpu, "um": r.util_mem, "mu": r.mem_used_bytes, "mt": r.mem_total_bytes,
            "p": r.power_w, "pl": r.power_limit_w, "t": r.temp_c, "c": r.sm_clock_mhz, "ecc": r.ecc_errors}
    if r.slice_uuid:
        item["su"] = r.slice_uuid
    if r.processes is not None:
        item["procs"] = [[p.pid, p.used_bytes] for p in r.processes]
    if r.error:
        item["err"] = r.error
    return item


def node_message(ctx: NodeContext, readings: list[gpus.GpuReading], now: float) -> dict:
    items = []
    for r in readings:
        holder = ctx.holders.get(r.slice_uuid or r.uuid)
        items.append(reading_item(r, holder[0] if holder else None, ctx.gpu_models.get(r.uuid, "")))
    return {"type": "telemetry.sample", "node": ctx.node_id, "name": ctx.name, "ts": now,
            "simulated": gpus.source().simulated, "gpus": items}


def publish_node(message: dict) -> None:
    """The node's message to `fleet` and `node.<id>`; each team's own devices to `team.<id>`; each
    GPU's readings (whole + slices) to `gpu.<uuid>`. One group_send per group, all concurrently."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    sends = [(GROUP_FLEET, message), (group_node(message["node"]), message)]
    by_team: dict[int, list] = {}
    by_gpu: dict[str, list] = {}
    for item in message["gpus"]:
        if item["team"] is not None:
            by_team.setdefault(item["team"], []).append(item)
        by_gpu.setdefault(item["uuid"], []).append(item)
    for team_id, items in by_team.items():
        sends.append((group_team(team_id), {**message, "gpus": items}))
    for uuid, items in by_gpu.items():
        sends.append((group_gpu(uuid), {**message, "gpus": items}))

    async def send_all():
        import asyncio

        # each copy names its group: a server process joins a group once and routes by this key
        await asyncio.gather(*(layer.group_send(group, {**msg, "group": group}) for group, msg in sends))

    try:
        home = _in_process_home_loop(layer)
        if home is not None:
            # Embedded mode: the in-process layer's queues live on the web server's loop.
            asyncio.run_coroutine_threadsafe(send_all(), home).result(timeout=5)
        else:
            async_to_sync(send_all)()
    except Exception:  # noqa: BLE001 - a channel-layer blip loses live points, never stored ones
        log.exception("publishing telemetry of node %s failed", message.get("name"))


def _in_process_home_loop(layer):
    """The web server's loop when the layer is the in-process one and this is another thread (the
    embedded beat); None otherwise (Redis needs no such care)."""
    from channels.layers import InMemoryChannelLayer

    from scheduler.consumers import hub_loop_for

    if not isinstance(layer, InMemoryChannelLayer):
        return None
    loop = hub_loop_for(layer)
    if loop is None:
        return None
    try:
        if asyncio.get_running_loop() is loop:
            return None
    except RuntimeError:
        pass
    return loop


# --- rollups and retention ---------------------------------------------------------------------


def _floor(ts: datetime.datetime, seconds: int) -> datetime.datetime:
    epoch = int(ts.timestamp())
    return datetime.datetime.fromtimestamp(epoch - epoch % seconds, UTC)


ROLLUP_FIELDS = ["samples", "util_gpu_min", "util_gpu_mean", "util_gpu_max", "mem_used_min", "mem_used_mean",
                 "mem_used_max", "power_mean", "power_max", "temp_mean", "temp_max"]


def _upsert(rows: list[GpuRollup]) -> int:
    """Idempotent: a bucket computed twice updates its row (unique gpu/slice/resolution/bucket)."""
    if rows:
        GpuRollup.objects.bulk_create(rows, batch_size=2000, update_conflicts=True,
                                      unique_fields=["gpu", "slice_index", "resolution_s", "bucket"],
                                      update_fields=ROLLUP_FIELDS)
    return len(rows)


def _rollup_minutes(start: datetime.datetime, end: datetime.datetime) -> int:
    grouped = (
        GpuSample.objects.filter(ts__gte=start, ts__lt=end)
        .annotate(b=TruncMinute("ts", tzinfo=UTC)).values("gpu_id", "slice_index", "b")
        .annotate(n=Count("id"), umin=Min("util_gpu"), umean=Avg("util_gpu"), umax=Max("util_gpu"),
                  mmin=Min("mem_used_bytes"), mmean=Avg("mem_used_bytes"), mmax=Max("mem_used_bytes"),
                  pmean=Avg("power_w"), pmax=Max("power_w"), tmean=Avg("temp_c"), tmax=Max("temp_c"))
        .order_by()
    )
    return _upsert([
        GpuRollup(gpu_id=g["gpu_id"], slice_index=g["slice_index"], resolution_s=MINUTE, bucket=g["b"], samples=g["n"],
                  util_gpu_min=g["umin"], util_gpu_mean=g["umean"], util_gpu_max=g["umax"], mem_used_min=g["mmin"],
                  mem_used_mean=g["mmean"], mem_used_max=g["mmax"], power_mean=g["pmean"], power_max=g["pmax"],
                  temp_mean=g["tmean"], temp_max=g["tmax"])
        for g in grouped
    ])


def _rollup_hours(start: datetime.datetime, end: datetime.datetime) -> int:
    """Hours from minutes: means weighted by each minute's sample count."""
    grouped = (
        GpuRollup.objects.filter(resolution_s=MINUTE, bucket__gte=start, bucket__lt=end)
        .annotate(b=TruncHour("bucket", tzinfo=UTC)).values("gpu_id", "slice_index", "b")
        .annotate(n=Sum("samples"), umin=Min("util_gpu_min"), usum=Sum(F("util_gpu_mean") * F("samples")),
                  umax=Max("util_gpu_max"), mmin=Min("mem_used_min"), msum=Sum(F("mem_used_mean") * F("samples")),
                  mmax=Max("mem_used_max"), pmean=Avg("power_mean"), pmax=Max("power_max"), tmean=Avg("temp_mean"),
                  tmax=Max("temp_max"))
        .order_by()
    )
    return _upsert([
        GpuRollup(gpu_id=g["gpu_id"], slice_index=g["slice_index"], resolution_s=HOUR, bucket=g["b"], samples=g["n"],
                  util_gpu_min=g["umin"], util_gpu_mean=g["usum"] / g["n"], util_gpu_max=g["umax"],
                  mem_used_min=g["mmin"], mem_used_mean=g["msum"] / g["n"], mem_used_max=g["mmax"],
                  power_mean=g["pmean"], power_max=g["pmax"], temp_mean=g["tmean"], temp_max=g["tmax"])
        for g in grouped if g["n"]
    ])


@dataclass
class RollupResult:
    minutes: int
    hours: int
    deleted_raw: int
    deleted_minutes: int
    deleted_hours: int


def telemetry_rollup(*, now: datetime.datetime | None = None) -> RollupResult:
    """Roll finished minutes of raw samples into 60 s buckets and finished hours of those into
    3600 s buckets (upserts: safe to run twice or concurrently), then drop what is past retention.
    Only finished buckets are written, and each run recomputes a short overlap for late samples."""
    now = now or timezone.now()
    minute_end = _floor(now, MINUTE)
    # Raw samples are only ever deleted at minute boundaries (below), so the minute of the oldest
    # raw sample is complete and any minute from there on can be recomputed exactly.
    first_raw = GpuSample.objects.order_by("ts").values_list("ts", flat=True).first()
    last_minute = GpuRollup.objects.filter(resolution_s=MINUTE).order_by("-bucket").values_list("bucket", flat=True).first()
    minute_start = _floor(first_raw, MINUTE) if first_raw else minute_end
    if last_minute is not None:
        minute_start = max(minute_start, _floor(last_minute - datetime.timedelta(seconds=ROLLUP_OVERLAP_SECONDS), MINUTE))
    minutes = _rollup_minutes(minute_start, minute_end) if minute_start < minute_end else 0

    hour_end = _floor(now, HOUR)
    last_hour = GpuRollup.objects.filter(resolution_s=HOUR).order_by("-bucket").values_list("bucket", flat=True).first()
    if last_hour is None:
        first_minute = GpuRollup.objects.filter(resolution_s=MINUTE).order_by("bucket").values_list("bucket", flat=True).first()
        hour_start = _floor(first_minute, HOUR) if first_minute else hour_end
    else:
        hour_start = last_hour
    hours = _rollup_hours(hour_start, hour_end) if hour_start < hour_end else 0

    deleted_raw = GpuSample.objects.filter(ts__lt=min(_floor(now - raw_retention(), MINUTE), minute_end)).delete()[0]
    deleted_minutes = GpuRollup.objects.filter(resolution_s=MINUTE, bucket__lt=now - minute_retention()).delete()[0]
    deleted_hours = GpuRollup.objects.filter(resolution_s=HOUR, bucket__lt=now - hour_retention()).delete()[0]
    return RollupResult(minutes, hours, deleted_raw, deleted_minutes, deleted_hours)


# --- history (selectors) -----------------------------------------------------------------------

# Named windows for the charts: window length and the storage it reads.
WINDOWS = {"live": 10 * 60, "hour": 3600, "day": 86400, "week": 7 * 86400}


def resolution_for(window_s: int) -> int:
    """Raw (0) up to 15 minutes, 60 s buckets up to two days, 3600 s beyond: at most ~2,900
    points per device whatever the window."""
    if window_s <= 15 * 60:
        return 0
    if window_s <= 2 * 86400:
        return MINUTE
    return HOUR


@dataclass(frozen=True)
class DeviceSpan:
    """A device whose history is wanted, optionally only between two times (a team's tenure)."""

    gpu_id: int
    uuid: str
    label: str
    slice_index: int | None = -1  # None: the whole GPU and every slice
    start: datetime.datetime | None = None
    end: datetime.datetime | None = None


def history(*, spans: list[DeviceSpan], window_s: int, now: datetime.datetime | None = None) -> dict:
    """{"resolution_s", "start", "end", "series": [{"key", "label", "points": [[ms, util, mem_used,
    power, temp], ...]}]} for the devices over the last `window_s`, from the right storage."""
    now = now or timezone.now()
    start = now - datetime.timedelta(seconds=window_s)
    resolution = resolution_for(window_s)
    labels = {}
    condition = Q()
    for span in spans:
        q = Q(gpu_id=span.gpu_id)
        if span.slice_index is not None:
            q &= Q(slice_index=span.slice_index)
        ts_field = "ts" if resolution == 0 else "bucket"
        if span.start:
            q &= Q(**{f"{ts_field}__gte": span.start})
        if span.end:
            q &= Q(**{f"{ts_field}__lt": span.end})
        condition |= q
        labels[span.gpu_id] = (span.uuid, span.label)
    series: dict[tuple[int, int], list] = {}
    if spans:
        if resolution == 0:
            rows = (GpuSample.objects.filter(condition, ts__gte=start).order_by("ts")
                    .values_list("gpu_id", "slice_index", "ts", "util_gpu", "mem_used_bytes", "power_w", "temp_c"))
        else:
            rows = (GpuRollup.objects.filter(condition, resolution_s=resolution, bucket__gte=start).order_by("bucket")
                    .values_list("gpu_id", "slice_index", "bucket", "util_gpu_mean", "mem_used_mean", "power_mean", "temp_mean"))
        for gpu_id, slice_index, ts, util, mem, power, temp in rows:
            series.setdefault((gpu_id, slice_index), []).append(
                [int(ts.timestamp() * 1000), round(util, 4), int(mem), power, temp])
    return {
        "resolution_s": resolution, "start": start.isoformat(), "end": now.isoformat(),
        "series": [
            {"key": f"{labels[gpu_id][0]}:{s}", "uuid": labels[gpu_id][0], "slice": s,
             "label": labels[gpu_id][1] + (f" mig{s}" if s >= 0 else ""), "points": points}
            for (gpu_id, s), points in sorted(series.items())
        ],
    }


def _gpu_label(gpu: GpuDevice) -> str:
    return f"{gpu.node.name}/gpu{gpu.index}"


def gpu_spans(gpu: GpuDevice) -> list[DeviceSpan]:
    return [DeviceSpan(gpu_id=gpu.pk, uuid=gpu.uuid, label=_gpu_label(gpu), slice_index=None)]


def node_spans(node: Node) -> list[DeviceSpan]:
    return [DeviceSpan(gpu_id=g.pk, uuid=g.uuid, label=_gpu_label(g)) for g in GpuDevice.objects.filter(node=node).select_related("node")]


def team_spans(team_id: int, *, since: datetime.datetime, limit: int = 200) -> list[DeviceSpan]:
    """The team's devices, each only while the team held it (a GPU's earlier or later users are
    not the team's business). Most recent allocations first, at most `limit`."""
    allocations = (
        Allocation.objects.filter(team_id=team_id).filter(Q(released_at__isnull=True) | Q(released_at__gte=since))
        .select_related("gpu__node", "mig_slice__gpu__node").order_by("-started_at")[:limit]
    )
    spans = []
    for a in allocations:
        gpu = a.gpu or a.mig_slice.gpu
        spans.append(DeviceSpan(gpu_id=gpu.pk, uuid=gpu.uuid, label=_gpu_label(gpu), slice_index=a.mig_slice.index if a.mig_slice else -1,
                                start=a.started_at, end=a.released_at))
    return spans


def request_devices(request_id: int | None) -> list[dict]:
    """The live devices of an allocation request, for a workspace's charts: [{"uuid", "slice",
    "label", "gpu_id"}]."""
    if request_id is None:
        return []
    allocations = (Allocation.objects.filter(request_id=request_id, released_at__isnull=True)
                   .select_related("gpu__node", "mig_slice__gpu__node").order_by("id"))
    devices = []
    for a in allocations:
        gpu = a.gpu or a.mig_slice.gpu
        devices.append({"uuid": gpu.uuid, "gpu_id": gpu.pk, "slice": a.mig_slice.index if a.mig_slice else -1,
                        "label": _gpu_label(gpu) + (f" mig{a.mig_slice.index}" if a.mig_slice else "")})
    return devices


def team_gpu_hours(*, team_id: int, start: datetime.datetime, end: datetime.datetime) -> dict:
    """GPU-hours the team held vs used (utilization-weighted) between two times, from the 60 s
    rollups: the input of usage accounting. {"allocated_hours", "used_hours"}."""
    allocated = 0.0
    used_condition = Q()
    allocations = Allocation.objects.filter(team_id=team_id, started_at__lt=end).filter(
        Q(released_at__isnull=True) | Q(released_at__gt=start)).select_related("mig_slice")
    spans = 0
    for a in allocations:
        s, e = max(a.started_at, start), min(a.released_at or end, end)
        allocated += max(0.0, (e - s).total_seconds()) / 3600
        gpu_id = a.gpu_id or a.mig_slice.gpu_id
        slice_index = a.mig_slice.index if a.mig_slice else -1
        used_condition |= Q(gpu_id=gpu_id, slice_index=slice_index, bucket__gte=s, bucket__lt=e)
        spans += 1
    used = 0.0
    if spans:
        total = GpuRollup.objects.filter(used_condition, resolution_s=MINUTE).aggregate(s=Sum("util_gpu_mean"))["s"]
        used = (total or 0.0) * MINUTE / 3600
    return {"allocated_hours": round(allocated, 4), "used_hours": round(used, 4)}


# --- fleet heatmap (selector) ------------------------------------------------------------------


def latest_readings(*, max_age_s: float | None = None, gpu_ids: list[int] | None = None) -> dict[tuple[int, int], GpuSample]:
    """The newest sample per (gpu, slice) from the last few intervals."""
    max_age_s = max_age_s or max(10.0, 5 * settings.PORTAL_SAMPLE_SECONDS)
    qs = GpuSample.objects.filter(ts__gte=timezone.now() - datetime.timedelta(seconds=max_age_s))
    if gpu_ids is not None:
        qs = qs.filter(gpu_id__in=gpu_ids)
    latest = {}
    for s in qs.order_by("ts").only("gpu_id", "slice_index", "ts", "util_gpu", "util_mem", "mem_used_bytes", "mem_total_bytes",
                                     "power_w", "power_limit_w", "temp_c", "sm_clock_mhz", "ecc_errors"):
        latest[(s.gpu_id, s.slice_index)] = s
    return latest


def fleet_heatmap(*, model: str = "", team_id: int | None = None) -> dict:
    """Nodes with their GPUs and MIG slices, each with its latest utilization, holder team and
    health, plus the filters' choices. A fixed number of queries, whatever the fleet's size."""
    from governance.models import Team

    nodes = list(Node.objects.order_by("name"))
    gpu_qs = GpuDevice.objects.select_related("node").prefetch_related("mig_slices").order_by("node__name", "index")
    gpu_list = list(gpu_qs)
    holders: dict[tuple[int, int], int] = {}
    for gpu_id, slice_gpu_id, slice_index, holder in Allocation.objects.filter(released_at__isnull=True).values_list(
            "gpu_id", "mig_slice__gpu_id", "mig_slice__index", "team_id"):
        holders[(gpu_id or slice_gpu_id, slice_index if slice_index is not None else -1)] = holder
    teams = dict(Team.objects.filter(pk__in=set(holders.values())).values_list("pk", "slug"))
    latest = latest_readings()
    since = timezone.now() - datetime.timedelta(hours=24)
    events = dict(GpuHealthEvent.objects.filter(ts__gte=since, gpu__isnull=False).values("gpu_id")
                  .annotate(n=Count("id")).values_list("gpu_id", "n"))
    by_node: dict[int, list] = {n.pk: [] for n in nodes}
    models = sorted({g.model for g in gpu_list})
    for g in gpu_list:
        slices = []
        slice_teams = set()
        for sl in g.mig_slices.all():
            holder = holders.get((g.pk, sl.index))
            slice_teams.add(holder)
            sample = latest.get((g.pk, sl.index))
            slices.append({"index": sl.index, "profile": sl.profile, "uuid": sl.uuid, "team_id": holder,
                           "team": teams.get(holder, ""), "util": sample.util_gpu if sample else None})
        holder = holders.get((g.pk, -1))
        if model and g.model != model:
            continue
        if team_id and holder != team_id and team_id not in slice_teams:
            continue
        sample = latest.get((g.pk, -1))
        by_node[g.node_id].append({
            "gpu": g, "uuid": g.uuid, "team_id": holder, "team": teams.get(holder, ""), "slices": slices,
            "util": sample.util_gpu if sample else None, "sample": sample, "events": events.get(g.pk, 0),
        })
    return {
        "nodes": [{"node": n, "gpus": by_node[n.pk]} for n in nodes if by_node[n.pk] or not (model or team_id)],
        "models": models,
        "teams": list(Team.objects.order_by("slug").values("pk", "slug")),
        "model": model, "team_id": team_id,
    }
