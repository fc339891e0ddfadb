"""Workspace writes. Every state change is one function here: lock the row, check the state,
change it, keep the timestamp, audit — in one transaction. GPUs are released in the same
transaction that records why (stop, cancel, fail, cull), so no GPU outlives its workspace.

States: pending -> scheduled -> starting -> running -> stopping -> stopped, plus failed and culled.
Cancelling a pending/scheduled/starting workspace ends it as `stopped` with stop_reason "cancelled ...".
"""

from __future__ import annotations

import datetime
import re

from django.db import transaction
from django.utils import timezone

from governance.access import require
from governance.audit import audit_record
from governance.models import Team, User
from portal.errors import Conflict, DomainError
from portal.tasks import enqueue, node_queue
from scheduler.models import Allocation, AllocationRequest
from workspaces.models import Image, Workspace

S = Workspace.State
RESTARTABLE = (S.STOPPED, S.FAILED, S.CULLED)
CANCELLABLE = (S.PENDING, S.SCHEDULED, S.STARTING)
SCHEDULER_FIELDS = {"count": "gpu_count", "max_duration_s": "duration_hours"}


def _scheduler():
    # Imported late: scheduler.services is written in parallel and imports nothing from us.
    from scheduler import services

    return services


def _lock(workspace: Workspace) -> Workspace:
    return (Workspace.objects.select_for_update(of=("self",)).select_related("team", "owner", "image", "node")
            .get(pk=workspace.pk))


def _refresh_into(target: Workspace, source: Workspace) -> None:
    """Callers keep using their object (tasks hold it across steps): give it the locked row's
    values and related objects, without another query."""
    target.__dict__.update({k: v for k, v in source.__dict__.items() if not k.startswith("_")})
    target._state.fields_cache = dict(source._state.fields_cache)


