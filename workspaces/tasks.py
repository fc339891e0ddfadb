"""Workspace tasks. Thin: ids in, load rows, call the launcher and a service; safe to run twice
(each step checks the state it expects through the service and does nothing otherwise).

workspace_start and workspace_stop run on the queue of the node holding the GPUs (`node.<name>`).
The reconciler and culler tasks (colleague W2) are appended at the end of this file."""

import logging
import secrets

from celery import shared_task

log = logging.getLogger(__name__)


def _device_uuids(workspace) -> tuple[str, ...]:
    from scheduler.models import Allocation

    rows = (Allocation.objects.filter(request_id=workspace.allocation_request_id, released_at__isnull=True)
            .select_related("gpu", "mig_slice").order_by("gpu__index", "mig_slice__index", "id"))
    return tuple(row.mig_slice.uuid if row.mig_slice_id else row.gpu.uuid for row in rows)


def launch_spec_for(workspace, token: str):
    """What the launcher needs, from the workspace, its team policy and its live allocations."""
    from workspaces.launchers.base import LaunchSpec

    policy = workspace.team.policy
    return LaunchSpec(
        workspace_id=workspace.pk,
        owner_username=workspace.owner.username,
        team_slug=workspace.team.slug,
        image_reference=workspace.image.reference,
        device_uuids=_device_uuids(workspace),
        token=token,
        base_url=f"/w/{workspace.pk}/",
        cpu_limit=policy.cpu_limit,
        memory_limit_bytes=policy.memory_limit_gb * 1024**3,
        volume=workspace.volume,
        env={"PORTAL_WORKSPACE_NAME": workspace.name},
    )


@shared_task(name="workspaces.tasks.workspace_start", ignore_result=True)
def workspace_start(workspace_id: int) -> str:
    """scheduled -> starting -> running (or failed with the launcher's real message, GPUs released)."""
    from workspaces import services
    from workspaces.launchers.base import LaunchError, get_launcher
    from workspaces.models import Workspace

    workspace = Workspace.objects.select_related("team__policy", "owner", "image", "node").filter(pk=workspace_id).first()
    if workspace is None or workspace.state != Workspace.State.SCHEDULED:
        return "skipped"
    try:
        launcher = get_launcher()
    except LaunchError as exc:
        services.workspace_fail(workspace=workspace, reason=exc.message)
        return "failed"
    token = secrets.token_urlsafe(32)
    if not services.workspace_mark_starting(workspace=workspace, launcher=launcher.name, token=token):
        return "skipped"
    result = None
    try:
        result = launcher.start(launch_spec_for(workspace, token))
        if not services.workspace_record_instance(workspace=workspace, handle=result.handle, host=result.host,
                                                  port=result.port, image_digest=result.image_digest):
            launcher.stop(result.handle)  # cancelled while it was starting
            return "cancelled"
        launcher.wait_ready(result, token, f"/w/{workspace.pk}/")
    except LaunchError as exc:
        if result is not None:
            launcher.stop(result.handle)
        services.workspace_fail(workspace=workspace, reason=exc.message)
        return "failed"
    except Exception as exc:  # noqa: BLE001 — whatever broke, the GPUs must not stay held by a dead launch
        log.exception("workspace %s: launch crashed", workspace_id)
        if result is not None:
            launcher.stop(result.handle)
        services.workspace_fail(workspace=workspace, reason=f"The launcher crashed: {type(exc).__name__}: {exc}")
        return "failed"
    if not services.workspace_mark_running(workspace=workspace):
        launcher.stop(result.handle)
        return "cancelled"
    return "running"


@shared_task(name="workspaces.tasks.workspace_stop", ignore_result=True)
def workspace_stop(workspace_id: int) -> str:
    """Stop the workspace's lab (SIGTERM then SIGKILL, or the container); stopping -> stopped.
    Also used after cancel/fail/cull, where the state has already ended and only the instance goes."""
    from workspaces import services
    from workspaces.launchers.base import get_launcher
    from workspaces.models import Workspace

    workspace = Workspace.objects.select_related("node").filter(pk=workspace_id).first()
    if workspace is None:
        return "missing"
    if workspace.handle and workspace.state != Workspace.State.RUNNING:
        get_launcher(workspace.launcher or None).stop(workspace.handle)
    services.workspace_mark_stopped(workspace=workspace)
    return workspace.state


@shared_task(name="workspaces.tasks.workspace_check", ignore_result=True)
def workspace_check(workspace_id: int) -> str:
    """A running workspace's lab stopped answering (the proxy saw a refused connection): if its
    instance is gone, the workspace fails with that reason and its GPUs are released now, without
    waiting for the reconciler's next round."""
    from workspaces import services
    from workspaces.launchers.base import get_launcher
    from workspaces.models import Workspace

    workspace = Workspace.objects.select_related("node").filter(pk=workspace_id).first()
    if workspace is None or workspace.state != Workspace.State.RUNNING or not workspace.handle:
        return "skipped"
    launcher = get_launcher(workspace.launcher or None)
    status = launcher.status(workspace.handle)
    if status.state == "running":
        return "running"
    tail = launcher.logs_tail(workspace.handle, lines=10)
    reason = f"JupyterLab stopped unexpectedly ({status.detail or status.state})." + (f"\n{tail}" if tail else "")
    services.workspace_fail(workspace=workspace, reason=reason)
    return "failed"


# --- housekeeping tasks (W2): workspaces_reconcile and workspaces_cull are appended below ---


@shared_task(name="workspaces.tasks.workspaces_reconcile", ignore_result=True)
def workspaces_reconcile(node_name: str | None = None) -> dict:
    """Every 30 s (beat). Under Celery each node's agent owns its engine/processes, so the beat's
    run fans out one node run per node queue and itself does only the database repairs; elsewhere
    (embedded, tests) one process runs every node, so it reconciles everything here."""
    from django.conf import settings

    from portal.tasks import node_queue, send_now
    from scheduler.models import Node
    from workspaces import housekeeping

    if node_name is None and settings.PORTAL_TASKS == "celery":
        for name in Node.objects.exclude(state=Node.State.DOWN).values_list("name", flat=True):
            send_now(workspaces_reconcile, name, queue=node_queue(name))
        return housekeeping.reconcile_records().summary()
    return housekeeping.reconcile_node(node_name=node_name).summary()


@shared_task(name="workspaces.tasks.workspaces_cull", ignore_result=True)
def workspaces_cull() -> dict:
    """Every 60 s (beat): warn, then cull, idle workspaces per team policy; planned end and max lifetime."""
    from workspaces import housekeeping

    return housekeeping.cull_run().summary()
