"""Telemetry views (issue 5): the GPU page, a team's GPUs page, the fleet heatmap fragment, history
JSON for the live charts, and Prometheus /metrics. Thin: the access layer decides, selectors read."""

import datetime
import hmac

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from governance.access import require, team_get_for_user
from scheduler import metrics as portal_metrics
from scheduler import telemetry
from scheduler.models import Allocation, GpuHealthEvent
from scheduler.telemetry_access import gpu_get_for_user, node_get_for_user

MAX_WINDOW_S = 366 * 86400


def _window(request) -> int | None:
    """?window=live|hour|day|week or a number of seconds (60 .. one year); None when invalid."""
    raw = request.GET.get("window", "live")
    if raw in telemetry.WINDOWS:
        return telemetry.WINDOWS[raw]
    try:
        seconds = int(raw)
    except ValueError:
        return None
    return seconds if 60 <= seconds <= MAX_WINDOW_S else None


def _history_response(request, spans) -> JsonResponse:
    window = _window(request)
    if window is None:
        return JsonResponse({"error": "invalid_window", "detail": "window must be live, hour, day, week or 60..31622400 seconds"},
                            status=400)
    return JsonResponse(telemetry.history(spans=spans, window_s=window))


def charts_config(*, subscribe: list[dict], history: list[str], only: list[str] | None = None, whole_only: bool = False,
                  title: str = "") -> dict:
    """What static/portal/telemetry.js needs to draw one panel of live charts."""
    return {"subscribe": subscribe, "history": history, "only": only, "whole_only": whole_only, "title": title,
            "windows": list(telemetry.WINDOWS)}


@login_required
@require_GET
def gpu_detail(request, uuid):
    """One GPU: facts, holder, health events, live charts (platform staff, or its holding team)."""
    gpu = gpu_get_for_user(request.user, uuid)
    allocations = (Allocation.objects.filter(released_at__isnull=True)
                   .filter(gpu=gpu) | Allocation.objects.filter(released_at__isnull=True, mig_slice__gpu=gpu))
    context = {
        "gpu": gpu,
        "slices": list(gpu.mig_slices.all()),
        "allocations": list(allocations.select_related("team", "mig_slice", "request__user")),
        "events": list(GpuHealthEvent.objects.filter(gpu=gpu)[:20]),
        "latest": telemetry.latest_readings(gpu_ids=[gpu.pk]).get((gpu.pk, -1)),
        "charts": charts_config(subscribe=[{"target": "gpu", "id": gpu.uuid}],
                                history=[reverse("telemetry-gpu-history", args=[gpu.uuid])], title=str(gpu)),
    }
    return render(request, "scheduler/gpu_detail.html", context)


@login_required
@require_GET
def team_gpus(request, slug):
    """The GPUs a team holds now, live (team members and platform staff)."""
    team = team_get_for_user(request.user, slug, "telemetry.view_team")
    allocations = list(Allocation.objects.filter(team=team, released_at__isnull=True)
                       .select_related("gpu__node", "mig_slice__gpu__node", "request__user").order_by("started_at"))
    context = {
        "team": team,
        "rows": [{"a": a, "gpu": a.gpu or a.mig_slice.gpu} for a in allocations],
        "charts": charts_config(subscribe=[{"target": "team", "id": team.slug}],
                                history=[reverse("telemetry-team-history", args=[team.slug])], title=f"{team.name} GPUs"),
    }
    return render(request, "scheduler/team_gpus.html", context)


@login_required
@require_GET
def fleet_heatmap(request):
    """The fleet heatmap fragment (included by the Fleet page, which loads it with htmx)."""
    require(request.user, "telemetry.view_fleet")
    team_id = request.GET.get("team") or ""
    context = telemetry.fleet_heatmap(model=request.GET.get("model", "")[:40],
                                      team_id=int(team_id) if team_id.isdigit() else None)
    return render(request, "scheduler/_fleet_heatmap_body.html", context)


@login_required
@require_GET
def gpu_history(request, uuid):
    gpu = gpu_get_for_user(request.user, uuid)
    return _history_response(request, telemetry.gpu_spans(gpu))


@login_required
@require_GET
def node_history(request, node_id):
    node = node_get_for_user(request.user, node_id)
    return _history_response(request, telemetry.node_spans(node))


@login_required
@require_GET
def team_history(request, slug):
    team = team_get_for_user(request.user, slug, "telemetry.view_team")
    window = _window(request) or telemetry.WINDOWS["live"]
    since = timezone.now() - datetime.timedelta(seconds=window)
    return _history_response(request, telemetry.team_spans(team.pk, since=since))


def _bearer_ok(request) -> bool:
    token = settings.PORTAL_METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if not token or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())


@never_cache
@require_GET
def metrics(request):
    """Prometheus text format. Scrapers present `Authorization: Bearer $PORTAL_METRICS_TOKEN`;
    a platform admin's browser session works too. Anyone else: 401 (no credentials) or 403."""
    if not _bearer_ok(request):
        if not request.user.is_authenticated:
            response = HttpResponse("authentication required\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        require(request.user, "telemetry.metrics")
    return HttpResponse(generate_latest(portal_metrics.registry()), content_type=CONTENT_TYPE_LATEST)
