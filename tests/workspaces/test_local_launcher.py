"""The local-process launcher with real processes: the lab sees only its GPUs, carries the
portal's marker (found again after a restart), its token stays out of argv, stop ends the whole
process group, and a lab that cannot start fails its workspace with the real message."""

import datetime
import os
import stat

import pytest

from scheduler.models import AllocationRequest
from tests.workspaces.lifecycle_support import fleet, h100_quota, lab_image, live_devices, stop_labs  # noqa: F401
from workspaces import services
from workspaces.launchers.base import LaunchError, LaunchSpec
from workspaces.launchers.local import LocalLauncher, _environ, parse_handle
from workspaces.models import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _spec(token="s3cret-token-value", wid=4242, devices=("GPU-aaaa", "MIG-bbbb")):
    return LaunchSpec(workspace_id=wid, owner_username="mia", team_slug="vision", image_reference="",
                      device_uuids=devices, token=token, base_url=f"/w/{wid}/", volume="portal-vision-mia")


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "fake-jupyter"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_lab_starts_on_its_gpus_with_marker_and_stops_with_its_group(settings, stop_labs):
    launcher = LocalLauncher()
    result = launcher.start(_spec())
    launcher.wait_ready(result, "s3cret-token-value", "/w/4242/", timeout=60)
    pid, ticks = parse_handle(result.handle)
    env = _environ(pid)
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa,MIG-bbbb" and env["NVIDIA_VISIBLE_DEVICES"] == "GPU-aaaa,MIG-bbbb"
    assert env["PORTAL_WORKSPACE_ID"] == "4242"
    assert "SECRET_KEY" not in env and "DATABASE_URL" not in env
    argv = open(f"/proc/{pid}/cmdline", "rb").read().decode()
    assert "s3cret-token-value" not in argv and "--ServerApp.base_url=/w/4242/" in argv
    workdir = settings.PORTAL_WORKSPACE_ROOT / "vision" / "mia"
    assert workdir.is_dir()
    # A portal restarted from scratch finds it again by its marker.
    assert [(i.handle, i.workspace_id) for i in LocalLauncher().list_owned()] == [(result.handle, 4242)]
    assert launcher.status(result.handle).state == "running"
    assert launcher.status(f"pid:{pid}:{int(ticks) + 1}").state == "missing"  # a reused pid is not the lab
    launcher.stop(result.handle)
    assert launcher.status(result.handle).state in ("exited", "missing")
    assert LocalLauncher().list_owned() == []
    assert workdir.is_dir()  # the volume stays


def test_a_lab_that_exits_explains_why(settings, tmp_path, stop_labs):
    settings.PORTAL_JUPYTER_COMMAND = _script(tmp_path, 'echo "fatal: CUDA driver version is insufficient" >&2; exit 3')
    launcher = LocalLauncher()
    with pytest.raises(LaunchError) as error:
        # It may exit before start() returns, or while wait_ready polls: either way, the reason.
        launcher.wait_ready(launcher.start(_spec()), "t", "/w/4242/", timeout=30)
    assert "exited" in error.value.message
    assert "CUDA driver version is insufficient" in error.value.message


def test_a_lab_that_never_answers_times_out_with_a_clear_message(settings, tmp_path, stop_labs):
    settings.PORTAL_JUPYTER_COMMAND = _script(tmp_path, "exec sleep 60")
    launcher = LocalLauncher()
    result = launcher.start(_spec())
    with pytest.raises(LaunchError) as error:
        launcher.wait_ready(result, "t", "/w/4242/", timeout=1)
    assert "did not answer /w/4242/api/status within 1 s" in error.value.message
    launcher.stop(result.handle)
    assert launcher.status(result.handle).state in ("exited", "missing")  # a zombie until reaped


def test_a_failed_launch_fails_the_workspace_and_frees_its_gpus(settings, tmp_path, member, team, fleet, h100_quota,
                                                               lab_image, transactional_db, stop_labs):
    settings.PORTAL_JUPYTER_COMMAND = _script(tmp_path, 'echo "error: no space left on device" >&2; exit 1')
    # transactional: after-commit work runs for real (eager tasks): pass -> placed -> start -> fail.
    workspace = services.workspace_create(user=member, team=team, image=lab_image, gpu_count=2, flavor="H100",
                                          duration=datetime.timedelta(hours=1))
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.FAILED
    assert "no space left on device" in workspace.error
    assert live_devices(workspace) == 0
    assert workspace.allocation_request.state == AllocationRequest.State.FINISHED
    assert not os.listdir(settings.PORTAL_WORKSPACE_ROOT / ".run") or not LocalLauncher().list_owned()


def test_cancelling_a_starting_workspace_stops_its_half_started_lab(member, team, fleet, h100_quota, lab_image,
                                                                    django_capture_on_commit_callbacks, stop_labs):
    from tests.workspaces.lifecycle_support import run_pass_and_reactions
    from workspaces.tasks import launch_spec_for

    workspace = services.workspace_create(user=member, team=team, image=lab_image, gpu_count=1, flavor="H100",
                                          duration=datetime.timedelta(hours=1))
    run_pass_and_reactions(django_capture_on_commit_callbacks)  # placed; the start task is held back
    workspace.refresh_from_db()
    assert services.workspace_mark_starting(workspace=workspace, launcher="local", token="tok")
    launcher = LocalLauncher()
    result = launcher.start(launch_spec_for(workspace, "tok"))
    assert services.workspace_record_instance(workspace=workspace, handle=result.handle, host=result.host, port=result.port)
    with django_capture_on_commit_callbacks(execute=True):
        services.workspace_cancel(workspace=workspace, actor=member)
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED and live_devices(workspace) == 0
    assert launcher.status(result.handle).state in ("exited", "missing")


def _two_free_ports() -> int:
    import socket

    for base in range(18990, 18900, -2):
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
            return base
        except OSError:
            continue
    pytest.fail("no two adjacent free ports")


def test_port_reservations_never_collide_and_stale_ones_are_reclaimed(settings):
    base = _two_free_ports()
    settings.PORTAL_LAB_PORT_RANGE = (base, base + 1)
    launcher = LocalLauncher()
    first, second = launcher._reserve_port(1), launcher._reserve_port(2)
    assert {first, second} == {base, base + 1}
    with pytest.raises(LaunchError, match="No free port left"):
        launcher._reserve_port(3)
    # Workspace 1's lab is gone (its pid file names a process that does not exist): reclaimed.
    (settings.PORTAL_WORKSPACE_ROOT / ".run" / "ws-1.pid").write_text("pid:4194999:1")
    assert launcher._reserve_port(3) == first
