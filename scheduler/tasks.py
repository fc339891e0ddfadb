"""The scheduler's Celery tasks. Thin: load by id, call a service, safe to run twice.

The scheduling engine's tasks come first; colleagues append node-agent and telemetry tasks below."""

from celery import shared_task


@shared_task(name="scheduler.tasks.schedule_pass", ignore_result=True)
def schedule_pass(retried: bool = False) -> dict:
    """One scheduling pass. Safe to run any number of times at once: only one holds the lock, the
    others return at once. A skipped pass may have been triggered by rows the running pass did not
    see, so under Celery it is retried once, shortly after (not waiting for the next beat)."""
    from django.conf import settings

    from scheduler.services import schedule_pass_run

    result = schedule_pass_run()
    if result.skipped and not retried and settings.PORTAL_TASKS == "celery":
        schedule_pass.apply_async(kwargs={"retried": True}, countdown=1)
    return result.summary()


# --- node agent (S2) and telemetry (T) tasks are appended below this line ---


# --- node agent (S2) ---

from scheduler import agent as _agent  # noqa: E402,F401 - connects the node agent to worker_ready


@shared_task(name="scheduler.tasks.node_agent_register", ignore_result=True)
def node_agent_register(node_name: str) -> None:
    """Register (or refresh) a node's inventory from this host's GPU source. Idempotent."""
    from scheduler import gpus, inventory

    inventory.node_register(info=gpus.source().inventory(node_name))


@shared_task(name="scheduler.tasks.node_heartbeat", ignore_result=True)
def node_heartbeat(node_name: str | None = None) -> None:
    """Beat for one node, or, with no name, for every node this process runs (see
    scheduler.agent.local_node_names: all simulated nodes in the embedded default, none in a
    Celery deployment, where each node agent beats for itself)."""
    from scheduler import agent, inventory

    for name in [node_name] if node_name else agent.local_node_names():
        inventory.node_heartbeat(name)


@shared_task(name="scheduler.tasks.nodes_mark_down", ignore_result=True)
def nodes_mark_down() -> list[str]:
    """Mark silent nodes down. In-process, this process is every local node: they beat first, so a
    demo server restarted after a pause does not flap its own nodes down and up."""
    from scheduler import agent, inventory

    for name in agent.local_node_names():
        inventory.node_heartbeat(name)
    return inventory.nodes_mark_down()


# --- telemetry (T) ---

# A sample order older than this is dropped by the node agent: stale points are worth nothing,
# and a backed-up queue must drain instead of sampling the past.
SAMPLE_ORDER_MAX_AGE_S = 5.0


@shared_task(name="scheduler.tasks.telemetry_sample_node", ignore_result=True)
def telemetry_sample_node(node_name: str, sent_at: float | None = None) -> int:
    """Runs on the node's own queue: sample its GPUs, store, publish (scheduler.telemetry)."""
    import time

    from scheduler import telemetry

    if sent_at is not None and time.time() - sent_at > SAMPLE_ORDER_MAX_AGE_S:
        return 0
    return telemetry.telemetry_sample_node(node_name=node_name)


@shared_task(name="scheduler.tasks.telemetry_sample_all", ignore_result=True)
def telemetry_sample_all() -> int:
    """Every sample interval: in-process, sample every local (simulated) node; under Celery, send
    one sample order to each registered node's queue, where its agent reads its GPUs."""
    import time

    from django.conf import settings

    from portal.tasks import node_queue, send_now
    from scheduler import agent, telemetry
    from scheduler.models import Node

    if settings.PORTAL_TASKS != "celery":
        return telemetry.telemetry_sample_nodes(node_names=agent.local_node_names())
    now = time.time()
    names = Node.objects.filter(gone_confirmed_at__isnull=True).exclude(state=Node.State.DOWN).values_list("name", flat=True)
    for name in names:
        send_now(telemetry_sample_node, name, now, queue=node_queue(name))
    return 0


@shared_task(name="scheduler.tasks.telemetry_rollup", ignore_result=True)
def telemetry_rollup() -> dict:
    """Roll raw samples into 60 s / 3600 s buckets and apply retention. Idempotent."""
    from dataclasses import asdict

    from scheduler import telemetry

    return asdict(telemetry.telemetry_rollup())
