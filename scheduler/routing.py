from django.urls import path

from scheduler.consumers import TelemetryConsumer

websocket_urlpatterns: list = [
    path("ws/telemetry/", TelemetryConsumer.as_asgi()),
]
