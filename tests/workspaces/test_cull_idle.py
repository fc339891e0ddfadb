"""GPU-aware idle culling with the simulated fleet's utilisation (GpuSample rows written as its
sampler writes them) and a real JupyterLab: an idle notebook holding GPU memory is warned, then
culled; a busy kernel with no browser open is not; activity or an extension resets the clock.

The culler takes `now` so the idle window passes without waiting for it; the lab's own clock
stays real, which only makes it look more idle (its last activity lies further in the past)."""

import asyncio
import datetime

import pytest
from django.core import mail
from django.utils import timezone

from governance.models import AuditEvent
from tests.workspaces.housekeeping_support import Lab, kernel_execute, live_allocations, node_with_gpus, placed_workspace, write_samples
from workspaces import services
from workspaces.housekeeping import cull_run, workspace_idle_status
from workspaces.models import Workspace
from workspaces.tasks import workspaces_cull

S = Workspace.State
LAB_WORKSPACE_ID = 4242  # the module's lab serves /w/4242/: each test's workspace takes that id
WINDOW, WARNING = 30, 10


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("cull-lab"), f"/w/{LAB_WORKSPACE_ID}/").start()
    yield lab
    lab.stop()


@pytest.fixture
def workspace(team, owner):
    policy = team.policy
    policy.idle_window_minutes, policy.idle_warning_minutes, policy.idle_gpu_util_threshold = WINDOW, WARNING, 0.05
    policy.save()
    now = timezone.now()
    return placed_workspace(owner=owner, team=team, node=node_with_gpus(count=2), gpus=2, state=S.RUNNING,
                            launcher="local", pk=LAB_WORKSPACE_ID, running_at=now, last_activity_at=now,
                            planned_end=now + datetime.timedelta(hours=8))


def _ws_url(lab, kernel_id):
    return f"ws://127.0.0.1:{lab.port}{lab.base_url}api/kernels/{kernel_id}/channels"


def _refresh(workspace):
    workspace.refresh_from_db()
    return workspace


@pytest.mark.slow
def test_an_idle_notebook_holding_gpu_memory_is_warned_then_culled(lab, workspace, owner,
                                                                  django_capture_on_commit_callbacks):
    lab.bind(workspace)
    kernel = lab.kernel_start()
    try:
        # The notebook ran something and then sat there, holding 20 GB on each GPU at ~1% use.
        assert asyncio.run(kernel_execute(_ws_url(lab, kernel), "x = 1 + 1\nprint(x)", headers=lab.headers())) == "2\n"
        t0 = timezone.now()
        now1 = t0 + datetime.timedelta(minutes=WINDOW - WARNING + 1)
        write_samples(workspace, util=0.01, start=t0 - datetime.timedelta(minutes=5), end=now1, mem_used_gb=20)

        with django_capture_on_commit_callbacks(execute=True):  # the email goes out after commit
            report = cull_run(now=now1)

        workspace = _refresh(workspace)
        assert report.warned == [workspace.pk] and report.culled == []
        assert workspace.state == S.RUNNING and workspace.idle_warned_at == now1
        assert t0 - datetime.timedelta(minutes=1) <= workspace.idle_since <= t0 + datetime.timedelta(minutes=1)
        status = workspace_idle_status(workspace, now=now1)
        assert status.warned and status.warning and status.reason == "idle"
        assert status.stop_at == max(workspace.idle_since + datetime.timedelta(minutes=WINDOW),
                                     now1 + datetime.timedelta(minutes=WARNING))
        assert "will be stopped" in status.message
        assert len(mail.outbox) == 1 and mail.outbox[0].to == [owner.email]
        assert f"/workspaces/{workspace.pk}/" in mail.outbox[0].body
        assert AuditEvent.objects.filter(action="workspace.idle_warning", target_id=str(workspace.pk)).count() == 1

        # Within the warning period nothing more happens (and no second email).
        write_samples(workspace, util=0.0, start=now1, end=now1 + datetime.timedelta(minutes=2), mem_used_gb=20)
        with django_capture_on_commit_callbacks(execute=True):
            assert cull_run(now=now1 + datetime.timedelta(minutes=2)).summary() == {"idle": [workspace.pk]}
        assert len(mail.outbox) == 1

        now2 = status.stop_at + datetime.timedelta(minutes=1)
        write_samples(workspace, util=0.0, start=now1, end=now2, mem_used_gb=20)
        report = cull_run(now=now2)

        workspace = _refresh(workspace)
        assert report.culled == [workspace.pk]
        assert workspace.state == S.CULLED and workspace.stop_reason.startswith("idle for")
        assert "GPU utilisation under 5%" in workspace.stop_reason
        assert live_allocations(workspace) == 0
        assert workspace.volume  # the volume is kept: a restart mounts it again
        assert AuditEvent.objects.filter(action="workspace.cull", target_id=str(workspace.pk)).count() == 1
    finally:
        lab.kernel_delete(kernel)


