"""Template helpers for pages above the scheduler that show live GPU charts (the workspace page)."""

from django import template
from django.urls import reverse

from scheduler import telemetry

register = template.Library()


@register.simple_tag
def telemetry_request_charts(request_id, title=""):
    """Charts config for the live devices of an allocation request (a workspace's GPUs): one
    `gpu.<uuid>` subscription per GPU, filtered to exactly its devices (whole GPU or MIG slice).
    The consumer re-checks that the viewer's team holds each GPU."""
    from scheduler.telemetry_views import charts_config

    devices = telemetry.request_devices(request_id)
    uuids = list(dict.fromkeys(d["uuid"] for d in devices))
    return {
        **charts_config(
            subscribe=[{"target": "gpu", "id": u} for u in uuids],
            history=[reverse("telemetry-gpu-history", args=[u]) for u in uuids],
            only=[f"{d['uuid']}:{d['slice']}" for d in devices],
            title=title,
        ),
        "devices": devices,
    }


@register.simple_tag
def telemetry_node_charts(node):
    """Charts config for a node's whole GPUs (the Fleet's node page)."""
    from scheduler.telemetry_views import charts_config

    return charts_config(subscribe=[{"target": "node", "id": node.pk}],
                         history=[reverse("telemetry-node-history", args=[node.pk])], whole_only=True, title=node.name)
