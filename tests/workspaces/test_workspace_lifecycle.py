"""Workspace lifecycle services against the real scheduler pass: each transition locks, checks
its state, changes it, audits in the same transaction, and releases GPUs where it ends the work."""

import datetime

import pytest
from django.core.exceptions import PermissionDenied

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from portal.errors import Conflict, DomainError
from scheduler.models import AllocationRequest
from workspaces import services
from workspaces.models import Workspace
from tests.workspaces.lifecycle_support import (audit_actions, fleet, h100_quota, lab_image,  # noqa: F401
                                                live_devices, run_pass_and_reactions)

pytestmark = pytest.mark.django_db


def _create(user, team, image, **kw):
    params = {"gpu_count": 2, "flavor": "H100", "duration": datetime.timedelta(hours=2)} | kw
    return services.workspace_create(user=user, team=team, image=image, **params)


def _scheduled(member, team, lab_image, capture, **kw):
    workspace = _create(member, team, lab_image, **kw)
    starts = run_pass_and_reactions(capture)
    workspace.refresh_from_db()
    return workspace, starts


def test_create_writes_a_pending_workspace_with_its_request_and_audit(member, team, fleet, h100_quota, lab_image):
    workspace = _create(member, team, lab_image, name="exp-1")
    assert workspace.state == Workspace.State.PENDING
    request = workspace.allocation_request
    assert (request.flavor, request.count, request.mig, request.state) == ("H100", 2, False, AllocationRequest.State.PENDING)
    assert workspace.volume == "portal-vision-mia-member"
    assert audit_actions(workspace) == ["workspace.create"]
    assert audit_chain_verify().ok


@pytest.mark.parametrize("kw, field", [
    ({"gpu_count": 9}, "gpu_count"),
    ({"duration": datetime.timedelta(hours=500)}, "duration_hours"),
])
def test_create_outside_policy_is_refused_and_changes_nothing(member, team, fleet, h100_quota, lab_image, kw, field):
    before = (Workspace.objects.count(), AllocationRequest.objects.count(), AuditEvent.objects.count())
    with pytest.raises(DomainError) as error:
        _create(member, team, lab_image, **kw)
    assert field in error.value.fields
    assert (Workspace.objects.count(), AllocationRequest.objects.count(), AuditEvent.objects.count()) == before


def test_create_refuses_images_the_policy_does_not_allow(member, team, fleet, h100_quota, lab_image):
    team.policy.allowed_images = ["other"]
    team.policy.save()
    with pytest.raises(DomainError) as error:
        _create(member, team, lab_image)
    assert "image" in error.value.fields
    assert not Workspace.objects.exists()


def test_create_refuses_past_the_per_user_limit(member, team, fleet, h100_quota, lab_image):
    team.policy.max_workspaces_per_user = 1
    team.policy.save()
    _create(member, team, lab_image, gpu_count=1)
    with pytest.raises(DomainError):
        _create(member, team, lab_image, gpu_count=1)
    assert Workspace.objects.count() == 1


def test_viewers_and_outsiders_cannot_create(viewer, outsider, team, fleet, h100_quota, lab_image):
    for user in (viewer, outsider):
        with pytest.raises(PermissionDenied):
            _create(user, team, lab_image)
    assert not Workspace.objects.exists()


def test_placement_schedules_the_workspace_and_sends_start_to_the_node(member, team, fleet, h100_quota, lab_image,
                                                                       django_capture_on_commit_callbacks):
    workspace, starts = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    assert workspace.state == Workspace.State.SCHEDULED
    assert workspace.node is not None and workspace.scheduled_at is not None
    assert live_devices(workspace) == 2
    assert len(starts) == 1  # the workspace_start task, queued for after commit
    assert audit_actions(workspace) == ["workspace.create", "workspace.schedule"]


def test_pending_workspace_shows_scheduler_reasons_when_it_cannot_fit(member, team, fleet, lab_image,
                                                                      django_capture_on_commit_callbacks):
    # No quota grant: the pass leaves it pending with its ranked reasons.
    workspace, starts = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    assert workspace.state == Workspace.State.PENDING and not starts
    workspace.allocation_request.refresh_from_db()
    assert workspace.allocation_request.pending_reasons


def test_fail_releases_the_gpus_in_the_same_transaction(member, team, fleet, h100_quota, lab_image,
                                                        django_capture_on_commit_callbacks):
    workspace, _ = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    assert services.workspace_fail(workspace=workspace, reason="could not select device driver")
    workspace.refresh_from_db()
    assert (workspace.state, workspace.error) == (Workspace.State.FAILED, "could not select device driver")
    assert live_devices(workspace) == 0
    assert services.workspace_fail(workspace=workspace, reason="again") is False  # safe to run twice
    assert audit_actions(workspace)[-1] == "workspace.fail"


def test_cancel_pending_cancels_the_request(member, team, fleet, h100_quota, lab_image):
    workspace = _create(member, team, lab_image)
    services.workspace_cancel(workspace=workspace, actor=member)
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED and workspace.stop_reason.startswith("cancelled")
    assert workspace.allocation_request.state == AllocationRequest.State.CANCELLED


