"""Prometheus export (issue 5): per-GPU gauges in base units and the portal's own figures, read
from the database and a small shared counter store at scrape time by one custom collector (no
per-process metric objects to go stale behind a load balancer).

Shared counters: processes other than the web server (the scheduler's Celery worker) record into
Redis when REDIS_URL is set, else into this process (the embedded default runs everything in one
process). Call `pass_duration_record(seconds)` after a scheduling pass; the websocket consumer
calls `ws_clients_change(+1/-1)`.
"""

import os
import socket
import threading

from celery.signals import task_postrun
from django.apps import apps
from django.conf import settings
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from scheduler.models import Allocation, AllocationRequest, GpuDevice, Node

_KEY = "portal:metrics"
_WS_KEY = "portal:metrics:ws_clients"
_local: dict[str, float] = {}
_local_lock = threading.Lock()
_redis = None
_process_field = f"{socket.gethostname()}:{os.getpid()}"
_process_field_reset = False


def _store():
    """A Redis client when the deployment has one (shared by every process), else None."""
    global _redis
    if not settings.REDIS_URL:
        return None
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    return _redis


def pass_duration_record(seconds: float) -> None:
    """The last scheduling pass took `seconds`; also counts passes."""
    store = _store()
    if store is None:
        with _local_lock:
            _local["pass_duration_seconds"] = seconds
            _local["passes_total"] = _local.get("passes_total", 0) + 1
        return
    try:
        store.hset(_KEY, "pass_duration_seconds", seconds)
        store.hincrby(_KEY, "passes_total", 1)
    except Exception:  # noqa: BLE001 - metrics must never break the work they describe
        pass


@task_postrun.connect
def _record_schedule_pass(sender=None, retval=None, **kwargs):
    """The scheduling pass's task returns its summary: its total time feeds the pass-duration
    gauge without the scheduler knowing about metrics."""
    if getattr(sender, "name", "") == "scheduler.tasks.schedule_pass" and isinstance(retval, dict) \
            and not retval.get("skipped") and "total_ms" in retval:
        pass_duration_record(float(retval["total_ms"]) / 1000.0)


def ws_clients_change(delta: int) -> None:
    """A telemetry websocket opened (+1) or closed (-1). Counted per process, so a process that
    restarts starts again from zero instead of inheriting a stale count."""
    global _process_field_reset
    store = _store()
    if store is None:
        with _local_lock:
            _local["ws_clients"] = _local.get("ws_clients", 0) + delta
        return
    try:
        if not _process_field_reset:
            store.hset(_WS_KEY, _process_field, 0)
            _process_field_reset = True
        store.hincrby(_WS_KEY, _process_field, delta)
    except Exception:  # noqa: BLE001
        pass


def _shared_values() -> tuple[dict[str, float], int]:
    store = _store()
    if store is None:
        with _local_lock:
            return dict(_local), int(_local.get("ws_clients", 0))
    try:
        values = {k.decode(): float(v) for k, v in store.hgetall(_KEY).items()}
        clients = sum(max(0, int(v)) for v in store.hgetall(_WS_KEY).values())
        return values, clients
    except Exception:  # noqa: BLE001
        return {}, 0


GPU_GAUGES = [
    # (metric name, help, sample attribute, scale to base unit)
    ("portal_gpu_utilization_ratio", "GPU (SM) utilization, 0-1.", "util_gpu", 1),
    ("portal_gpu_memory_utilization_ratio", "Memory controller utilization, 0-1.", "util_mem", 1),
    ("portal_gpu_memory_used_bytes", "GPU memory in use.", "mem_used_bytes", 1),
    ("portal_gpu_memory_total_bytes", "GPU memory in total.", "mem_total_bytes", 1),
    ("portal_gpu_power_watts", "Power draw.", "power_w", 1),
    ("portal_gpu_power_limit_watts", "Enforced power limit.", "power_limit_w", 1),
    ("portal_gpu_temperature_celsius", "GPU temperature.", "temp_c", 1),
    ("portal_gpu_sm_clock_hertz", "SM clock.", "sm_clock_mhz", 1_000_000),
]
GPU_LABELS = ["node", "gpu_uuid", "gpu_index", "mig_slice", "model", "team", "simulated"]


