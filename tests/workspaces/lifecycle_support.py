"""Helpers for W1's workspace tests: the simulated fleet registered, quota granted, a catalogue
image, and the scheduler's real pass run with its after-commit work under the test's control."""

from __future__ import annotations

import pytest

from governance.models import AuditEvent
from scheduler.inventory import inventory_sync_all
from scheduler.models import Allocation
from tests.factories import QuotaGrantFactory
from workspaces.models import Image, Workspace


@pytest.fixture
def fleet(db):
    """The demo fleet (simulated) in the inventory."""
    return inventory_sync_all()


@pytest.fixture
def lab_image(db):
    return Image.objects.create(name="lab", reference="portal-lab:ci", description="JupyterLab")


@pytest.fixture
def h100_quota(team):
    return QuotaGrantFactory(team=team, flavor="H100", count=8)


def run_pass_and_reactions(capture) -> list:
    """One real scheduling pass; then the signals it sends on commit (placements), whose own
    after-commit work (the start tasks) is returned un-run, so a test decides whether labs start."""
    from scheduler.services import schedule_pass_run

    with capture() as placed:
        schedule_pass_run()
    with capture() as follow_up:
        for callback in placed:
            callback()
    return follow_up


def live_devices(workspace: Workspace) -> int:
    return Allocation.objects.filter(request_id=workspace.allocation_request_id, released_at__isnull=True).count()


def audit_actions(target: Workspace) -> list[str]:
    return list(AuditEvent.objects.filter(target_type="workspaces.workspace", target_id=str(target.pk))
                .order_by("id").values_list("action", flat=True))


# --- a real ASGI server (uvicorn, the portal's own asgi application) --------------------------

from django.test import Client  # noqa: E402

from tests.conftest import serving_asgi  # noqa: E402


@pytest.fixture
def portal_server(transactional_db, settings):
    """portal.asgi.application served by uvicorn on a free localhost port, in a thread of this
    process (so it shares the test database). Yields its base URL."""
    import importlib

    import portal.asgi

    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
    # The websocket origin check copies ALLOWED_HOSTS when the module is built: build it again
    # (production settings leave ALLOWED_HOSTS empty until the operator sets it).
    application = importlib.reload(portal.asgi).application
    with serving_asgi(application) as port:
        yield f"127.0.0.1:{port}"


def session_cookie(user) -> dict[str, str]:
    """A real login session for `user` (what the browser holds after signing in)."""
    client = Client()
    client.force_login(user)
    from django.conf import settings

    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


@pytest.fixture
def stop_labs(settings):
    """Stops every lab this test's portal root still runs (a failing test must not leak processes)."""
    yield
    from workspaces.launchers.local import LocalLauncher

    launcher = LocalLauncher()
    for instance in launcher.list_owned():
        launcher.stop(instance.handle)
