"""Housekeeping: the reconciler (instances vs records) and the GPU-aware idle culler.

Reconciler (`reconcile_node`, every 30 s through workspaces.tasks.workspaces_reconcile):
- an instance (container or process) marked as the portal's whose workspace is not live, or that
  is not the instance its workspace records, is stopped and removed;
- a running workspace whose instance died or vanished becomes failed with the reason (the
  launcher's exit detail and last log lines) and its GPUs are released in the same transaction;
- after a crash mid-launch or mid-stop nothing stays half-done: a workspace stuck in scheduled,
  starting or stopping past its timeout is finished (adopted as running when its lab is alive and
  answers, failed otherwise; stopped when it was stopping);
- a live lab from before a portal restart is left alone (re-adopted): the record and the instance
  agree, so nothing is killed;
- records are closed both ways: GPUs still held by an ended workspace are released, and a running
  workspace whose GPUs were taken back is stopped.

Idle culler (`cull_run`, every 60 s through workspaces.tasks.workspaces_cull), per TeamPolicy:
a running workspace is idle when, for the whole idle window, (1) every one of its GPUs (or MIG
slices) stayed under `idle_gpu_util_threshold` in the telemetry samples, and (2) its lab reports no
busy kernel and no activity (`/api/kernels` execution_state and last_activity, `/api/terminals`
and `/api/status` last_activity, read with the lab token). Missing or stale telemetry, or a lab
that does not answer, never counts as idle: a busy training job must not be killed on a guess.
The owner is warned `idle_warning_minutes` before the stop (idle_warned_at, a banner through
`workspace_idle_status`, an email) and can extend, which resets the idle clock
(workspaces.services.workspace_extend clears idle_since/idle_warned_at and sets last_activity_at;
last_activity_at is the floor of every idle period). The planned end and the policy's maximum
lifetime (counted from creation, as workspace_extend does) apply regardless of activity, with the
same warning first. Culled workspaces keep their volume and say why (stop_reason)."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Max, Min, Q
from django.utils import timezone

from governance.audit import audit_record
from portal.errors import Conflict
from scheduler.models import Allocation, AllocationRequest, GpuRollup, GpuSample
from workspaces import services
from workspaces.launchers.base import LaunchError, Launcher, get_launcher
from workspaces.models import Workspace

log = logging.getLogger(__name__)
S = Workspace.State
ENDED = (S.STOPPED, S.FAILED, S.CULLED)


# --- timeouts -------------------------------------------------------------------------------------


def stuck_scheduled_after() -> datetime.timedelta:
    """A node that has not begun a start this long after placement is not coming (agent down, lost message)."""
    return datetime.timedelta(seconds=settings.PORTAL_STUCK_SCHEDULED_SECONDS)


def stuck_starting_after() -> datetime.timedelta:
    """The start task gives up itself after PORTAL_LAB_READY_TIMEOUT; past that plus a grace it died."""
    return datetime.timedelta(seconds=settings.PORTAL_STUCK_STARTING_SECONDS)


def stuck_stopping_after() -> datetime.timedelta:
    return datetime.timedelta(seconds=settings.PORTAL_STUCK_STOPPING_SECONDS)


# --- reconciler -----------------------------------------------------------------------------------


@dataclass
class ReconcileReport:
    orphans_removed: list[str] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


def _launcher_names() -> set[str]:
    names = {settings.PORTAL_LAUNCHER}
    names.update(n for n in Workspace.objects.filter(state__in=Workspace.LIVE_STATES).exclude(launcher="")
                 .values_list("launcher", flat=True).distinct())
    return names


def _keeps(workspace: Workspace | None, handle: str, launcher_name: str) -> bool:
    """Whether an owned instance belongs to a live workspace. The instances were listed BEFORE the
    rows were read, and a start marks the row `starting` before it creates the instance, so an
    instance of a pending/scheduled workspace is a leftover of an earlier attempt, never a race."""
    if workspace is None or workspace.state not in (S.STARTING, S.RUNNING, S.STOPPING):
        return False
    if workspace.launcher and workspace.launcher != launcher_name:
        return False
    # Starting: the handle is recorded just after the instance is created (a window we must not
    # mistake for an orphan). Otherwise the instance must be the one the record names.
    return workspace.handle == handle or (workspace.state == S.STARTING and not workspace.handle)


def _remove_orphan(launcher: Launcher, handle: str, workspace_id: int, workspace: Workspace | None,
                   report: ReconcileReport) -> None:
    try:
        launcher.stop(handle)
    except LaunchError as exc:
        report.errors.append(f"orphan {handle[:24]}: {exc.message}")
        return
    with transaction.atomic():
        audit_record(action="workspace.orphan_removed", actor=None, target_type="workspaces.workspace",
                     target_id=workspace_id, team=workspace.team if workspace else None,
                     changes={"launcher": launcher.name, "handle": handle[:64],
                              "workspace_state": workspace.state if workspace else "missing"})
    report.orphans_removed.append(handle)
    log.warning("reconciler: removed orphan %s instance %s (workspace %s)", launcher.name, handle[:24], workspace_id)


def _fail_if_still(workspace: Workspace, state: str, reason: str) -> bool:
    """Fail the workspace only if it is still in `state` with the same instance: what we saw may be
    stale (a stop that removes the instance on purpose must not end as a failure)."""
    with transaction.atomic():
        current = (Workspace.objects.select_for_update(of=("self",)).filter(pk=workspace.pk)
                   .values_list("state", "handle").first())
        if current != (state, workspace.handle):
            return False
        return services.workspace_fail(workspace=workspace, reason=reason)


def _death_reason(launcher: Launcher, workspace: Workspace, detail: str) -> str:
    tail = launcher.logs_tail(workspace.handle) if workspace.handle else ""
    reason = f"JupyterLab stopped unexpectedly ({detail or 'the instance is gone'})."
    return reason + (f"\nLast output:\n{tail}" if tail else "")


def lab_answers(workspace: Workspace, timeout: float = 3.0) -> bool:
    """The lab's /api/status answers 200 with its token (the same probe as Launcher.wait_ready)."""
    if not (workspace.host and workspace.port):
        return False
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            response = client.get(f"http://{workspace.host}:{workspace.port}/w/{workspace.pk}/api/status",
                                  params={"no_track_activity": "1"},
                                  headers={"Authorization": f"token {workspace.lab_token}"})
        return response.status_code == 200
    except httpx.HTTPError:
        return False


