"""The reconciler with the local-process launcher and real JupyterLab processes: a lab from before a
portal restart is re-adopted, a lab killed by hand fails its workspace and frees its GPUs, an
orphan process is stopped, and a crash mid-launch or mid-stop leaves nothing half-done."""

import datetime
import os
import signal
import subprocess
import time

import httpx
import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from governance.models import AuditEvent
from scheduler.models import AllocationRequest
from tests.workspaces.housekeeping_support import live_allocations, node_with_gpus, placed_workspace
from workspaces.housekeeping import reconcile_node
from workspaces.launchers.base import LaunchSpec
from workspaces.launchers.local import LocalLauncher
from workspaces.models import Workspace
from workspaces.tasks import workspace_start

S = Workspace.State


@pytest.fixture(autouse=True)
def local_launcher(settings):
    settings.PORTAL_LAUNCHER = "local"
    settings.PORTAL_LAB_READY_TIMEOUT = 90


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_lab_from_before_a_restart_is_adopted_and_one_killed_by_hand_fails_and_frees_gpus(team, owner):
    node = node_with_gpus(count=2)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=2)
    assert workspace_start(workspace.pk) == "running"
    workspace.refresh_from_db()
    pid = int(workspace.handle.split(":")[1])
    try:
        # A fresh launcher and a fresh reconciler know nothing of the child: as after a portal restart.
        report = reconcile_node()
        workspace.refresh_from_db()
        assert report.failed == [] and report.orphans_removed == []
        assert workspace.state == S.RUNNING and _alive(pid)
        status = httpx.get(f"http://127.0.0.1:{workspace.port}/w/{workspace.pk}/api/status",
                           headers={"Authorization": f"token {workspace.lab_token}"})
        assert status.status_code == 200

        os.killpg(pid, signal.SIGKILL)
        assert _wait_dead(pid)
        report = reconcile_node()

        workspace.refresh_from_db()
        assert report.failed == [workspace.pk]
        assert workspace.state == S.FAILED and "JupyterLab stopped unexpectedly" in workspace.error
        assert live_allocations(workspace) == 0
        assert workspace.allocation_request.state == AllocationRequest.State.FINISHED
        assert AuditEvent.objects.filter(action="workspace.fail", target_id=str(workspace.pk)).count() == 1
        assert reconcile_node().failed == []  # safe to run twice
    finally:
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)


def _marked_process(workspace_id: int) -> subprocess.Popen:
    """A process carrying the local launcher's marker, as a lab left behind would."""
    env = {"PATH": os.environ["PATH"], "PORTAL_WORKSPACE_ID": str(workspace_id),
           "PORTAL_LAUNCH_ROOT": str(django_settings.PORTAL_WORKSPACE_ROOT)}
    return subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)


def test_orphan_local_processes_are_stopped_and_others_left_alone(team, owner):
    node = node_with_gpus(count=1)
    stopped = placed_workspace(owner=owner, team=team, node=node, gpus=1, state=S.STOPPED, launcher="local")
    orphan_of_stopped = _marked_process(stopped.pk)
    orphan_of_nobody = _marked_process(424242)
    unrelated = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        report = reconcile_node()

        assert len(report.orphans_removed) == 2
        assert _wait_dead(orphan_of_stopped.pid) and _wait_dead(orphan_of_nobody.pid)
        assert _alive(unrelated.pid)
        assert AuditEvent.objects.filter(action="workspace.orphan_removed").count() == 2
    finally:
        for process in (orphan_of_stopped, orphan_of_nobody, unrelated):
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_launch_interrupted_after_the_lab_was_ready_is_adopted_as_running(team, owner):
    """The worker died between "lab ready" and recording it: the lab is fine, so keep it."""
    node = node_with_gpus(count=1)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=1)
    launcher = LocalLauncher()
    spec = LaunchSpec(workspace_id=workspace.pk, owner_username=owner.username, team_slug=team.slug,
                      image_reference="", device_uuids=(), token="tok-" + "x" * 20, base_url=f"/w/{workspace.pk}/")
    result = launcher.start(spec)
    try:
        launcher.wait_ready(result, spec.token, spec.base_url, timeout=90)
        long_ago = timezone.now() - datetime.timedelta(hours=1)
        Workspace.objects.filter(pk=workspace.pk).update(
            state=S.STARTING, starting_at=long_ago, launcher="local", lab_token=spec.token,
            handle=result.handle, host=result.host, port=result.port)

        report = reconcile_node()

        workspace.refresh_from_db()
        assert report.adopted == [workspace.pk]
        assert workspace.state == S.RUNNING and launcher.status(result.handle).state == "running"
        assert live_allocations(workspace) == 1
    finally:
        launcher.stop(result.handle)


