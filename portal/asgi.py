"""HTTP and websockets. Websockets are authenticated from the session and origin-checked
against ALLOWED_HOSTS; each consumer then asks governance.access what the user may see."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from scheduler.routing import websocket_urlpatterns as scheduler_ws  # noqa: E402
from workspaces.proxy import close_lab_clients, lab_proxy_application  # noqa: E402
from workspaces.routing import websocket_urlpatterns as workspaces_ws  # noqa: E402

_lab_proxy = lab_proxy_application()


async def http_application(scope, receive, send):
    """Workspace labs under /w/ stream through the ASGI proxy; everything else is Django."""
    if scope["path"].startswith("/w/"):
        return await _lab_proxy(scope, receive, send)
    return await django_asgi_app(scope, receive, send)


async def lifespan(scope, receive, send):
    """Server start and stop: on stop, close the proxy's pooled upstream connections cleanly."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close_lab_clients()
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter(
    {
        "lifespan": lifespan,
        "http": http_application,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(scheduler_ws + workspaces_ws))),
    }
)