@pytest.mark.slow
def test_a_busy_kernel_with_no_browser_open_is_not_culled(lab, workspace):
    lab.bind(workspace)
    kernel = lab.kernel_start()
    try:
        asyncio.run(kernel_execute(_ws_url(lab, kernel), "import time; time.sleep(600)", wait_reply=False,
                                   headers=lab.headers()))
        assert lab.kernel_state(kernel) == "busy"
        t0 = timezone.now()
        late = t0 + datetime.timedelta(minutes=WINDOW * 3)
        # Even with the GPUs quiet (a CPU-bound step), a running cell is work.
        write_samples(workspace, util=0.0, start=t0 - datetime.timedelta(minutes=5), end=late)

        report = cull_run(now=late)

        workspace = _refresh(workspace)
        assert report.summary() == {}
        assert workspace.state == S.RUNNING and workspace.idle_warned_at is None and workspace.idle_since is None
        assert not mail.outbox
    finally:
        lab.kernel_delete(kernel)


@pytest.mark.slow
def test_gpu_activity_after_the_warning_withdraws_it(lab, workspace):
    lab.bind(workspace)
    t0 = timezone.now()
    now1 = t0 + datetime.timedelta(minutes=WINDOW - WARNING + 1)
    write_samples(workspace, util=0.0, start=t0 - datetime.timedelta(minutes=5), end=now1)
    assert cull_run(now=now1).warned == [workspace.pk]

    # A training step started on the GPUs (e.g. from a terminal): busy samples for a minute.
    busy_at = now1 + datetime.timedelta(minutes=2)
    write_samples(workspace, util=0.93, start=busy_at, end=busy_at + datetime.timedelta(minutes=1))
    later = busy_at + datetime.timedelta(minutes=WARNING + 1)
    write_samples(workspace, util=0.0, start=busy_at + datetime.timedelta(minutes=1, seconds=30), end=later)

    report = cull_run(now=later)

    workspace = _refresh(workspace)
    assert report.culled == [] and report.warned == []
    assert workspace.state == S.RUNNING and workspace.idle_warned_at is None
    assert workspace.idle_since >= busy_at + datetime.timedelta(minutes=1)
    assert not workspace_idle_status(workspace, now=later).warned


@pytest.mark.slow
def test_extending_after_the_warning_resets_the_idle_clock(lab, workspace, owner):
    lab.bind(workspace)
    t0 = timezone.now()
    now1 = t0 + datetime.timedelta(minutes=WINDOW - WARNING + 1)
    write_samples(workspace, util=0.0, start=t0 - datetime.timedelta(minutes=WINDOW), end=now1)
    assert cull_run(now=now1).warned == [workspace.pk]

    services.workspace_extend(workspace=workspace, actor=owner, hours=1)

    workspace = _refresh(workspace)
    assert workspace.idle_warned_at is None and workspace.idle_since is None
    soon = workspace.last_activity_at + datetime.timedelta(minutes=2)
    report = cull_run(now=soon)
    workspace = _refresh(workspace)
    assert report.warned == [] and report.culled == []
    assert workspace.idle_since == workspace.last_activity_at  # the clock restarted at the extension


