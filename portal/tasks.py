"""How the apps send work: always after commit, to Celery in production, to a small in-process
thread pool in the embedded default, synchronously in tests."""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections, connections, transaction

log = logging.getLogger(__name__)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="portal-task")
        return _pool


def _run_in_thread(task, args, kwargs):
    close_old_connections()
    try:
        result = task.apply(args=args, kwargs=kwargs)
        if result.failed():
            log.error("task %s failed: %r", task.name, result.result)
    finally:
        connections.close_all()


def send_now(task, *args, queue: str | None = None, **kwargs):
    """Send immediately (callers outside a transaction, such as the beat loop)."""
    mode = settings.PORTAL_TASKS
    if mode == "celery":
        return task.apply_async(args=args, kwargs=kwargs, queue=queue)
    if mode == "eager":
        return task.apply(args=args, kwargs=kwargs, throw=True)
    return _thread_pool().submit(_run_in_thread, task, args, kwargs)


def enqueue(task, *args, queue: str | None = None, **kwargs) -> None:
    """Send `task` once the current transaction commits (never from inside it: a worker must
    not see a row before it exists)."""
    transaction.on_commit(lambda: send_now(task, *args, queue=queue, **kwargs))


def node_queue(node_name: str) -> str:
    """The Celery queue a node agent consumes: start/stop work goes to the node holding the GPUs."""
    return f"node.{node_name}"
