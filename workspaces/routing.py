from django.urls import re_path

from workspaces.consumers import LabSocketConsumer

websocket_urlpatterns: list = [
    re_path(r"^w/(?P<workspace_id>\d+)/", LabSocketConsumer.as_asgi()),
]