def test_busy_gpus_are_not_idle_even_with_a_quiet_lab(workspace):
    # No lab needed: the GPU evidence alone rules idleness out.
    t0 = timezone.now()
    write_samples(workspace, util=0.97, start=t0, end=t0 + datetime.timedelta(minutes=WINDOW * 2), mem_used_gb=70)

    report = cull_run(now=t0 + datetime.timedelta(minutes=WINDOW * 2))

    assert report.summary() == {}
    assert _refresh(workspace).idle_since is None


@pytest.mark.parametrize("samples", ["none", "stale"])
def test_missing_or_stale_telemetry_never_counts_as_idle(workspace, samples):
    t0 = timezone.now()
    late = t0 + datetime.timedelta(minutes=WINDOW * 2)
    if samples == "stale":  # the sampler stopped half-way: we cannot know what happened since
        write_samples(workspace, util=0.0, start=t0, end=t0 + datetime.timedelta(minutes=WINDOW))

    report = cull_run(now=late)

    assert report.summary() == {}
    workspace = _refresh(workspace)
    assert workspace.state == S.RUNNING and workspace.idle_warned_at is None


def test_the_maximum_lifetime_applies_to_a_busy_workspace(workspace):
    policy = workspace.team.policy
    Workspace.objects.filter(pk=workspace.pk).update(
        created_at=timezone.now() - datetime.timedelta(hours=policy.max_lifetime_hours, minutes=1))
    write_samples(workspace, util=0.99, start=timezone.now() - datetime.timedelta(minutes=5), end=timezone.now())

    summary = workspaces_cull()

    workspace = _refresh(workspace)
    assert summary == {"culled": [workspace.pk]}
    assert workspace.state == S.CULLED
    assert workspace.stop_reason == f"reached the team's maximum lifetime of {policy.max_lifetime_hours} h"
    assert live_allocations(workspace) == 0


def test_the_planned_end_is_announced_then_enforced(workspace, owner, django_capture_on_commit_callbacks):
    now = timezone.now()
    Workspace.objects.filter(pk=workspace.pk).update(planned_end=now + datetime.timedelta(minutes=WARNING - 2))
    write_samples(workspace, util=0.8, start=now - datetime.timedelta(minutes=5), end=now)

    with django_capture_on_commit_callbacks(execute=True):
        report = cull_run(now=now)

    workspace = _refresh(workspace)
    assert report.warned == [workspace.pk] and workspace.idle_warned_at == now
    status = workspace_idle_status(workspace, now=now)
    assert status.reason == "planned_end" and status.stop_at == workspace.planned_end and "planned end" in status.message
    assert len(mail.outbox) == 1 and "will be stopped" in mail.outbox[0].subject
    assert cull_run(now=now + datetime.timedelta(minutes=1)).warned == []  # warned once

    after = workspace.planned_end + datetime.timedelta(seconds=1)
    write_samples(workspace, util=0.8, start=now, end=after)
    report = cull_run(now=after)

    workspace = _refresh(workspace)
    assert report.stopped == [workspace.pk]
    assert workspace.state == S.STOPPING and workspace.stop_reason.startswith("its planned end")
    assert live_allocations(workspace) == 0


def test_idle_status_is_empty_for_a_workspace_that_is_not_running(workspace):
    Workspace.objects.filter(pk=workspace.pk).update(state=S.STOPPED, idle_warned_at=timezone.now(),
                                                     idle_since=timezone.now())
    status = workspace_idle_status(_refresh(workspace))
    assert not status.warned and status.stop_at is None and status.message == ""