def _check_instances(launcher: Launcher, node_name: str | None, now: datetime.datetime,
                     report: ReconcileReport) -> None:
    # Order matters: list the instances first, then read the rows (see _keeps).
    owned = launcher.list_owned()
    rows = Workspace.objects.select_related("team").in_bulk({o.workspace_id for o in owned})
    for instance in owned:
        workspace = rows.get(instance.workspace_id)
        if not _keeps(workspace, instance.handle, launcher.name):
            _remove_orphan(launcher, instance.handle, instance.workspace_id, workspace, report)

    mine = Workspace.objects.filter(launcher=launcher.name).select_related("team", "node")
    if node_name:
        mine = mine.filter(node__name=node_name)

    for workspace in mine.filter(state=S.RUNNING):
        status = launcher.status(workspace.handle) if workspace.handle else None
        if status is not None and status.state == "running":
            continue  # the record and the instance agree (a lab from before a restart is adopted as is)
        reason = _death_reason(launcher, workspace, status.detail if status else "no instance was recorded")
        if _fail_if_still(workspace, S.RUNNING, reason):
            report.failed.append(workspace.pk)

    for workspace in mine.filter(state=S.STARTING, starting_at__lt=now - stuck_starting_after()):
        status = launcher.status(workspace.handle) if workspace.handle else None
        if status is not None and status.state == "running" and lab_answers(workspace):
            # The worker died between "ready" and recording it: the lab is fine, keep it.
            if services.workspace_mark_running(workspace=workspace):
                report.adopted.append(workspace.pk)
            continue
        waited = int(stuck_starting_after().total_seconds())
        if _fail_if_still(workspace, S.STARTING, (
                f"The launch did not finish within {waited} s (the node's worker stopped mid-launch, "
                f"or the lab never became ready); the half-started lab was removed.")):
            report.failed.append(workspace.pk)
            if workspace.handle:  # here and now: the node's stop task may be as dead as its start task
                launcher.stop(workspace.handle)

    for workspace in mine.filter(state=S.STOPPING, stopping_at__lt=now - stuck_stopping_after()):
        if workspace.handle:
            launcher.stop(workspace.handle)
        if services.workspace_mark_stopped(workspace=workspace):
            report.stopped.append(workspace.pk)


