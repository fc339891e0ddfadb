"""The Celery app and, in one place, every periodic schedule (beat in production, a thread in
the embedded default; see portal/inprocess.py)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["governance", "scheduler", "workspaces"])


def _seconds(name: str, default: float) -> float:
    from django.conf import settings

    return float(getattr(settings, name, default))


def beat_schedule() -> dict:
    """Every periodic job the product runs. Names map to tasks in the apps' tasks.py."""
    return {
        "schedule-pass": {"task": "scheduler.tasks.schedule_pass", "schedule": _seconds("PORTAL_SCHEDULE_SECONDS", 5)},
        "node-heartbeat-check": {"task": "scheduler.tasks.nodes_mark_down", "schedule": 10.0},
        # Embedded default only: beats for the simulated nodes; under Celery each node agent beats itself.
        "node-heartbeat": {"task": "scheduler.tasks.node_heartbeat", "schedule": _seconds("PORTAL_HEARTBEAT_SECONDS", 10)},
        "telemetry-sample": {"task": "scheduler.tasks.telemetry_sample_all", "schedule": _seconds("PORTAL_SAMPLE_SECONDS", 1)},
        "telemetry-rollup": {"task": "scheduler.tasks.telemetry_rollup", "schedule": 60.0},
        "workspaces-reconcile": {"task": "workspaces.tasks.workspaces_reconcile", "schedule": 30.0},
        "workspaces-cull": {"task": "workspaces.tasks.workspaces_cull", "schedule": 60.0},
    }


@app.on_after_finalize.connect
def _setup_periodic_tasks(sender, **kwargs):
    sender.conf.beat_schedule = beat_schedule()
