"""Telemetry pages, history JSON for the charts, and Prometheus /metrics (issue 5)."""

from django.urls import path

from scheduler import telemetry_views as views

urlpatterns = [
    path("fleet/gpus/<str:uuid>/", views.gpu_detail, name="telemetry-gpu"),
    path("teams/<slug:slug>/gpus/", views.team_gpus, name="telemetry-team-gpus"),
    path("telemetry/heatmap/", views.fleet_heatmap, name="telemetry-fleet-heatmap"),
    path("telemetry/gpus/<str:uuid>/history/", views.gpu_history, name="telemetry-gpu-history"),
    path("telemetry/nodes/<int:node_id>/history/", views.node_history, name="telemetry-node-history"),
    path("telemetry/teams/<slug:slug>/history/", views.team_history, name="telemetry-team-history"),
    path("metrics", views.metrics, name="metrics"),
]