def test_a_launch_that_never_finished_is_failed_and_its_gpus_freed(team, owner):
    node = node_with_gpus(count=1)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=1, state=S.STARTING, launcher="local",
                                 starting_at=timezone.now() - datetime.timedelta(hours=1))
    fresh = placed_workspace(owner=owner, team=team, node=node_with_gpus("node-fresh", 1), gpus=1, state=S.STARTING,
                             launcher="local", starting_at=timezone.now())

    report = reconcile_node()

    workspace.refresh_from_db()
    fresh.refresh_from_db()
    assert report.failed == [workspace.pk]
    assert workspace.state == S.FAILED and "did not finish" in workspace.error
    assert live_allocations(workspace) == 0
    assert fresh.state == S.STARTING and live_allocations(fresh) == 1  # still within its time


def test_a_workspace_never_started_by_its_node_is_failed(team, owner):
    node = node_with_gpus(count=1)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=1)
    Workspace.objects.filter(pk=workspace.pk).update(scheduled_at=timezone.now() - datetime.timedelta(hours=1))

    reconcile_node()

    workspace.refresh_from_db()
    assert workspace.state == S.FAILED and node.name in workspace.error and "agent" in workspace.error
    assert live_allocations(workspace) == 0


def test_a_stop_interrupted_mid_way_ends_stopped(team, owner):
    node = node_with_gpus(count=1)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=1, state=S.STOPPING, launcher="local",
                                 stopping_at=timezone.now() - datetime.timedelta(hours=1))
    process = _marked_process(workspace.pk)
    handle = f"pid:{process.pid}:{open(f'/proc/{process.pid}/stat').read().rsplit(')', 1)[1].split()[19]}"
    Workspace.objects.filter(pk=workspace.pk).update(handle=handle)
    try:
        report = reconcile_node()

        workspace.refresh_from_db()
        assert report.stopped == [workspace.pk] and workspace.state == S.STOPPED
        assert _wait_dead(process.pid)
    finally:
        process.kill()
        process.wait()


def test_gpus_still_held_by_an_ended_workspace_are_released(team, owner):
    node = node_with_gpus(count=2)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=2, state=S.FAILED)

    report = reconcile_node()

    assert report.released == [workspace.allocation_request_id]
    assert live_allocations(workspace) == 0
    assert reconcile_node().released == []


def test_a_running_workspace_whose_gpus_were_taken_back_is_stopped(team, owner):
    node = node_with_gpus(count=1)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=1, state=S.RUNNING, launcher="local")
    process = _marked_process(workspace.pk)
    handle = f"pid:{process.pid}:{open(f'/proc/{process.pid}/stat').read().rsplit(')', 1)[1].split()[19]}"
    Workspace.objects.filter(pk=workspace.pk).update(handle=handle)
    workspace.allocation_request.allocations.update(released_at=timezone.now(), release_reason="test")
    try:
        report = reconcile_node()

        workspace.refresh_from_db()
        assert report.stopped == [workspace.pk]
        assert workspace.state == S.STOPPING and "allocation was released" in workspace.stop_reason
    finally:
        process.kill()
        process.wait()


def test_under_celery_the_beat_run_fans_out_one_run_per_node(team, owner, settings, monkeypatch):
    """Each node's agent reconciles its own instances (its engine, its processes): the beat's run
    sends one per node queue and itself repairs only records. Here the Celery app runs eagerly
    (whatever the environment's broker), so the node runs happen in this process."""
    from portal.celery import app as celery_app

    settings.PORTAL_TASKS = "celery"
    monkeypatch.setattr(celery_app.conf, "task_always_eager", True)
    dead = "pid:999999999:1"  # no such process: the lab is gone
    on_a = placed_workspace(owner=owner, team=team, node=node_with_gpus("node-a", 1), gpus=1, state=S.RUNNING,
                            launcher="local", handle=dead)
    on_b = placed_workspace(owner=owner, team=team, node=node_with_gpus("node-b", 1), gpus=1, state=S.RUNNING,
                            launcher="local", handle=dead)

    from workspaces.tasks import workspaces_reconcile

    assert workspaces_reconcile() == {}  # the records were fine; the node runs did the rest

    for workspace in (on_a, on_b):
        workspace.refresh_from_db()
        assert workspace.state == S.FAILED and "process 999999999 is gone" in workspace.error
        assert live_allocations(workspace) == 0
