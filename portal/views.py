from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from portal import dashboard


@login_required
def home(request):
    """Each role lands on its own dashboard: what it needs first."""
    return render(request, "portal/home.html", dashboard.for_user(request.user))


@require_GET
@never_cache
def healthz(request):
    """The process is alive (no dependency checked)."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
        return f"{type(exc).__name__}: {exc}"


def _check_channel_layer() -> str | None:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    async def round_trip():
        layer = get_channel_layer()
        name = await layer.new_channel("readyz.")
        await layer.send(name, {"type": "readyz.probe"})
        await layer.receive(name)

    try:
        async_to_sync(round_trip)()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


def _check_broker() -> str | None:
    from django.conf import settings

    if settings.PORTAL_TASKS != "celery":
        return None  # tasks run in-process: there is no broker to reach
    from portal.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"


@require_GET
@never_cache
def readyz(request):
    """Database, channel layer and broker reachable; 503 naming what failed otherwise."""
    checks = {"database": _check_database(), "channel_layer": _check_channel_layer(), "broker": _check_broker()}
    failed = {name: error for name, error in checks.items() if error}
    body = {"status": "ok" if not failed else "unavailable", "checks": {n: ("ok" if not e else "failed") for n, e in checks.items()}}
    if failed:
        body["errors"] = failed
    return JsonResponse(body, status=503 if failed else 200)
