"""Sampling: the simulated sampler's patterns, one batch insert per node, health events, the task."""

import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from scheduler import gpus, telemetry
from scheduler.models import GpuDevice, GpuHealthEvent, GpuSample, MigSlice
from scheduler.tasks import telemetry_sample_all
from tests.telemetry.conftest import FLEET, gpu_of

GIB = 1024 ** 3


def test_simulated_sampler_is_deterministic_and_in_base_units():
    source = gpus.SimulatedSource(str(FLEET))
    info = source.inventory("tel-a")
    busy = {info.gpus[0].uuid: "17"}
    first = source.sample("tel-a", busy=busy, now=1_700_000_000.0)
    again = source.sample("tel-a", busy=busy, now=1_700_000_000.0)
    assert first == again
    assert len(first) == 4
    for r in first:
        assert 0.0 <= r.util_gpu <= 1.0 and 0.0 <= r.util_mem <= 1.0
        assert r.mem_total_bytes == 80 * GIB
        assert 0 <= r.mem_used_bytes <= r.mem_total_bytes
        assert 0 < r.power_w <= r.power_limit_w == 700.0
        assert 20 <= r.temp_c <= 95
        assert 100 <= r.sm_clock_mhz <= 2100


def test_free_gpus_idle_and_allocated_gpus_show_their_workload():
    source = gpus.SimulatedSource(str(FLEET))
    info = source.inventory("tel-a")
    busy = {g.uuid: str(n) for n, g in enumerate(info.gpus[:2])}
    readings = {r.uuid: r for r in source.sample("tel-a", busy=busy, now=1_700_000_100.0)}
    for g in info.gpus[2:]:
        assert readings[g.uuid].util_gpu == 0.0 and readings[g.uuid].mem_used_bytes == 0
    for g in info.gpus[:2]:
        pattern = gpus.sim_pattern(g.uuid, busy[g.uuid])
        assert pattern in gpus.SIM_PATTERNS
        assert readings[g.uuid].mem_used_bytes > 0.25 * readings[g.uuid].mem_total_bytes  # every workload holds memory


def test_every_pattern_is_plausible_over_time():
    """Training ~90 %+ most of the time, inference bursty, a forgotten notebook holds memory idle."""
    source = gpus.SimulatedSource(str(FLEET))
    gpu = source.inventory("tel-a").gpus[0]
    seen = {}
    for key in range(60):
        pattern = gpus.sim_pattern(gpu.uuid, str(key))
        if pattern in seen:
            continue
        utils = [source.sample("tel-a", busy={gpu.uuid: str(key)}, now=1_700_000_000.0 + t)[0].util_gpu for t in range(0, 600, 3)]
        seen[pattern] = utils
    assert set(seen) == set(gpus.SIM_PATTERNS)
    training, inference, notebook = seen["training"], seen["inference"], seen["notebook"]
    assert sorted(training)[len(training) // 2] >= 0.9
    assert max(notebook) <= 0.02
    assert max(inference) - min(inference) > 0.3


def test_mig_gpu_reports_whole_gpu_and_each_slice():
    source = gpus.SimulatedSource(str(FLEET))
    readings = source.sample("tel-b", now=1_700_000_000.0)
    mig = [r for r in readings if r.index == 1]
    assert [r.slice_index for r in mig] == [-1, 0, 1]
    assert all(r.slice_uuid.startswith("MIG-") for r in mig[1:])
    assert mig[0].mem_total_bytes == 141 * GIB


@pytest.mark.django_db
def test_sampling_a_node_stores_every_device_in_one_insert(fleet, team, member, allocate):
    node = fleet["tel-b"]
    allocate(team, member, mig_slice=MigSlice.objects.get(gpu__node=node, index=0))
    with CaptureQueriesContext(connection) as queries:
        stored = telemetry.telemetry_sample_node(node_name="tel-b", now=time.time())
    inserts = [q["sql"] for q in queries.captured_queries
               if "scheduler_gpusample" in q["sql"] and (q["sql"].startswith("INSERT") or q["sql"].startswith("COPY"))]
    assert stored == 4  # gpu0, gpu1 whole + its two slices
    assert len(inserts) == 1
    assert GpuSample.objects.count() == 4
    assert sorted(GpuSample.objects.values_list("slice_index", flat=True)) == [-1, -1, 0, 1]
    slice0 = GpuSample.objects.get(slice_index=0)
    assert slice0.mem_used_bytes > 0  # allocated: its workload holds memory


@pytest.mark.django_db
def test_unreadable_gpu_becomes_a_health_event_not_a_crash(fleet):
    node = fleet["tel-faulty"]
    now = time.time()
    assert telemetry.telemetry_sample_node(node_name="tel-faulty", now=now) == 1
    bad = gpu_of(node, 1)
    bad.refresh_from_db()
    assert not bad.healthy and "GPU is lost" in bad.health_message
    event = GpuHealthEvent.objects.get(gpu=bad)
    assert event.kind == "gpu_lost"
    # the same error a second later is not recorded again
    telemetry.telemetry_sample_node(node_name="tel-faulty", now=now + 1)
    assert GpuHealthEvent.objects.filter(gpu=bad).count() == 1
    assert GpuSample.objects.filter(gpu=bad).count() == 0
    assert GpuSample.objects.filter(gpu=gpu_of(node, 0)).count() == 2


@pytest.mark.django_db
def test_gpu_marked_by_telemetry_recovers_when_it_reads_again(fleet):
    gpu = gpu_of(fleet["tel-a"], 2)
    GpuDevice.objects.filter(pk=gpu.pk).update(healthy=False, health_message=f"{telemetry.HEALTH_PREFIX}GPU is lost")
    telemetry.telemetry_sample_node(node_name="tel-a")
    gpu.refresh_from_db()
    assert gpu.healthy and gpu.health_message == ""
    assert GpuHealthEvent.objects.filter(gpu=gpu, kind="recovered").count() == 1


@pytest.mark.django_db
def test_unknown_node_is_skipped(fleet):
    assert telemetry.telemetry_sample_node(node_name="not-registered") == 0
    assert GpuSample.objects.count() == 0


@pytest.mark.django_db
def test_sample_task_samples_every_local_node(fleet):
    stored = telemetry_sample_all.apply().get()
    # tel-a 4 + tel-b 4 (2 whole, 2 slices) + tel-faulty 1 readable
    assert stored == 9
    assert GpuSample.objects.values("gpu__node").distinct().count() == 3


@pytest.mark.django_db
def test_sample_message_carries_all_gpus_of_the_node_with_their_team(fleet, team, member, allocate):
    node = fleet["tel-a"]
    allocate(team, member, gpu=gpu_of(node, 1))
    ctx = telemetry.node_context("tel-a")
    readings = gpus.source().sample("tel-a", busy=ctx.busy, now=1_700_000_000.0)
    message = telemetry.node_message(ctx, readings, 1_700_000_000.0)
    assert message["type"] == "telemetry.sample" and message["node"] == node.pk and message["simulated"] is True
    assert [g["i"] for g in message["gpus"]] == [0, 1, 2, 3]
    assert [g["team"] for g in message["gpus"]] == [None, team.pk, None, None]
