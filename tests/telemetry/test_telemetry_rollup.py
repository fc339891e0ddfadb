"""Rollups: right min/mean/max on known data, idempotent, retention, and history at the right
resolution (raw, 60 s, 3600 s), a team's history limited to when it held the GPU."""

import datetime

import pytest

from scheduler import telemetry
from scheduler.models import GpuRollup, GpuSample
from tests.telemetry.conftest import gpu_of

UTC = datetime.UTC
T0 = datetime.datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)


def _sample(gpu, ts, util, mem, power=None, temp=None, slice_index=-1):
    return GpuSample(gpu=gpu, slice_index=slice_index, ts=ts, util_gpu=util, util_mem=util / 2, mem_used_bytes=mem,
                     mem_total_bytes=80 * 2**30, power_w=power, power_limit_w=700.0, temp_c=temp, sm_clock_mhz=1980.0, ecc_errors=0)


@pytest.fixture
def known_data(fleet):
    """gpu0: minute 10:00 with utils 0.2, 0.4, 0.9 and minute 10:01 with 1.0, 0.0;
    gpu1: one sample in 10:00. Plus one sample in the unfinished minute 10:02."""
    g0, g1 = gpu_of(fleet["tel-a"], 0), gpu_of(fleet["tel-a"], 1)
    rows = [
        _sample(g0, T0 + datetime.timedelta(seconds=1), 0.2, 100, power=100.0, temp=40.0),
        _sample(g0, T0 + datetime.timedelta(seconds=20), 0.4, 300, power=200.0, temp=50.0),
        _sample(g0, T0 + datetime.timedelta(seconds=59), 0.9, 200, power=600.0, temp=70.0),
        _sample(g0, T0 + datetime.timedelta(seconds=61), 1.0, 1000, power=None, temp=None),
        _sample(g0, T0 + datetime.timedelta(seconds=119), 0.0, 0, power=None, temp=None),
        _sample(g1, T0 + datetime.timedelta(seconds=30), 0.5, 50, power=80.0, temp=35.0),
        _sample(g0, T0 + datetime.timedelta(seconds=130), 0.7, 70),
    ]
    GpuSample.objects.bulk_create(rows)
    return g0, g1


def test_minute_rollup_has_the_right_aggregates(known_data):
    g0, g1 = known_data
    result = telemetry.telemetry_rollup(now=T0 + datetime.timedelta(seconds=150))
    assert result.minutes == 3 and result.hours == 0
    r = GpuRollup.objects.get(gpu=g0, resolution_s=60, bucket=T0)
    assert r.samples == 3
    assert (r.util_gpu_min, r.util_gpu_max) == (0.2, 0.9)
    assert r.util_gpu_mean == pytest.approx(0.5)
    assert (r.mem_used_min, r.mem_used_max) == (100, 300)
    assert r.mem_used_mean == pytest.approx(200)
    assert r.power_mean == pytest.approx(300.0) and r.power_max == 600.0
    assert r.temp_mean == pytest.approx(160 / 3) and r.temp_max == 70.0
    second = GpuRollup.objects.get(gpu=g0, resolution_s=60, bucket=T0 + datetime.timedelta(minutes=1))
    assert second.samples == 2 and second.util_gpu_mean == pytest.approx(0.5) and second.power_mean is None
    assert GpuRollup.objects.get(gpu=g1, resolution_s=60).util_gpu_mean == pytest.approx(0.5)
    # the unfinished minute 10:02 is not rolled up yet
    assert not GpuRollup.objects.filter(bucket=T0 + datetime.timedelta(minutes=2)).exists()


def test_rollup_is_idempotent(known_data):
    now = T0 + datetime.timedelta(seconds=150)
    telemetry.telemetry_rollup(now=now)
    before = list(GpuRollup.objects.order_by("gpu_id", "bucket").values())
    telemetry.telemetry_rollup(now=now)
    telemetry.telemetry_rollup(now=now)
    assert list(GpuRollup.objects.order_by("gpu_id", "bucket").values()) == before


