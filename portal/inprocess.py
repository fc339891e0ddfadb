"""The embedded default's stand-in for Celery beat: the same schedule (portal.celery.beat_schedule)
run from one daemon thread of the web process, each job at most once at a time."""

import logging
import threading
import time

log = logging.getLogger(__name__)
_started = False


def start_beat() -> None:
    global _started
    if _started:
        return
    _started = True
    threading.Thread(target=_loop, name="portal-inprocess-beat", daemon=True).start()
    log.info("in-process beat started (embedded mode)")


def _loop() -> None:
    from portal.celery import app, beat_schedule
    from portal.tasks import _run_in_thread, _thread_pool

    time.sleep(2)  # let the server finish starting
    app.loader.import_default_modules()  # autodiscovery is lazy: register the apps' tasks before looking them up
    schedule = beat_schedule()
    next_run = {name: time.monotonic() for name in schedule}
    running: dict[str, object] = {}
    warned: set[str] = set()
    while True:
        now = time.monotonic()
        for name, entry in schedule.items():
            if now < next_run[name]:
                continue
            next_run[name] = now + float(entry["schedule"])
            future = running.get(name)
            if future is not None and not future.done():
                continue  # the previous run of this job is still going: skip, never pile up
            task = app.tasks.get(entry["task"])
            if task is None:
                if name not in warned:
                    log.warning("periodic job %s: task %s is not registered", name, entry["task"])
                    warned.add(name)
                continue
            running[name] = _thread_pool().submit(_run_in_thread, task, (), {})
        time.sleep(0.2)
