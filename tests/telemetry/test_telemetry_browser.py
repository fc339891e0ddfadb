"""Live charts in a real browser (Chromium through Playwright) served by a real ASGI server
(uvicorn) on the Redis channel layer: the GPU page draws stored history, then new points arrive
over the websocket while the node agent samples."""

import importlib
import threading
import time
import uuid

import pytest
from channels.layers import channel_layers

from scheduler import telemetry
from tests.conftest import serving_asgi
from tests.telemetry.conftest import gpu_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser, pytest.mark.timeout(120)]

@pytest.fixture
def asgi_server(redis_url, settings):
    """portal.asgi under uvicorn in a thread of this process (so it sees the test database)."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [redis_url], "prefix": f"test-{uuid.uuid4().hex[:8]}"}}}
    settings.ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
    settings.SECURE_SSL_REDIRECT = False
    settings.WHITENOISE_USE_FINDERS = True
    channel_layers.backends = {}
    import portal.asgi

    saved = dict(vars(portal.asgi))
    application = importlib.reload(portal.asgi).application  # middleware and origin check read the settings above
    with serving_asgi(application) as port:
        yield f"http://testserver:{port}"
    vars(portal.asgi).update(saved)  # later tests get the application as it was
    channel_layers.backends = {}


def _login_cookie(page, base, client, user, settings):
    client.force_login(user)
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                               "url": base}])


def _sample(node_name: str) -> None:
    """The node agent's sampling, from a thread of its own: this one runs Playwright's event loop."""
    from django.db import connection

    def run():
        try:
            telemetry.telemetry_sample_node(node_name=node_name)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)


def _points(page) -> int:
    return page.evaluate("""() => Array.from(document.querySelectorAll('canvas[data-metric]'))
        .map(c => Chart.getChart(c).data.datasets.reduce((n, d) => n + d.data.length, 0))
        .reduce((a, b) => Math.min(a, b))""")


def test_gpu_page_shows_history_then_live_points(asgi_server, browser_page, client, settings, fleet, team, member, allocate):
    gpu = gpu_of(fleet["tel-a"], 0)
    allocate(team, member, gpu=gpu)
    for _ in range(2):  # some stored history
        _sample("tel-a")
    page = browser_page
    _login_cookie(page, asgi_server, client, member, settings)
    page.goto(f"{asgi_server}/fleet/gpus/{gpu.uuid}/")
    page.wait_for_function("() => document.querySelector('.telemetry-status').textContent === 'live'")
    page.wait_for_function("() => Chart.getChart(document.querySelector('canvas[data-metric=util]')).data.datasets.length > 0")
    stored = _points(page)
    assert stored >= 2
    assert page.locator(".telemetry-panel .badge-sim").is_visible()
    for _ in range(3):
        _sample("tel-a")
        time.sleep(0.3)
    page.wait_for_function(f"() => Chart.getChart(document.querySelector('canvas[data-metric=util]')).data.datasets[0].data.length > {stored // 4}")
    deadline = time.monotonic() + 10
    while _points(page) < stored + 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _points(page) >= stored + 3  # every chart got the live points

    page.get_by_role("button", name="Hour").click()  # coarser history (60 s buckets): none rolled up yet
    page.wait_for_function("() => !document.querySelector('.telemetry-empty').hidden")
