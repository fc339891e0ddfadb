from django.urls import include, path

from scheduler import views

urlpatterns: list = [
    path("fleet/", views.fleet, name="fleet"),
    path("fleet/nodes/<str:name>/", views.node_detail, name="fleet-node"),
    path("fleet/nodes/<str:name>/drain/", views.node_action, {"action": "drain"}, name="fleet-node-drain"),
    path("fleet/nodes/<str:name>/undrain/", views.node_action, {"action": "undrain"}, name="fleet-node-undrain"),
    path("fleet/nodes/<str:name>/confirm-gone/", views.node_action, {"action": "confirm-gone"}, name="fleet-node-confirm-gone"),
    path("fleet/reservations/", views.reservation_create, name="fleet-reservation-create"),
    path("fleet/reservations/<int:pk>/cancel/", views.reservation_cancel, name="fleet-reservation-cancel"),
    path("", include("scheduler.telemetry_urls")),
]
