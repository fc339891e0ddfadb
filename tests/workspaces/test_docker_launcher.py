"""The Docker launcher against the real Docker engine and a real JupyterLab image (portal-lab:ci,
built by .ci/build-lab-image.sh). This machine has no NVIDIA runtime: GPUs go by environment in
"env" mode, and a device request fails with the engine's own message."""

import io
import tarfile

import httpx
import pytest
from django.conf import settings as django_settings

from governance.models import AuditEvent
from scheduler.models import AllocationRequest
from tests.workspaces.housekeeping_support import (  # noqa: F401 - docker_engine is a fixture
    LAB_IMAGE, docker_engine, device_uuids, live_allocations, node_with_gpus, placed_workspace,
)
from workspaces import services
from workspaces.launchers.base import LaunchError, get_launcher
from workspaces.launchers.docker import DockerLauncher
from workspaces.models import Workspace
from workspaces.tasks import workspace_start

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _container(client, workspace):
    return client.containers.get(workspace.handle)


def test_env_mode_workspace_reaches_running_with_only_its_gpus_limits_labels_and_loopback_port(
        docker_engine, team, owner, django_capture_on_commit_callbacks):
    client = docker_engine
    node = node_with_gpus(count=3)
    team.policy.cpu_limit, team.policy.memory_limit_gb = 1.5, 2
    team.policy.save()
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=2)

    assert workspace_start(workspace.pk) == "running"

    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.RUNNING and workspace.launcher == "docker"
    container = _container(client, workspace)
    image = client.images.get(LAB_IMAGE)
    assert workspace.image_digest == image.id  # an imported image has no registry digest: its content ID
    labels = container.labels
    assert labels["portal.managed"] == "true" and labels["portal.workspace"] == str(workspace.pk)
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(device_uuids(workspace)) == env["CUDA_VISIBLE_DEVICES"]
    host_config = container.attrs["HostConfig"]
    assert host_config["NanoCpus"] == 1_500_000_000 and host_config["Memory"] == 2 * 1024**3
    assert not host_config.get("DeviceRequests")
    # Only the lab's port, only on loopback.
    assert set(host_config["PortBindings"]) == {"8888/tcp"}
    assert [b["HostIp"] for b in host_config["PortBindings"]["8888/tcp"]] == ["127.0.0.1"]
    assert workspace.host == "127.0.0.1"
    # On the portal's own bridge, where labs cannot reach each other.
    network = client.networks.get(host_config["NetworkMode"])
    assert network.name == f"{django_settings.PORTAL_DOCKER_INSTANCE}-portal-labs"
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/home/lab"]["Type"] == "volume" and mounts["/home/lab"]["Name"].endswith(workspace.volume)
    # The token is not on the command line (visible to every host user), only in the environment.
    assert workspace.lab_token not in " ".join(container.attrs["Config"]["Cmd"])

    # The lab answers with its token, and refuses without it.
    base = f"http://127.0.0.1:{workspace.port}/w/{workspace.pk}/api/"
    assert httpx.get(base + "status", headers={"Authorization": f"token {workspace.lab_token}"}).status_code == 200
    assert httpx.get(base + "contents").status_code == 403
    # Write a file into the home volume: it must outlive the container.
    put = httpx.put(base + "contents/keep.txt", headers={"Authorization": f"token {workspace.lab_token}"},
                    json={"type": "file", "format": "text", "content": "still here"})
    assert put.status_code == 201

    with django_capture_on_commit_callbacks(execute=True):
        services.workspace_stop(workspace=workspace, actor=owner)
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED
    assert live_allocations(workspace) == 0
    assert DockerLauncher().status(container.id).state == "missing"
    volume = client.volumes.get(mounts["/home/lab"]["Name"])
    # Read it back from the volume through a container that is never started (no log races).
    reader = client.containers.create(LAB_IMAGE, ["true"], volumes={volume.name: {"bind": "/home/lab"}},
                                      labels={"portal.instance": django_settings.PORTAL_DOCKER_INSTANCE})
    try:
        stream, _ = reader.get_archive("/home/lab/keep.txt")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            assert archive.extractfile("keep.txt").read() == b"still here"
    finally:
        reader.remove(force=True)


def test_device_request_the_engine_rejects_fails_the_workspace_with_its_message_and_frees_gpus(docker_engine, team, owner, settings):
    settings.PORTAL_DOCKER_GPU_MODE = "device_request"
    node = node_with_gpus(count=2)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=2)
    request = workspace.allocation_request

    assert workspace_start(workspace.pk) == "failed"

    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.FAILED
    assert 'could not select device driver "" with capabilities: [[gpu]]' in workspace.error
    assert live_allocations(workspace) == 0
    request.refresh_from_db()
    assert request.state == AllocationRequest.State.FINISHED
    # No half-created container is left behind.
    assert get_launcher("docker").list_owned() == []
    assert AuditEvent.objects.filter(action="workspace.fail", target_id=str(workspace.pk)).exists()


def test_image_missing_on_the_node_fails_with_a_clear_message(docker_engine, team, owner):
    node = node_with_gpus(count=1)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=1, reference="portal-lab:no-such-tag")

    assert workspace_start(workspace.pk) == "failed"

    workspace.refresh_from_db()
    assert "portal-lab:no-such-tag" in workspace.error and "not on this node" in workspace.error
    assert live_allocations(workspace) == 0


def test_launcher_reports_exit_code_and_logs_of_a_dead_container(docker_engine):
    client = docker_engine
    container = client.containers.run(
        LAB_IMAGE, ["/bin/sh", "-c", "echo lab-says-goodbye; exit 3"], detach=True,
        labels={"portal.managed": "true", "portal.workspace": "999999", "portal.instance": django_settings.PORTAL_DOCKER_INSTANCE})
    container.wait(timeout=30)
    launcher = DockerLauncher()

    status = launcher.status(container.id)
    assert status.state == "exited" and "exited with code 3" in status.detail
    assert "lab-says-goodbye" in launcher.logs_tail(container.id)
    assert [o.workspace_id for o in launcher.list_owned()] == [999999]
    launcher.stop(container.id)
    assert launcher.status(container.id).state == "missing"
    launcher.stop(container.id)  # already gone: not an error


def test_engine_errors_become_launch_errors(docker_engine):
    with pytest.raises(LaunchError) as caught:
        DockerLauncher()._image("portal-lab:no-such-tag")
    assert "not on this node" in caught.value.message
