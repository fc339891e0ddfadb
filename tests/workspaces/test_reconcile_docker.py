"""The reconciler against the real Docker engine: orphan containers go, the labs of live
workspaces stay, a container that died takes its workspace to failed and frees its GPUs."""

import pytest
from django.conf import settings as django_settings

from governance.models import AuditEvent
from tests.workspaces.housekeeping_support import (  # noqa: F401 - docker_engine is a fixture
    LAB_IMAGE, docker_engine, live_allocations, node_with_gpus, placed_workspace,
)
from workspaces.housekeeping import reconcile_node
from workspaces.models import Workspace
from workspaces.tasks import workspace_start, workspaces_reconcile

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _sleeper(client, *, workspace_id: int | None, managed: bool = True, instance: str | None = None):
    labels = {"portal.instance": django_settings.PORTAL_DOCKER_INSTANCE if instance is None else instance}
    if managed:
        labels["portal.managed"] = "true"
    if workspace_id is not None:
        labels["portal.workspace"] = str(workspace_id)
    return client.containers.run(LAB_IMAGE, ["sleep", "600"], detach=True, labels=labels, init=True)


def _exists(client, container) -> bool:
    return any(c.id == container.id for c in client.containers.list(all=True))


def test_orphan_containers_are_removed_and_live_ones_kept(docker_engine, team, owner):
    client = docker_engine
    node = node_with_gpus(count=2)
    running = placed_workspace(owner=owner, team=team, node=node, gpus=1, state=Workspace.State.RUNNING)
    kept = _sleeper(client, workspace_id=running.pk)
    running.handle, running.launcher = kept.id, "docker"
    running.save(update_fields=["handle", "launcher"])
    stopped = placed_workspace(owner=owner, team=team, node=node, gpus=1, state=Workspace.State.STOPPED)
    of_stopped = _sleeper(client, workspace_id=stopped.pk)
    of_nobody = _sleeper(client, workspace_id=987654)
    unattributable = _sleeper(client, workspace_id=None)
    # A second container claiming the running workspace: not the one its record names.
    impostor = _sleeper(client, workspace_id=running.pk)
    not_ours = _sleeper(client, workspace_id=running.pk, managed=False)
    other_portal = _sleeper(client, workspace_id=stopped.pk, instance="another-portal")
    try:
        report = workspaces_reconcile()

        assert sorted(report["orphans_removed"]) == sorted([of_stopped.id, of_nobody.id, unattributable.id, impostor.id])
        assert _exists(client, kept) and _exists(client, not_ours) and _exists(client, other_portal)
        for gone in (of_stopped, of_nobody, unattributable, impostor):
            assert not _exists(client, gone)
        running.refresh_from_db()
        assert running.state == Workspace.State.RUNNING and live_allocations(running) == 1
        events = AuditEvent.objects.filter(action="workspace.orphan_removed")
        assert sorted(e.target_id for e in events) == sorted(
            str(i) for i in (stopped.pk, 987654, 0, running.pk))
        # Safe to run twice: nothing more to do.
        assert reconcile_node().orphans_removed == []
    finally:
        for container in (not_ours, other_portal):
            container.remove(force=True)


def test_a_lab_container_killed_by_hand_fails_its_workspace_and_frees_its_gpus(docker_engine, team, owner):
    client = docker_engine
    node = node_with_gpus(count=2)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=2)
    assert workspace_start(workspace.pk) == "running"
    workspace.refresh_from_db()

    assert reconcile_node().failed == []  # alive: left alone

    client.containers.get(workspace.handle).kill()
    report = reconcile_node()

    workspace.refresh_from_db()
    assert report.failed == [workspace.pk]
    assert workspace.state == Workspace.State.FAILED
    assert "JupyterLab stopped unexpectedly" in workspace.error and "exited with code 137" in workspace.error
    assert live_allocations(workspace) == 0
    # The dead container is an orphan now: the next run removes it (the volume stays).
    assert workspace.handle in reconcile_node().orphans_removed
    assert client.volumes.list(filters={"name": workspace.volume})


def test_a_container_removed_by_hand_fails_its_workspace(docker_engine, team, owner):
    client = docker_engine
    node = node_with_gpus(count=1)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=1, state=Workspace.State.RUNNING)
    container = _sleeper(client, workspace_id=workspace.pk)
    workspace.handle, workspace.launcher = container.id, "docker"
    workspace.save(update_fields=["handle", "launcher"])
    container.remove(force=True)

    reconcile_node()

    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.FAILED and "the container is gone" in workspace.error
    assert live_allocations(workspace) == 0


def test_an_unreachable_engine_fails_nobody(docker_engine, team, owner, monkeypatch):
    node = node_with_gpus(count=1)
    workspace = placed_workspace(owner=owner, team=team, node=node, gpus=1, state=Workspace.State.RUNNING,
                                 handle="0" * 64, launcher="docker")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")

    report = reconcile_node()

    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.RUNNING and live_allocations(workspace) == 1
    assert report.errors and report.errors[0].startswith("docker: Docker engine unavailable")