def test_cancel_scheduled_releases_and_a_late_start_does_nothing(member, team, fleet, h100_quota, lab_image,
                                                                  django_capture_on_commit_callbacks):
    workspace, starts = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    services.workspace_cancel(workspace=workspace, actor=member)
    assert live_devices(workspace) == 0
    from workspaces.tasks import workspace_start

    assert workspace_start(workspace.pk) == "skipped"
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED


def _running(workspace):
    # The states a node's start task passes through, without a lab (the launcher tests start real
    # ones); the handle names a pid above pid_max, so no process can ever match it.
    assert services.workspace_mark_starting(workspace=workspace, launcher="local", token="t")
    assert services.workspace_record_instance(workspace=workspace, handle="pid:4194999:1", host="127.0.0.1", port=1)
    assert services.workspace_mark_running(workspace=workspace)
    return workspace


def test_stop_releases_gpus_at_once_and_keeps_the_volume(member, team, fleet, h100_quota, lab_image,
                                                         django_capture_on_commit_callbacks):
    workspace, _ = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    _running(workspace)
    with django_capture_on_commit_callbacks() as stop_task:
        services.workspace_stop(workspace=workspace, actor=member)
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPING and workspace.stopping_at
    assert live_devices(workspace) == 0
    assert workspace.allocation_request.state == AllocationRequest.State.FINISHED
    assert stop_task  # the node's stop task is queued after commit
    assert services.workspace_mark_stopped(workspace=workspace)
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED and workspace.volume
    assert [a for a in audit_actions(workspace) if a in ("workspace.stop", "workspace.stopped")] == ["workspace.stop", "workspace.stopped"]


def test_stop_in_the_wrong_state_is_a_conflict_and_changes_nothing(member, team, fleet, h100_quota, lab_image):
    workspace = _create(member, team, lab_image)
    events = AuditEvent.objects.count()
    with pytest.raises(Conflict):
        services.workspace_stop(workspace=workspace, actor=member)
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.PENDING and AuditEvent.objects.count() == events


def test_restart_asks_for_the_same_gpus_again(member, team, fleet, h100_quota, lab_image):
    workspace = _create(member, team, lab_image)
    first = workspace.allocation_request_id
    services.workspace_cancel(workspace=workspace, actor=member)
    services.workspace_restart(workspace=workspace, actor=member)
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.PENDING and workspace.allocation_request_id != first
    assert (workspace.allocation_request.flavor, workspace.allocation_request.count) == ("H100", 2)
    assert workspace.stopped_at is None and workspace.stop_reason == ""


def test_extend_moves_the_planned_end_within_policy(member, team, fleet, h100_quota, lab_image,
                                                    django_capture_on_commit_callbacks):
    workspace, _ = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    _running(workspace)
    end = workspace.planned_end
    services.workspace_extend(workspace=workspace, actor=member, hours=3)
    workspace.refresh_from_db()
    assert workspace.planned_end >= end + datetime.timedelta(hours=3) - datetime.timedelta(seconds=5)
    assert workspace.extensions == 1
    alloc = workspace.allocation_request.allocations.first()
    assert abs((alloc.planned_end - workspace.planned_end).total_seconds()) < 2
    with pytest.raises(DomainError):
        services.workspace_extend(workspace=workspace, actor=member, hours=500)
    workspace.refresh_from_db()
    assert workspace.extensions == 1


def test_cull_ends_a_running_workspace_with_its_reason(member, team, fleet, h100_quota, lab_image,
                                                       django_capture_on_commit_callbacks):
    workspace, _ = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    _running(workspace)
    assert services.workspace_cull(workspace=workspace, reason="idle for 60 min")
    workspace.refresh_from_db()
    assert (workspace.state, workspace.stop_reason) == (Workspace.State.CULLED, "idle for 60 min")
    assert live_devices(workspace) == 0


def test_preemption_release_stops_a_running_workspace(member, team, fleet, h100_quota, lab_image,
                                                      django_capture_on_commit_callbacks):
    from scheduler.services import allocation_release

    workspace, _ = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    _running(workspace)
    with django_capture_on_commit_callbacks(execute=True):
        allocation_release(request=workspace.allocation_request, reason="preempted")
    workspace.refresh_from_db()
    assert workspace.state in (Workspace.State.STOPPING, Workspace.State.STOPPED)
    assert "preempted" in workspace.stop_reason


def test_preemption_warning_mails_the_owner_and_shows_a_banner(member, team, fleet, h100_quota, lab_image, client,
                                                               mailoutbox, django_capture_on_commit_callbacks):
    from django.utils import timezone

    from scheduler.models import Allocation
    from scheduler.signals import allocation_preempting

    member.email = "mia@example.org"
    member.save()
    workspace, _ = _scheduled(member, team, lab_image, django_capture_on_commit_callbacks)
    _running(workspace)
    at = timezone.now() + datetime.timedelta(minutes=5)
    Allocation.objects.filter(request_id=workspace.allocation_request_id).update(preempt_at=at)
    with django_capture_on_commit_callbacks(execute=True):
        allocation_preempting.send(sender=None, request_id=workspace.allocation_request_id, preempt_at=at)
    assert audit_actions(workspace)[-1] == "workspace.preempt_warning"
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["mia@example.org"]
    client.force_login(member)
    page = client.get(f"/workspaces/{workspace.pk}/").content.decode()
    assert 'id="preempt-banner"' in page
