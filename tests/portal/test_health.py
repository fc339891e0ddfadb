"""/healthz says the process is alive; /readyz checks the database, the channel layer and the
broker, and answers 503 with a JSON body naming what failed."""

import pytest
from channels.layers import channel_layers


@pytest.mark.django_db
def test_healthz_is_ok_without_touching_anything(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_ok_when_everything_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "channel_layer": "ok", "broker": "ok"}}


@pytest.fixture
def unreachable_channel_layer(settings):
    # A Redis channel layer pointed at a port nothing listens on.
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]}}}
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


@pytest.mark.django_db
def test_readyz_is_503_naming_the_unreachable_channel_layer(client, unreachable_channel_layer):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"database": "ok", "channel_layer": "failed", "broker": "ok"}
    assert set(body["errors"]) == {"channel_layer"} and body["errors"]["channel_layer"]


@pytest.mark.django_db
def test_readyz_is_503_naming_the_unreachable_broker(client, settings):
    from portal.celery import app

    settings.PORTAL_TASKS = "celery"
    original = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url = original
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "failed"


@pytest.fixture
def redis_channel_layer(settings, redis_url):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}}
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


@pytest.mark.django_db
def test_readyz_ok_with_a_real_redis_channel_layer(client, redis_channel_layer):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["checks"]["channel_layer"] == "ok"
