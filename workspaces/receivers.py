"""What workspaces do when the scheduler speaks (scheduler.signals, sent after its commits)."""

from django.dispatch import receiver

from scheduler.signals import allocation_placed, allocation_preempting, allocation_released


@receiver(allocation_placed, dispatch_uid="workspaces.allocation_placed")
def _on_placed(sender, request_ids, **kwargs):
    from workspaces.services import workspaces_mark_scheduled

    workspaces_mark_scheduled(request_ids=request_ids)


@receiver(allocation_released, dispatch_uid="workspaces.allocation_released")
def _on_released(sender, request_id, **kwargs):
    """GPUs taken back by someone else (preemption after its grace, a node confirmed gone): the
    workspace stops with that reason. Our own stop/cancel/fail/cull already ended it: no-op then."""
    from workspaces.services import workspace_preempt

    workspace_preempt(request_id=request_id)


@receiver(allocation_preempting, dispatch_uid="workspaces.allocation_preempting")
def _on_preempting(sender, request_id, preempt_at, **kwargs):
    from workspaces.services import workspace_warn_preemption

    workspace_warn_preemption(request_id=request_id, preempt_at=preempt_at)