def volume_name(*, team_slug: str, username: str) -> str:
    """One volume (local: a directory; Docker: a named volume) per user per team, kept across stops."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"{team_slug}-{username}")
    return f"portal-{safe}"


def _release_gpus(*, workspace: Workspace, reason: str, actor: User | None) -> None:
    """End the allocation request whatever stage it is in (inside the caller's transaction)."""
    request = workspace.allocation_request
    if request is None:
        return
    request = AllocationRequest.objects.select_for_update().get(pk=request.pk)
    if request.state == AllocationRequest.State.PENDING:
        _scheduler().allocation_request_cancel(request=request, actor=actor, reason=reason)
    elif request.state == AllocationRequest.State.PLACED:
        _scheduler().allocation_release(request=request, reason=reason, actor=actor)


def _check_policy(*, user: User, team: Team, image: Image, gpu_count: int, duration: datetime.timedelta,
                  exclude_pk: int | None = None) -> None:
    policy = team.policy
    errors: dict[str, str] = {}
    if not image.active:
        errors["image"] = f"Image {image.name} is no longer in the catalogue."
    elif not policy.allows_image(image.name):
        errors["image"] = f"Team {team.slug}'s policy does not allow image {image.name}."
    if gpu_count < 1:
        errors["gpu_count"] = "Ask for at least one GPU."
    elif gpu_count > policy.max_gpus_per_workspace:
        errors["gpu_count"] = f"At most {policy.max_gpus_per_workspace} GPUs per workspace in team {team.slug}."
    hours = duration.total_seconds() / 3600
    if duration.total_seconds() < 60:
        errors["duration_hours"] = "Plan at least a minute."
    elif hours > policy.max_duration_hours:
        errors["duration_hours"] = f"At most {policy.max_duration_hours} h per workspace in team {team.slug}."
    live = Workspace.objects.filter(owner=user, team=team, state__in=Workspace.LIVE_STATES)
    if exclude_pk:
        live = live.exclude(pk=exclude_pk)
    if live.count() >= policy.max_workspaces_per_user:
        errors["__all__"] = f"You already have {policy.max_workspaces_per_user} live workspaces in team {team.slug} (the policy's limit)."
    if errors:
        raise DomainError("; ".join(errors.values()), code="policy", fields=errors)


def workspace_policy_check(*, user: User, team: Team, image: Image, gpu_count: int,
                           duration: datetime.timedelta) -> None:
    """Read-only: raise the DomainError workspace_create would raise for the policy (the form's
    in-place validation)."""
    _check_policy(user=user, team=team, image=image, gpu_count=gpu_count, duration=duration)


def workspace_create(*, user: User, team: Team, image: Image, gpu_count: int = 1, flavor: str, mig: bool = False,
                     duration: datetime.timedelta = datetime.timedelta(hours=8),
                     sharing: str = Workspace.Sharing.PRIVATE, name: str = "") -> Workspace:
    """Anyone with team.use_gpus, within the team's policy: a pending workspace and its allocation request."""
    require(user, "team.use_gpus", team)
    if sharing not in Workspace.Sharing.values:
        raise DomainError(f"Unknown sharing {sharing!r}.", fields={"sharing": "Choose private or team."})
    name = (name or "").strip() or f"{image.name}-{flavor}".lower()
    with transaction.atomic():
        # Lock the user's row so two concurrent creates cannot both pass the per-user limit.
        User.objects.select_for_update().filter(pk=user.pk).first()
        _check_policy(user=user, team=team, image=image, gpu_count=gpu_count, duration=duration)
        try:
            request = _scheduler().allocation_request_create(
                team=team, user=user, flavor=flavor, count=gpu_count, mig=mig, max_duration_s=int(duration.total_seconds()),
            )
        except DomainError as error:
            # Say it in this form's words: the scheduler names the fields of an allocation request.
            error.fields = {SCHEDULER_FIELDS.get(k, k): v for k, v in (error.fields or {}).items()}
            raise
        workspace = Workspace.objects.create(
            team=team, owner=user, name=name[:80], image=image, sharing=sharing, allocation_request=request,
            planned_duration_s=int(duration.total_seconds()), volume=volume_name(team_slug=team.slug, username=user.username),
        )
        audit_record(action="workspace.create", actor=user, target=workspace, team=team, changes={
            "name": workspace.name, "image": image.name, "flavor": flavor, "mig": mig, "gpu_count": gpu_count,
            "duration_s": workspace.planned_duration_s, "sharing": sharing, "allocation_request": request.pk,
        })
    return workspace


def workspace_mark_scheduled(*, request_id: int) -> Workspace | None:
    """Pending workspace whose request the scheduler just placed: note the node, send the start to it."""
    with transaction.atomic():
        workspace = (Workspace.objects.select_for_update().select_related("team", "owner")
                     .filter(allocation_request_id=request_id).first())
        if workspace is None or workspace.state != S.PENDING:
            return workspace
        allocation = (Allocation.objects.select_related("node")
                      .filter(request_id=request_id, released_at__isnull=True).first())
        if allocation is None:
            return workspace
        now = timezone.now()
        workspace.state = S.SCHEDULED
        workspace.node = allocation.node
        workspace.scheduled_at = now
        workspace.planned_end = allocation.planned_end or now + datetime.timedelta(seconds=workspace.planned_duration_s)
        workspace.error = ""
        workspace.save(update_fields=["state", "node", "scheduled_at", "planned_end", "error"])
        audit_record(action="workspace.schedule", actor=None, target=workspace, team=workspace.team,
                     changes={"state": [S.PENDING, S.SCHEDULED], "node": allocation.node.name})
        from workspaces.tasks import workspace_start

        enqueue(workspace_start, workspace.pk, queue=node_queue(allocation.node.name))
    return workspace


def workspaces_mark_scheduled(*, request_ids: list[int]) -> int:
    """A pass placed these requests: mark the pending workspaces among them scheduled (each in its
    own transaction, see workspace_mark_scheduled). One query finds them: most of a large pass's
    requests may come from the API, without a workspace. Returns how many were marked."""
    marked = 0
    for i in range(0, len(request_ids), 5000):
        chunk = request_ids[i:i + 5000]
        pending = Workspace.objects.filter(allocation_request_id__in=chunk, state=S.PENDING).order_by(
            "allocation_request_id").values_list("allocation_request_id", flat=True)
        for request_id in list(pending):
            workspace = workspace_mark_scheduled(request_id=request_id)
            marked += workspace is not None and workspace.state == S.SCHEDULED
    return marked


def workspace_mark_starting(*, workspace: Workspace, launcher: str, token: str) -> bool:
    """Scheduled only: the node's task begins launching. False when it was cancelled meanwhile."""
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state != S.SCHEDULED:
            _refresh_into(workspace, locked)
            return False
        locked.state = S.STARTING
        locked.starting_at = timezone.now()
        locked.launcher = launcher
        locked.lab_token = token
        locked.save(update_fields=["state", "starting_at", "launcher", "lab_token"])
        audit_record(action="workspace.start", actor=None, target=locked, team=locked.team,
                     changes={"state": [S.SCHEDULED, S.STARTING], "launcher": launcher})
    _refresh_into(workspace, locked)
    return True


def workspace_record_instance(*, workspace: Workspace, handle: str, host: str, port: int, image_digest: str = "") -> bool:
    """Starting only: remember the instance at once so a cancel or the reconciler can find it.
    False when the workspace is no longer starting (the caller stops the instance)."""
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state != S.STARTING:
            _refresh_into(workspace, locked)
            return False
        locked.handle, locked.host, locked.port = handle, host, port
        if image_digest:
            locked.image_digest = image_digest
        locked.save(update_fields=["handle", "host", "port", "image_digest"])
    _refresh_into(workspace, locked)
    return True


def workspace_mark_running(*, workspace: Workspace) -> bool:
    """Starting only, after the lab answered /api/status. False when cancelled meanwhile."""
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state != S.STARTING:
            _refresh_into(workspace, locked)
            return False
        now = timezone.now()
        locked.state = S.RUNNING
        locked.running_at = now
        locked.last_activity_at = now
        locked.save(update_fields=["state", "running_at", "last_activity_at"])
        audit_record(action="workspace.running", actor=None, target=locked, team=locked.team,
                     changes={"state": [S.STARTING, S.RUNNING], "handle": locked.handle, "image_digest": locked.image_digest,
                              "startup_s": round((now - (locked.starting_at or now)).total_seconds(), 3)})
    _refresh_into(workspace, locked)
    return True


def workspace_fail(*, workspace: Workspace, reason: str, actor: User | None = None) -> bool:
    """Any live state: failed with the real reason, GPUs released in the same transaction.
    False when it had already ended."""
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state not in Workspace.LIVE_STATES:
            _refresh_into(workspace, locked)
            return False
        before = locked.state
        locked.state = S.FAILED
        locked.error = reason[:5000]
        locked.stop_reason = "failed"
        locked.stopped_at = timezone.now()
        locked.save(update_fields=["state", "error", "stop_reason", "stopped_at"])
        _release_gpus(workspace=locked, reason=f"workspace failed: {reason[:150]}", actor=actor)
        audit_record(action="workspace.fail", actor=actor, target=locked, team=locked.team,
                     changes={"state": [before, S.FAILED], "reason": reason[:1000]})
        _enqueue_instance_stop(locked)
    _refresh_into(workspace, locked)
    return True


def _enqueue_instance_stop(workspace: Workspace) -> None:
    if workspace.handle and workspace.node_id:
        from workspaces.tasks import workspace_stop as workspace_stop_task

        enqueue(workspace_stop_task, workspace.pk, queue=node_queue(workspace.node.name))


def workspace_cancel(*, workspace: Workspace, actor: User | None, reason: str = "") -> Workspace:
    """Pending, scheduled or starting: ends as stopped ("cancelled"), GPUs released, a half-started lab stopped."""
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state not in CANCELLABLE:
            raise Conflict(f"Only a pending, scheduled or starting workspace can be cancelled (this one is {locked.state}).",
                           code="bad_state")
        before = locked.state
        now = timezone.now()
        locked.state = S.STOPPED
        locked.stop_reason = f"cancelled{': ' + reason if reason else ''}"[:300]
        locked.stopped_at = now
        locked.save(update_fields=["state", "stop_reason", "stopped_at"])
        _release_gpus(workspace=locked, reason="workspace cancelled", actor=actor)
        audit_record(action="workspace.cancel", actor=actor, target=locked, team=locked.team,
                     changes={"state": [before, S.STOPPED], "reason": reason})
        _enqueue_instance_stop(locked)
    return locked


def workspace_stop(*, workspace: Workspace, actor: User | None, reason: str = "") -> Workspace:
    """Running only: stopping, GPUs released now; the node's task stops the lab (the volume stays)."""
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state != S.RUNNING:
            raise Conflict(f"Only a running workspace can be stopped (this one is {locked.state}).", code="bad_state")
        locked.state = S.STOPPING
        locked.stopping_at = timezone.now()
        locked.stop_reason = (reason or (f"stopped by {actor.username}" if actor else "stopped"))[:300]
        locked.save(update_fields=["state", "stopping_at", "stop_reason"])
        _release_gpus(workspace=locked, reason="workspace stopped", actor=actor)
        audit_record(action="workspace.stop", actor=actor, target=locked, team=locked.team,
                     changes={"state": [S.RUNNING, S.STOPPING], "reason": locked.stop_reason})
        from workspaces.tasks import workspace_stop as workspace_stop_task

        if locked.node_id:
            enqueue(workspace_stop_task, locked.pk, queue=node_queue(locked.node.name))
        else:
            enqueue(workspace_stop_task, locked.pk)
    return locked


def workspace_mark_stopped(*, workspace: Workspace) -> bool:
    """Stopping only, once the lab is gone. False otherwise."""
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state != S.STOPPING:
            _refresh_into(workspace, locked)
            return False
        locked.state = S.STOPPED
        locked.stopped_at = timezone.now()
        locked.save(update_fields=["state", "stopped_at"])
        audit_record(action="workspace.stopped", actor=None, target=locked, team=locked.team,
                     changes={"state": [S.STOPPING, S.STOPPED]})
    _refresh_into(workspace, locked)
    return True


def workspace_cull(*, workspace: Workspace, reason: str) -> bool:
    """Running only (the idle culler / max lifetime): culled with the reason, GPUs released, lab stopped,
    volume kept. False when it was not running any more."""
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state != S.RUNNING:
            _refresh_into(workspace, locked)
            return False
        locked.state = S.CULLED
        locked.stop_reason = reason[:300]
        locked.stopped_at = timezone.now()
        locked.save(update_fields=["state", "stop_reason", "stopped_at"])
        _release_gpus(workspace=locked, reason=f"workspace culled: {reason[:150]}", actor=None)
        audit_record(action="workspace.cull", actor=None, target=locked, team=locked.team,
                     changes={"state": [S.RUNNING, S.CULLED], "reason": reason})
        _enqueue_instance_stop(locked)
    _refresh_into(workspace, locked)
    return True


def workspace_restart(*, workspace: Workspace, actor: User) -> Workspace:
    """Stopped, failed or culled, within policy: pending again with a new allocation request (same volume),
    asked on behalf of its owner (who must still be allowed to use the team's GPUs)."""
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=workspace.owner_id).first()
        locked = _lock(workspace)
        if locked.state not in RESTARTABLE:
            raise Conflict(f"Only a stopped, failed or culled workspace can be restarted (this one is {locked.state}).",
                           code="bad_state")
        old = locked.allocation_request
        duration = datetime.timedelta(seconds=locked.planned_duration_s)
        _check_policy(user=locked.owner, team=locked.team, image=locked.image,
                      gpu_count=old.count if old else 1, duration=duration, exclude_pk=locked.pk)
        if old is None:
            raise Conflict("This workspace has no GPU request to repeat; create a new one.", code="bad_state")
        request = _scheduler().allocation_request_create(
            team=locked.team, user=locked.owner, flavor=old.flavor, count=old.count, mig=old.mig,
            max_duration_s=locked.planned_duration_s,
        )
        before = locked.state
        locked.state = S.PENDING
        locked.allocation_request = request
        locked.node = None
        locked.host, locked.port, locked.handle, locked.lab_token = "", None, "", ""
        locked.error, locked.stop_reason = "", ""
        for stamp in ("scheduled_at", "starting_at", "running_at", "stopping_at", "stopped_at", "planned_end",
                      "last_activity_at", "idle_since", "idle_warned_at"):
            setattr(locked, stamp, None)
        locked.extensions = 0
        locked.save()
        audit_record(action="workspace.restart", actor=actor, target=locked, team=locked.team,
                     changes={"state": [before, S.PENDING], "allocation_request": request.pk})
    return locked