def reconcile_records(*, node_name: str | None = None, now: datetime.datetime | None = None,
                      report: ReconcileReport | None = None) -> ReconcileReport:
    """Database-only repairs: no launcher needed, so they run wherever the task runs."""
    now = now or timezone.now()
    report = report if report is not None else ReconcileReport()
    scheduled = Workspace.objects.filter(state=S.SCHEDULED, scheduled_at__lt=now - stuck_scheduled_after())
    if node_name:
        scheduled = scheduled.filter(node__name=node_name)
    for workspace in scheduled.select_related("team", "node"):
        waited = int(stuck_scheduled_after().total_seconds() // 60)
        node = workspace.node.name if workspace.node else "its node"
        if _fail_if_still(workspace, S.SCHEDULED, (
                f"{node} did not begin starting the workspace within {waited} min of placement "
                f"(is the node's agent running?).")):
            report.failed.append(workspace.pk)

    # GPUs still held by a workspace that has ended (a crash between the two writes is impossible
    # in one transaction, but a request re-placed by hand or an old bug must not hold GPUs forever).
    leaked = (AllocationRequest.objects.filter(workspace__state__in=ENDED, allocations__released_at__isnull=True)
              .distinct().select_related("workspace"))
    for request in leaked:
        from scheduler.services import allocation_release

        # allocation_release locks the request and closes whatever is still live, whatever its state.
        allocation_release(request=request, reason=f"reconciler: its workspace is {request.workspace.state}")
        report.released.append(request.pk)

    # A running workspace must hold live allocations on its node; if they were taken back and the
    # workspace was not told (a lost signal), stop it now with that reason.
    running = Workspace.objects.filter(state=S.RUNNING, allocation_request__isnull=False).exclude(
        allocation_request__allocations__released_at__isnull=True)
    if node_name:
        running = running.filter(node__name=node_name)
    for workspace in running.select_related("team", "node"):
        try:
            services.workspace_stop(workspace=workspace, actor=None,
                                    reason="its GPU allocation was released by the scheduler")
            report.stopped.append(workspace.pk)
        except Conflict:
            pass
    return report


def reconcile_node(*, node_name: str | None = None, now: datetime.datetime | None = None) -> ReconcileReport:
    """One reconciliation of this host's instances and of the workspaces placed on `node_name`
    (None: every node, as in the embedded default where one process runs every simulated node).
    Instances are removed only when no live workspace owns them, whatever node the row names, so
    several node agents sharing one host never remove each other's labs."""
    now = now or timezone.now()
    report = ReconcileReport()
    for name in sorted(_launcher_names()):
        try:
            launcher = get_launcher(name)
            _check_instances(launcher, node_name, now, report)
        except LaunchError as exc:
            # An unreachable engine proves nothing about the labs: fail nobody, say why, retry next beat.
            report.errors.append(f"{name}: {exc.message}")
            log.error("reconciler: launcher %s unavailable: %s", name, exc.message)
        except Exception as exc:  # noqa: BLE001 - one launcher's trouble must not stop the record repairs
            report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.exception("reconciler: launcher %s", name)
    reconcile_records(node_name=node_name, now=now, report=report)
    return report


# --- idle culling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabActivity:
    busy: bool
    last_activity: datetime.datetime | None


def _parse_ts(value) -> datetime.datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def lab_activity(workspace: Workspace, timeout: float = 3.0) -> LabActivity | None:
    """What the lab says about itself, or None when it does not answer. `no_track_activity` keeps
    our own probes from counting as the user's activity."""
    if not (workspace.host and workspace.port and workspace.lab_token):
        return None
    base = f"http://{workspace.host}:{workspace.port}/w/{workspace.pk}/api/"
    headers = {"Authorization": f"token {workspace.lab_token}"}
    params = {"no_track_activity": "1"}
    try:
        with httpx.Client(timeout=timeout, trust_env=False, headers=headers, params=params) as client:
            status = client.get(base + "status")
            kernels = client.get(base + "kernels")
            terminals = client.get(base + "terminals")
    except httpx.HTTPError:
        return None
    if status.status_code != 200 or kernels.status_code != 200:
        return None
    stamps = [_parse_ts(status.json().get("last_activity"))]
    busy = False
    for kernel in kernels.json():
        busy = busy or kernel.get("execution_state") in ("busy", "starting")
        stamps.append(_parse_ts(kernel.get("last_activity")))
    if terminals.status_code == 200:
        stamps.extend(_parse_ts(t.get("last_activity")) for t in terminals.json())
    stamps = [s for s in stamps if s]
    return LabActivity(busy=busy, last_activity=max(stamps) if stamps else None)


def _sample_slack() -> datetime.timedelta:
    """How far samples may lag or start after the window's edge and still count as covering it."""
    return datetime.timedelta(seconds=max(5 * float(settings.PORTAL_SAMPLE_SECONDS), 90))


def gpu_quiet_since(workspace: Workspace, *, threshold: float, window: datetime.timedelta,
                    now: datetime.datetime) -> datetime.datetime | None:
    """Since when every GPU (or MIG slice) of the workspace has stayed under `threshold`, as far as
    the telemetry of the last `window` shows; None when it cannot say (a device without samples,
    or samples gone stale), which never counts as idle."""
    rows = (Allocation.objects.filter(request_id=workspace.allocation_request_id, released_at__isnull=True)
            .select_related("mig_slice"))
    devices = {(row.gpu_id or row.mig_slice.gpu_id, row.mig_slice.index if row.mig_slice_id else -1) for row in rows}
    if not devices:
        return None
    since = now - window - _sample_slack()
    device_q = Q()
    for gpu_id, slice_index in devices:
        device_q |= Q(gpu_id=gpu_id, slice_index=slice_index)
    raw = {(r["gpu_id"], r["slice_index"]): r for r in GpuSample.objects.filter(device_q, ts__gte=since, ts__lte=now)
           .values("gpu_id", "slice_index")
           .annotate(first=Min("ts"), last=Max("ts"), busy_last=Max("ts", filter=Q(util_gpu__gte=threshold)))}
    # Raw samples are kept about an hour; a longer window reads the minute rollups for the rest.
    rolled = {(r["gpu_id"], r["slice_index"]): r for r in GpuRollup.objects.filter(
        device_q, resolution_s=60, bucket__gte=since, bucket__lte=now)
        .values("gpu_id", "slice_index")
        .annotate(first=Min("bucket"), busy_last=Max("bucket", filter=Q(util_gpu_max__gte=threshold)))}
    stale_before = now - _sample_slack()
    quiet = []
    for device in devices:
        sample, rollup = raw.get(device), rolled.get(device)
        if sample is None or sample["last"] < stale_before:
            return None
        first = min(filter(None, [sample["first"], rollup and rollup["first"]]))
        busy = [sample["busy_last"]]
        if rollup and rollup["busy_last"]:
            busy.append(rollup["busy_last"] + datetime.timedelta(seconds=60))
        busy = [b for b in busy if b]
        quiet.append(max(busy) if busy else first)
    return max(quiet)


@dataclass(frozen=True)
class IdleStatus:
    """What the workspace page's banner says (no lab call: safe on every page render)."""

    warned: bool = False
    reason: str = ""  # "idle" | "planned_end" | "lifetime"
    idle_since: datetime.datetime | None = None
    stop_at: datetime.datetime | None = None
    message: str = ""

    @property
    def warning(self) -> bool:  # the name the workspace page's template uses
        return self.warned


def _deadlines(workspace: Workspace) -> list[tuple[datetime.datetime, str]]:
    policy = workspace.team.policy
    found = [(workspace.created_at + datetime.timedelta(hours=policy.max_lifetime_hours), "lifetime")]
    if workspace.planned_end:
        found.append((workspace.planned_end, "planned_end"))
    return sorted(found)


def _idle_stop_at(workspace: Workspace) -> datetime.datetime | None:
    if not (workspace.idle_since and workspace.idle_warned_at):
        return None
    policy = workspace.team.policy
    # The owner always gets the whole warning period, even if the warning went out late.
    return max(workspace.idle_since + datetime.timedelta(minutes=policy.idle_window_minutes),
               workspace.idle_warned_at + datetime.timedelta(minutes=policy.idle_warning_minutes))


def workspace_idle_status(workspace: Workspace, now: datetime.datetime | None = None) -> IdleStatus:
    """The idle/deadline warning for the workspace page's banner (W1's template context) and the API."""
    if workspace.state != S.RUNNING:
        return IdleStatus()
    now = now or timezone.now()
    warning = datetime.timedelta(minutes=workspace.team.policy.idle_warning_minutes)
    deadline, kind = _deadlines(workspace)[0]
    idle_stop = _idle_stop_at(workspace)
    if idle_stop and idle_stop <= deadline:
        minutes = max(0, int((now - workspace.idle_since).total_seconds() // 60))
        return IdleStatus(True, "idle", workspace.idle_since, idle_stop,
                          f"This workspace has been idle for {minutes} min (GPUs unused, no notebook activity) and "
                          f"will be stopped at {timezone.localtime(idle_stop):%H:%M} unless it is used.")
    if now >= deadline - warning:
        what = ("reaches the team's maximum lifetime (it cannot be extended past it; save your work)"
                if kind == "lifetime" else "reaches its planned end")
        return IdleStatus(True, kind, workspace.idle_since, deadline,
                          f"This workspace {what} at {timezone.localtime(deadline):%H:%M} and will be stopped then.")
    return IdleStatus(idle_since=workspace.idle_since)


def _email_warning(workspace: Workspace, status: IdleStatus) -> None:
    if not workspace.owner.email:
        return
    send_mail(
        subject=f"[GPU portal] Workspace {workspace.name} will be stopped at {timezone.localtime(status.stop_at):%H:%M}",
        message=(f"Hello {workspace.owner.get_username()},\n\n{status.message}\n\n"
                 f"Workspace page: /workspaces/{workspace.pk}/"
                 + (" (extend it there to keep it)" if status.reason != "lifetime" else "") + "\n"),
        from_email=None, recipient_list=[workspace.owner.email], fail_silently=True,
    )


def workspace_idle_warn(*, workspace: Workspace, idle_since: datetime.datetime | None,
                        now: datetime.datetime) -> bool:
    """Running only: record the warning (idle_warned_at), audit it, and email the owner after commit."""
    with transaction.atomic():
        locked = Workspace.objects.select_for_update(of=("self",)).select_related("team__policy", "owner").get(pk=workspace.pk)
        if locked.state != S.RUNNING:
            return False
        locked.idle_since = idle_since
        locked.idle_warned_at = now
        locked.save(update_fields=["idle_since", "idle_warned_at"])
        status = workspace_idle_status(locked, now=now)
        audit_record(action="workspace.idle_warning", actor=None, target=locked, team=locked.team,
                     changes={"reason": status.reason, "stop_at": status.stop_at.isoformat() if status.stop_at else None,
                              "idle_since": idle_since.isoformat() if idle_since else None})
        transaction.on_commit(lambda: _email_warning(locked, status))
    workspace.idle_since, workspace.idle_warned_at = locked.idle_since, locked.idle_warned_at
    return True


def _note_idle(workspace: Workspace, idle_since: datetime.datetime | None, clear_warning: bool) -> None:
    """Bookkeeping only (no state change, nothing to audit): the idle clock shown on the page."""
    changes = {"idle_since": idle_since}
    if clear_warning:
        changes["idle_warned_at"] = None
    Workspace.objects.filter(pk=workspace.pk, state=S.RUNNING).update(**changes)


@dataclass
class CullReport:
    warned: list[int] = field(default_factory=list)
    culled: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)
    idle: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


def workspace_idle_since(workspace: Workspace, now: datetime.datetime) -> datetime.datetime | None:
    """Since when the workspace has been idle (GPUs and lab both quiet), or None when it is not
    idle or that cannot be told. Never earlier than the last start or extension."""
    policy = workspace.team.policy
    window = datetime.timedelta(minutes=policy.idle_window_minutes)
    gpu_since = gpu_quiet_since(workspace, threshold=policy.idle_gpu_util_threshold, window=window, now=now)
    if gpu_since is None:
        return None
    lab = lab_activity(workspace)
    if lab is None or lab.busy:
        return None
    floors = [gpu_since, lab.last_activity, workspace.running_at, workspace.last_activity_at]
    return max(f for f in floors if f)


def cull_workspace(workspace: Workspace, now: datetime.datetime, report: CullReport) -> None:
    policy = workspace.team.policy
    window = datetime.timedelta(minutes=policy.idle_window_minutes)
    warning = datetime.timedelta(minutes=policy.idle_warning_minutes)
    deadline, kind = _deadlines(workspace)[0]

    if now >= deadline:
        if kind == "lifetime":
            if services.workspace_cull(workspace=workspace, reason=(
                    f"reached the team's maximum lifetime of {policy.max_lifetime_hours} h")):
                report.culled.append(workspace.pk)
        else:
            try:
                services.workspace_stop(workspace=workspace, actor=None,
                                        reason=f"its planned end ({timezone.localtime(deadline):%Y-%m-%d %H:%M}) passed")
                report.stopped.append(workspace.pk)
            except Conflict:
                pass
        return

    idle_since = workspace_idle_since(workspace, now)
    deadline_warning_due = now >= deadline - warning
    if idle_since is None:
        if workspace.idle_since or (workspace.idle_warned_at and not deadline_warning_due):
            _note_idle(workspace, None, clear_warning=not deadline_warning_due)
    else:
        report.idle.append(workspace.pk)
        if idle_since != workspace.idle_since:
            # Activity after the warning began a new idle period: that warning no longer holds.
            stale_warning = bool(workspace.idle_warned_at and idle_since > workspace.idle_warned_at
                                 and not deadline_warning_due)
            _note_idle(workspace, idle_since, clear_warning=stale_warning)
            workspace.idle_since = idle_since
            if stale_warning:
                workspace.idle_warned_at = None
        if now - idle_since >= window - warning and not workspace.idle_warned_at:
            if workspace_idle_warn(workspace=workspace, idle_since=idle_since, now=now):
                report.warned.append(workspace.pk)
            return
        stop_at = _idle_stop_at(workspace)
        if stop_at and now >= stop_at:
            minutes = int((now - idle_since).total_seconds() // 60)
            if services.workspace_cull(workspace=workspace, reason=(
                    f"idle for {minutes} min: GPU utilisation under {policy.idle_gpu_util_threshold:.0%} and no "
                    f"notebook or terminal activity (team policy: {policy.idle_window_minutes} min)")):
                report.culled.append(workspace.pk)
            return

    if deadline_warning_due and (not workspace.idle_warned_at or workspace.idle_warned_at < deadline - warning):
        if workspace_idle_warn(workspace=workspace, idle_since=idle_since, now=now):
            report.warned.append(workspace.pk)


def cull_run(*, now: datetime.datetime | None = None) -> CullReport:
    """One culling pass over every running workspace. One workspace's trouble (a lab that hangs,
    a race with a stop) never stops the others."""
    now = now or timezone.now()
    report = CullReport()
    running = Workspace.objects.filter(state=S.RUNNING).select_related("team__policy", "owner").order_by("pk")
    for workspace in running:
        try:
            cull_workspace(workspace, now, report)
        except Exception:  # noqa: BLE001
            log.exception("culler: workspace %s", workspace.pk)
    return report