def test_hour_rollup_weights_minutes_by_their_samples(known_data):
    g0, _g1 = known_data
    telemetry.telemetry_rollup(now=T0 + datetime.timedelta(seconds=150))
    result = telemetry.telemetry_rollup(now=T0 + datetime.timedelta(hours=1, seconds=5))
    assert result.hours == 2
    hour = GpuRollup.objects.get(gpu=g0, resolution_s=3600, bucket=T0)
    # minutes: 10:00 (3 samples, mean .5), 10:01 (2 samples, mean .5), 10:02 (1 sample, .7)
    assert hour.samples == 6
    assert hour.util_gpu_mean == pytest.approx((0.2 + 0.4 + 0.9 + 1.0 + 0.0 + 0.7) / 6)
    assert (hour.util_gpu_min, hour.util_gpu_max) == (0.0, 1.0)
    assert (hour.mem_used_min, hour.mem_used_max) == (0, 1000)


def test_retention_drops_old_raw_and_old_rollups(known_data, settings):
    g0, _g1 = known_data
    GpuRollup.objects.create(gpu=g0, resolution_s=60, bucket=T0 - datetime.timedelta(days=40), samples=1, util_gpu_min=0,
                             util_gpu_mean=0, util_gpu_max=0, mem_used_min=0, mem_used_mean=0, mem_used_max=0)
    GpuRollup.objects.create(gpu=g0, resolution_s=3600, bucket=T0 - datetime.timedelta(days=40), samples=1, util_gpu_min=0,
                             util_gpu_mean=0, util_gpu_max=0, mem_used_min=0, mem_used_mean=0, mem_used_max=0)
    result = telemetry.telemetry_rollup(now=T0 + datetime.timedelta(hours=2))
    assert result.deleted_raw == 7 and GpuSample.objects.count() == 0
    assert result.deleted_minutes == 1 and result.deleted_hours == 0
    # the raw samples were rolled up before they went
    assert GpuRollup.objects.filter(resolution_s=60, bucket__gte=T0).count() == 4


@pytest.mark.parametrize(("window", "resolution"), [(600, 0), (3600, 60), (86400, 60), (7 * 86400, 3600)])
def test_history_reads_the_right_resolution(known_data, window, resolution):
    g0, _g1 = known_data
    telemetry.telemetry_rollup(now=T0 + datetime.timedelta(hours=1, seconds=5))
    data = telemetry.history(spans=telemetry.gpu_spans(g0), window_s=window, now=T0 + datetime.timedelta(seconds=150))
    assert data["resolution_s"] == resolution
    points = {s["key"]: s["points"] for s in data["series"]}
    if resolution == 0:
        assert [p[1] for p in points[f"{g0.uuid}:-1"]] == [0.2, 0.4, 0.9, 1.0, 0.0, 0.7]
    elif resolution == 60:
        assert [p[1] for p in points[f"{g0.uuid}:-1"]] == [0.5, 0.5, 0.7]
    else:
        assert len(points[f"{g0.uuid}:-1"]) == 1


def test_team_history_covers_only_the_teams_tenure(known_data, team, member, allocate):
    g0, _g1 = known_data
    allocation = allocate(team, member, gpu=g0, started_at=T0 + datetime.timedelta(seconds=60))
    spans = telemetry.team_spans(team.pk, since=T0 - datetime.timedelta(hours=1))
    data = telemetry.history(spans=spans, window_s=600, now=T0 + datetime.timedelta(seconds=150))
    assert [p[1] for p in data["series"][0]["points"]] == [1.0, 0.0, 0.7]
    assert allocation.released_at is None


def test_usage_accounting_from_minute_rollups(known_data, team, member, allocate):
    g0, _g1 = known_data
    allocate(team, member, gpu=g0, started_at=T0)
    telemetry.telemetry_rollup(now=T0 + datetime.timedelta(seconds=150))
    usage = telemetry.team_gpu_hours(team_id=team.pk, start=T0, end=T0 + datetime.timedelta(minutes=2))
    assert usage["allocated_hours"] == pytest.approx(2 / 60, abs=1e-4)
    assert usage["used_hours"] == pytest.approx((0.5 + 0.5) * 60 / 3600, abs=1e-4)