def workspace_extend(*, workspace: Workspace, actor: User | None, hours: float) -> Workspace:
    """Live, within the policy's max duration and max lifetime: planned end moved (workspace and its
    allocations) and the idle clock reset (the owner answered the idle warning)."""
    if hours <= 0:
        raise DomainError("Extend by a positive number of hours.", fields={"hours": "Must be positive."})
    with transaction.atomic():
        locked = _lock(workspace)
        if locked.state not in (S.PENDING, S.SCHEDULED, S.STARTING, S.RUNNING):
            raise Conflict(f"Only a live workspace can be extended (this one is {locked.state}).", code="bad_state")
        policy = locked.team.policy
        now = timezone.now()
        base = locked.planned_end or now + datetime.timedelta(seconds=locked.planned_duration_s)
        new_end = max(base, now) + datetime.timedelta(hours=hours)
        began = locked.running_at or locked.scheduled_at or now
        if new_end - began > datetime.timedelta(hours=policy.max_duration_hours):
            raise DomainError(f"That would run past the policy's {policy.max_duration_hours} h per workspace.",
                              code="policy", fields={"hours": f"At most {policy.max_duration_hours} h in total."})
        if new_end - locked.created_at > datetime.timedelta(hours=policy.max_lifetime_hours):
            raise DomainError(f"That would run past the policy's {policy.max_lifetime_hours} h maximum lifetime.",
                              code="policy", fields={"hours": f"At most {policy.max_lifetime_hours} h lifetime."})
        before = locked.planned_end
        locked.planned_end = new_end
        locked.planned_duration_s = int((new_end - began).total_seconds())
        locked.extensions += 1
        # The owner answered: the idle clock starts again (the culler reads these).
        locked.idle_since = None
        locked.idle_warned_at = None
        locked.last_activity_at = now
        locked.save(update_fields=["planned_end", "planned_duration_s", "extensions", "idle_since", "idle_warned_at",
                                   "last_activity_at"])
        request = locked.allocation_request
        if request is not None and request.state in (AllocationRequest.State.PENDING, AllocationRequest.State.PLACED):
            first = (Allocation.objects.filter(request_id=request.pk, released_at__isnull=True)
                     .order_by("started_at").values_list("started_at", flat=True).first())
            _scheduler().allocation_request_extend(
                request=request, actor=actor,
                max_duration_s=int((new_end - first).total_seconds()) if first else locked.planned_duration_s)
        audit_record(action="workspace.extend", actor=actor, target=locked, team=locked.team,
                     changes={"planned_end": [before, new_end], "hours": hours})
    return locked


