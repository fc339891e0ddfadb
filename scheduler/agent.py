"""The node agent: a Celery worker started with the node's name, consuming its own queue.

    PORTAL_NODE_NAME=<name> celery -A portal worker -Q node.<name> -n node-<name>@%h

When such a worker is ready it registers the node's inventory from scheduler.gpus.source() and
beats every PORTAL_HEARTBEAT_SECONDS from a thread of the worker's main process. The node beats for
itself (rather than a central beat pinging its queue) so a node busy starting labs is not taken for
dead; the inventory is re-read every few minutes so a changed MIG layout shows up without a restart.

Workers without PORTAL_NODE_NAME (scheduler, housekeeping) are not nodes and do nothing here. In the
embedded default there is no node worker: the in-process beat runs `scheduler.tasks.node_heartbeat`
for every node of the simulated fleet (`local_node_names`).
"""

import logging
import threading

from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections, connections

from portal.tasks import node_queue

log = logging.getLogger(__name__)

# Re-read the whole inventory every this many heartbeats (10 s x 30 = 5 minutes by default).
REGISTER_EVERY_BEATS = 30

_stop = threading.Event()
_thread: threading.Thread | None = None


def local_node_names() -> list[str]:
    """The nodes this process beats for when the beat schedule asks: every node of the GPU source
    in the embedded default (tasks in-process), none under Celery (node agents beat themselves)."""
    if settings.PORTAL_TASKS == "celery":
        return []
    from scheduler import gpus

    return gpus.source().node_names()


def beat_once(node_name: str, *, register: bool) -> None:
    """One iteration of the agent's loop: register (re-reading the inventory) or just beat."""
    from scheduler import gpus, inventory

    if register:
        inventory.node_register(info=gpus.source().inventory(node_name))
    else:
        inventory.node_heartbeat(node_name)


def _loop(node_name: str) -> None:
    beats = 0
    registered = False
    while not _stop.is_set():
        try:
            close_old_connections()
            beat_once(node_name, register=not registered or beats % REGISTER_EVERY_BEATS == 0)
            if not registered:
                log.info("node agent %s: inventory registered", node_name)
            registered = True
        except Exception:  # noqa: BLE001 - a database blip must not kill the agent; the next beat retries
            log.exception("node agent %s: heartbeat failed", node_name)
        finally:
            # Never keep a connection open between beats: a prefork child forked meanwhile would
            # inherit its socket and could close it under us.
            connections.close_all()
        beats += 1
        _stop.wait(settings.PORTAL_HEARTBEAT_SECONDS)


def start(node_name: str) -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    _stop.clear()
    _thread = threading.Thread(target=_loop, args=(node_name,), name=f"node-agent-{node_name}", daemon=True)
    _thread.start()


def stop() -> None:
    _stop.set()


@worker_ready.connect(dispatch_uid="scheduler.agent.worker_ready")
def _on_worker_ready(sender=None, **kwargs):
    node_name = settings.PORTAL_NODE_NAME
    if not node_name:
        return
    queues = set()
    try:
        queues = {q.name for q in sender.app.amqp.queues.consume_from.values()}
    except Exception:  # noqa: BLE001 - only used for the warning below
        pass
    if queues and node_queue(node_name) not in queues:
        log.warning("node agent %s does not consume %s (queues: %s): it will not receive work",
                    node_name, node_queue(node_name), ", ".join(sorted(queues)))
    log.info("node agent %s starting (heartbeat every %ss)", node_name, settings.PORTAL_HEARTBEAT_SECONDS)
    start(node_name)


@worker_shutdown.connect(dispatch_uid="scheduler.agent.worker_shutdown")
def _on_worker_shutdown(**kwargs):
    stop()
