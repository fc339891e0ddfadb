"""Domain signals the scheduler sends, and its receiver for governance's quota changes.

The scheduler knows nothing of workspaces (the dependency points workspaces -> scheduler); it tells
them what happened through these signals, always sent after the pass's transaction committed, so a
receiver sees the rows it is told about.

- allocation_placed(request_ids): pending requests got all their devices (one signal per pass, with
  every request it placed: a large pass places thousands).
- allocation_preempting(request_id, preempt_at): the request's allocations were chosen as preemption
  victims; they will be released by a pass at `preempt_at` (grace period: warn the user, stop cleanly).
- allocation_released(request_id, reason): the request's live allocations were released (stopped,
  cancelled, preempted after grace, node confirmed gone ...).
"""

from django.dispatch import Signal, receiver

from governance.signals import quota_changed

allocation_placed = Signal()
allocation_preempting = Signal()
allocation_released = Signal()


@receiver(quota_changed, dispatch_uid="scheduler.quota_changed.schedule_pass")
def _pass_on_quota_change(sender, **kwargs):
    """A grant changed: requests waiting for quota may fit now, borrowed GPUs may need reclaiming.
    governance sends this on commit already; enqueue() defers again only inside an open transaction."""
    from portal.tasks import enqueue
    from scheduler.tasks import schedule_pass

    enqueue(schedule_pass)