def workspace_preempt(*, request_id: int) -> Workspace | None:
    """The scheduler took this workspace's GPUs back (preemption grace over): stop it and say why."""
    workspace = Workspace.objects.filter(allocation_request_id=request_id).first()
    if workspace is None:
        return None
    if workspace.state == S.RUNNING:
        try:
            return workspace_stop(workspace=workspace, actor=None, reason="preempted by the scheduler for a higher-priority request")
        except Conflict:
            return workspace
    if workspace.state in CANCELLABLE:
        try:
            return workspace_cancel(workspace=workspace, actor=None, reason="preempted by the scheduler")
        except Conflict:
            return workspace
    return workspace


def workspace_warn_preemption(*, request_id: int, preempt_at: datetime.datetime) -> Workspace | None:
    """A live workspace's GPUs were chosen for preemption: record the warning and email the owner
    (the page shows a banner from the allocation's preempt_at; the stop follows when it passes)."""
    from django.core.mail import send_mail

    with transaction.atomic():
        workspace = (Workspace.objects.select_for_update(of=("self",)).select_related("team", "owner")
                     .filter(allocation_request_id=request_id).first())
        if workspace is None or workspace.state not in Workspace.LIVE_STATES:
            return workspace
        audit_record(action="workspace.preempt_warning", actor=None, target=workspace, team=workspace.team,
                     changes={"preempt_at": preempt_at})
        if workspace.owner.email:
            subject = f"Workspace {workspace.name} will be stopped at {preempt_at:%H:%M} UTC"
            body = (f"The scheduler needs the GPUs of your workspace {workspace.name} (team {workspace.team.slug}) "
                    f"for a higher-priority request. It will be stopped at {preempt_at:%Y-%m-%d %H:%M} UTC; "
                    "save your work. Its files are kept.")
            transaction.on_commit(lambda: send_mail(subject, body, None, [workspace.owner.email], fail_silently=True))
    return workspace


def workspace_note_support_access(*, workspace: Workspace, actor: User) -> None:
    """A platform admin entered someone else's lab for support: recorded (the proxy calls this
    at most once per hour per admin and workspace)."""
    with transaction.atomic():
        audit_record(action="workspace.support_access", actor=actor, target=workspace, team=workspace.team,
                     changes={"owner": workspace.owner.username})


def workspace_update_sharing(*, workspace: Workspace, actor: User, sharing: str) -> Workspace:
    """Owner (or team admin): private or shared with the team."""
    if sharing not in Workspace.Sharing.values:
        raise DomainError(f"Unknown sharing {sharing!r}.", fields={"sharing": "Choose private or team."})
    with transaction.atomic():
        locked = _lock(workspace)
        before = locked.sharing
        locked.sharing = sharing
        locked.save(update_fields=["sharing"])
        audit_record(action="workspace.sharing", actor=actor, target=locked, team=locked.team,
                     changes={"sharing": [before, sharing]})
    return locked