class PortalCollector:
    """Everything /metrics shows, computed at scrape time (a handful of queries)."""

    def collect(self):
        from governance.models import Team
        from scheduler import telemetry

        gpus = {g.pk: g for g in GpuDevice.objects.select_related("node")}
        holders = {}
        for gpu_id, slice_gpu_id, slice_index, team_id in Allocation.objects.filter(released_at__isnull=True).values_list(
                "gpu_id", "mig_slice__gpu_id", "mig_slice__index", "team_id"):
            holders[(gpu_id or slice_gpu_id, slice_index if slice_index is not None else -1)] = team_id
        slugs = dict(Team.objects.filter(pk__in=set(holders.values())).values_list("pk", "slug"))
        latest = telemetry.latest_readings()

        families = {name: GaugeMetricFamily(name, doc, labels=GPU_LABELS) for name, doc, _a, _s in GPU_GAUGES}
        ecc = CounterMetricFamily("portal_gpu_ecc_errors", "Uncorrected volatile ECC errors.", labels=GPU_LABELS)
        age = GaugeMetricFamily("portal_gpu_sample_timestamp_seconds", "Unix time of the GPU's latest sample.", labels=GPU_LABELS)
        for (gpu_id, slice_index), sample in sorted(latest.items()):
            gpu = gpus.get(gpu_id)
            if gpu is None:
                continue
            labels = [gpu.node.name, gpu.uuid, str(gpu.index), "" if slice_index < 0 else str(slice_index), gpu.model,
                      slugs.get(holders.get((gpu_id, slice_index)), ""), "true" if gpu.node.simulated else "false"]
            for name, _doc, attr, scale in GPU_GAUGES:
                value = getattr(sample, attr)
                if value is not None:
                    families[name].add_metric(labels, float(value) * scale)
            if sample.ecc_errors is not None:
                ecc.add_metric(labels, float(sample.ecc_errors))
            age.add_metric(labels, sample.ts.timestamp())
        yield from families.values()
        yield ecc
        yield age

        healthy = GaugeMetricFamily("portal_gpu_healthy", "1 when the GPU is healthy.", labels=["node", "gpu_uuid", "model"])
        for gpu in gpus.values():
            healthy.add_metric([gpu.node.name, gpu.uuid, gpu.model], 1.0 if gpu.healthy else 0.0)
        yield healthy

        node_state = GaugeMetricFamily("portal_node_state", "1 for the node's current state.", labels=["node", "state"])
        for name, state in Node.objects.values_list("name", "state"):
            for choice in Node.State.values:
                node_state.add_metric([name, choice], 1.0 if state == choice else 0.0)
        yield node_state

        # workspaces sit above the scheduler: looked up by name, never imported
        Workspace = apps.get_model("workspaces", "Workspace")
        by_state = dict(Workspace.objects.values("state").annotate(n=Count("id")).values_list("state", "n"))
        workspaces = GaugeMetricFamily("portal_workspaces", "Workspaces by state.", labels=["state"])
        for state in Workspace.State.values:
            workspaces.add_metric([state], float(by_state.get(state, 0)))
        yield workspaces
        launches = CounterMetricFamily("portal_workspace_launches", "Workspaces that reached running.")
        launches.add_metric([], float(Workspace.objects.filter(running_at__isnull=False).count()))
        yield launches
        failures = CounterMetricFamily("portal_workspace_failures", "Workspaces that failed.")
        failures.add_metric([], float(by_state.get(Workspace.State.FAILED, 0)))
        yield failures

        pending = GaugeMetricFamily("portal_allocation_requests_pending", "Allocation requests waiting for GPUs.")
        pending.add_metric([], float(AllocationRequest.objects.filter(state=AllocationRequest.State.PENDING).count()))
        yield pending
        allocated = GaugeMetricFamily("portal_allocations_live", "Devices (GPUs or MIG slices) allocated now.")
        allocated.add_metric([], float(sum(1 for _ in holders)))
        yield allocated

        shared, clients = _shared_values()
        duration = GaugeMetricFamily("portal_schedule_pass_duration_seconds", "Duration of the last scheduling pass.")
        if "pass_duration_seconds" in shared:
            duration.add_metric([], shared["pass_duration_seconds"])
        yield duration
        passes = CounterMetricFamily("portal_schedule_passes", "Scheduling passes run.")
        passes.add_metric([], shared.get("passes_total", 0.0))
        yield passes
        ws = GaugeMetricFamily("portal_websocket_clients", "Open telemetry websockets.")
        ws.add_metric([], float(clients))
        yield ws


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PortalCollector())
    return reg
