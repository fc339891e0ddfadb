"""Streaming on the REAL Redis channel layer: a websocket client gets its team's samples within two
sample intervals and nothing of another team's; forbidden subscriptions are refused and audited;
pause, rate and the bounded queue of a slow client."""

import asyncio
import json
import time
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings

from governance.audit import audit_chain_verify
from governance.models import AuditEvent
from scheduler import telemetry
from scheduler.consumers import TelemetryConsumer
from tests.telemetry.conftest import gpu_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def redis_layer(redis_url, settings):
    """The real Redis channel layer, on a prefix of its own so parallel runs never cross."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [redis_url], "prefix": f"test-{uuid.uuid4().hex[:8]}",
                                                      "capacity": 200, "expiry": 10}}}
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


async def _connect(user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(TelemetryConsumer.as_asgi(), "/ws/telemetry/")
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _subscribe(communicator, target, ident) -> dict:
    await communicator.send_json_to({"action": "subscribe", "target": target, "id": ident})
    return await communicator.receive_json_from(timeout=5)


async def _samples(communicator, timeout) -> list[dict]:
    """Every sample frame that arrives within `timeout` seconds."""
    frames = []
    deadline = time.monotonic() + timeout
    # receive_nothing waits without cancelling the app (a timed-out receive_output would)
    while (left := deadline - time.monotonic()) > 0:
        if await communicator.receive_nothing(timeout=min(0.05, left), interval=0.01):
            continue
        msg = await communicator.receive_json_from(timeout=5)
        if msg["type"] == "samples":
            frames.append(msg)
    return frames


def _sampler(stop: asyncio.Event, names: list[str]):
    """The node agents' loop: sample every PORTAL_SAMPLE_SECONDS until stopped."""

    async def run():
        while not stop.is_set():
            for name in names:
                await database_sync_to_async(telemetry.telemetry_sample_node)(node_name=name)
            try:
                await asyncio.wait_for(stop.wait(), timeout=django_settings.PORTAL_SAMPLE_SECONDS)
            except asyncio.TimeoutError:
                pass

    return asyncio.ensure_future(run())


async def test_team_member_gets_own_team_samples_within_two_intervals_and_nothing_else(
        redis_layer, fleet, team, other_team, member, outsider, allocate):
    node = fleet["tel-a"]
    ours = await database_sync_to_async(gpu_of)(node, 0)
    theirs = await database_sync_to_async(gpu_of)(node, 1)
    await database_sync_to_async(allocate)(team, member, gpu=ours)
    await database_sync_to_async(allocate)(other_team, outsider, gpu=theirs)

    mine = await _connect(member)
    assert (await _subscribe(mine, "team", team.slug))["type"] == "subscribed"
    other = await _connect(outsider)
    assert (await _subscribe(other, "team", other_team.slug))["type"] == "subscribed"

    stop = asyncio.Event()
    sampler = _sampler(stop, ["tel-a", "tel-b"])
    try:
        first = await _samples(mine, timeout=2 * django_settings.PORTAL_SAMPLE_SECONDS + 0.5)
        more = await _samples(mine, timeout=1.5)
        theirs_frames = await _samples(other, timeout=0.5)
    finally:
        stop.set()
        await sampler
    assert first, "no sample within two intervals"
    seen = {g["uuid"] for frame in first + more for item in frame["items"] for g in item["gpus"]}
    assert seen == {ours.uuid}
    items = [item for frame in first for item in frame["items"]]
    assert all(item["name"] == "tel-a" and item["simulated"] for item in items)
    assert all(g["team"] == team.pk and 0 <= g["u"] <= 1 and g["mt"] == 80 * 2**30 for item in items for g in item["gpus"])
    assert {g["uuid"] for frame in theirs_frames for item in frame["items"] for g in item["gpus"]} <= {theirs.uuid}
    await mine.disconnect()
    await other.disconnect()


async def test_forbidden_subscriptions_are_refused_and_audited(redis_layer, fleet, team, other_team, member, outsider, allocate):
    theirs = await database_sync_to_async(gpu_of)(fleet["tel-a"], 1)
    await database_sync_to_async(allocate)(other_team, outsider, gpu=theirs)
    before = await database_sync_to_async(AuditEvent.objects.count)()
    ws = await _connect(member)
    for target, ident in [("team", other_team.slug), ("gpu", theirs.uuid), ("fleet", ""), ("node", str(fleet["tel-a"].pk)),
                          ("team", "no-such-team"), ("bogus", "x")]:
        reply = await _subscribe(ws, target, ident)
        assert reply["type"] == "refused", (target, reply)
    # nothing is delivered from the refused groups
    stop = asyncio.Event()
    sampler = _sampler(stop, ["tel-a"])
    try:
        assert await _samples(ws, timeout=1.5) == []
    finally:
        stop.set()
        await sampler
    await ws.disconnect()
    denied = await database_sync_to_async(list)(
        AuditEvent.objects.filter(action="telemetry.subscribe").order_by("id").values("outcome", "actor_id", "target_type", "team_id"))
    assert len(denied) == 6
    assert await database_sync_to_async(AuditEvent.objects.count)() == before + 6
    assert all(d["outcome"] == "denied" and d["actor_id"] == member.pk for d in denied)
    assert denied[0]["team_id"] == other_team.pk and denied[1]["target_type"] == "scheduler.gpudevice"
    assert (await database_sync_to_async(audit_chain_verify)()).ok


async def test_member_may_watch_a_gpu_their_team_holds_and_staff_the_fleet(redis_layer, fleet, team, member, auditor, allocate):
    ours = await database_sync_to_async(gpu_of)(fleet["tel-a"], 2)
    await database_sync_to_async(allocate)(team, member, gpu=ours)
    ws = await _connect(member)
    assert (await _subscribe(ws, "gpu", ours.uuid))["type"] == "subscribed"
    staff = await _connect(auditor)
    assert (await _subscribe(staff, "fleet", ""))["type"] == "subscribed"
    assert (await _subscribe(staff, "node", str(fleet["tel-b"].pk)))["type"] == "subscribed"
    await database_sync_to_async(telemetry.telemetry_sample_node)(node_name="tel-a")
    frames = await _samples(ws, timeout=1.0)
    assert {g["uuid"] for f in frames for i in f["items"] for g in i["gpus"]} == {ours.uuid}
    fleet_frames = await _samples(staff, timeout=1.0)
    assert {g["i"] for f in fleet_frames for i in f["items"] for g in i["gpus"]} == {0, 1, 2, 3}
    await ws.disconnect()
    await staff.disconnect()


async def test_anonymous_socket_is_closed(redis_layer, fleet):
    from django.contrib.auth.models import AnonymousUser

    communicator = WebsocketCommunicator(TelemetryConsumer.as_asgi(), "/ws/telemetry/")
    communicator.scope["user"] = AnonymousUser()
    connected, code = await communicator.connect()
    assert not connected and code == 4401


async def test_session_authenticated_socket_through_the_full_asgi_stack(redis_layer, fleet, platform_admin, client):
    """The real application: session cookie, origin check, URL routing."""
    from portal.asgi import application

    await sync_to_async(client.force_login)(platform_admin)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    communicator = WebsocketCommunicator(application, "/ws/telemetry/",
                                         headers=[(b"cookie", cookie.encode()), (b"origin", b"http://testserver"), (b"host", b"testserver")])
    connected, _ = await communicator.connect()
    assert connected
    assert (await _subscribe(communicator, "fleet", ""))["type"] == "subscribed"
    await database_sync_to_async(telemetry.telemetry_sample_node)(node_name="tel-b")
    frames = await _samples(communicator, timeout=1.0)
    assert frames and frames[0]["items"][0]["name"] == "tel-b"
    await communicator.disconnect()

    stranger = WebsocketCommunicator(application, "/ws/telemetry/", headers=[(b"origin", b"http://evil.example")])
    connected, _ = await stranger.connect()
    assert not connected


async def test_pause_stops_delivery_and_resume_restarts_it(redis_layer, fleet, auditor):
    ws = await _connect(auditor)
    await _subscribe(ws, "fleet", "")
    await ws.send_json_to({"action": "pause"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "paused"
    await database_sync_to_async(telemetry.telemetry_sample_node)(node_name="tel-a")
    assert await _samples(ws, timeout=0.8) == []
    await ws.send_json_to({"action": "resume"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "resumed"
    await database_sync_to_async(telemetry.telemetry_sample_node)(node_name="tel-a")
    assert len(await _samples(ws, timeout=1.0)) == 1
    await ws.disconnect()


async def test_rate_batches_points_into_fewer_frames(redis_layer, fleet, auditor):
    ws = await _connect(auditor)
    await _subscribe(ws, "fleet", "")
    await ws.send_json_to({"action": "rate", "seconds": 1.5})
    assert (await ws.receive_json_from(timeout=5)) == {"type": "rate", "seconds": 1.5}
    await database_sync_to_async(telemetry.telemetry_sample_node)(node_name="tel-a")
    first = await _samples(ws, timeout=0.5)  # the first frame goes at once
    for name in ["tel-a", "tel-b", "tel-a"]:
        await database_sync_to_async(telemetry.telemetry_sample_node)(node_name=name)
    later = await _samples(ws, timeout=2.5)
    assert len(first) == 1
    assert len(later) == 1 and len(later[0]["items"]) == 3  # three node messages in one frame
    await ws.send_json_to({"action": "rate", "seconds": "fast"})
    assert (await ws.receive_json_from(timeout=5))["type"] == "error"
    await ws.send_to(text_data="{not json")
    assert (await ws.receive_json_from(timeout=5)) == {"type": "error", "reason": "unknown action"}
    await ws.disconnect()


async def test_slow_client_queue_is_bounded_and_drops_oldest(redis_layer, fleet, auditor):
    """A client that never reads: its queue stops at QUEUE_MAX and counts what it dropped."""
    consumer = TelemetryConsumer()
    consumer.paused = False
    consumer.staff = True
    consumer.team_ids = set()
    consumer.queue = __import__("collections").deque(maxlen=TelemetryConsumer.QUEUE_MAX)
    consumer.dropped = 0
    consumer.wake = asyncio.Event()
    consumer.last_check = time.monotonic()
    for n in range(TelemetryConsumer.QUEUE_MAX + 50):
        consumer.deliver({"type": "telemetry.sample", "node": 1, "name": "n", "ts": float(n), "gpus": [{"uuid": "GPU-x", "team": None}]})
    assert len(consumer.queue) == TelemetryConsumer.QUEUE_MAX
    assert consumer.dropped == 50
    assert consumer.queue[0][0]["ts"] == 50.0  # the oldest went first


async def test_too_many_refusals_close_the_socket(redis_layer, fleet, member):
    ws = await _connect(member)
    for _ in range(TelemetryConsumer.MAX_REFUSALS):
        await ws.send_json_to({"action": "subscribe", "target": "fleet", "id": ""})
        assert (await ws.receive_json_from(timeout=5))["type"] == "refused"
    output = await ws.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": 4403}


async def test_released_gpu_subscription_is_revoked_on_recheck(redis_layer, fleet, team, member, allocate):
    gpu = await database_sync_to_async(gpu_of)(fleet["tel-a"], 3)
    allocation = await database_sync_to_async(allocate)(team, member, gpu=gpu)
    ws = await _connect(member)
    assert (await _subscribe(ws, "gpu", gpu.uuid))["type"] == "subscribed"
    from django.utils import timezone

    allocation.released_at = timezone.now()
    await database_sync_to_async(allocation.save)()
    original = TelemetryConsumer.RECHECK_SECONDS
    TelemetryConsumer.RECHECK_SECONDS = 0.0
    try:
        await database_sync_to_async(telemetry.telemetry_sample_node)(node_name="tel-a")
        msg = await ws.receive_json_from(timeout=5)
    finally:
        TelemetryConsumer.RECHECK_SECONDS = original
    assert msg == {"type": "revoked", "target": "gpu", "id": gpu.uuid}
    await ws.disconnect()


async def test_one_channel_layer_membership_per_process_however_many_sockets(redis_layer, fleet, auditor, platform_admin):
    """Two sockets on `fleet`: the process's hub is the group's only member and feeds both; when
    both leave, the hub leaves the group and stops listening."""
    from channels.layers import get_channel_layer

    from scheduler.consumers import hub

    first, second = await _connect(auditor), await _connect(platform_admin)
    await _subscribe(first, "fleet", "")
    await _subscribe(second, "fleet", "")
    layer = get_channel_layer()
    members = await layer.connection(layer.consistent_hash("fleet")).zrange(layer._group_key("fleet"), 0, -1)
    assert len(members) == 1 and members[0].decode() == hub().channel
    await database_sync_to_async(telemetry.telemetry_sample_node)(node_name="tel-b")
    assert len(await _samples(first, timeout=1.0)) == 1
    assert len(await _samples(second, timeout=0.5)) == 1
    await first.disconnect()
    await second.disconnect()
    assert "fleet" not in hub().members and hub().task is None
    assert await layer.connection(layer.consistent_hash("fleet")).zrange(layer._group_key("fleet"), 0, -1) == []


async def test_embedded_layer_delivers_samples_published_from_another_thread(fleet, team, member, allocate):
    """Embedded mode: the in-process channel layer, and the sampler on a thread of its own (the
    in-process beat), not on the server's event loop. Samples still reach the socket promptly."""
    import threading

    channel_layers.backends = {}  # the suite's default: InMemoryChannelLayer
    node = fleet["tel-a"]
    ours = await database_sync_to_async(gpu_of)(node, 0)
    await database_sync_to_async(allocate)(team, member, gpu=ours)
    mine = await _connect(member)
    assert (await _subscribe(mine, "team", team.slug))["type"] == "subscribed"

    errors = []

    def beat_thread():
        try:
            telemetry.telemetry_sample_node(node_name="tel-a")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    thread = threading.Thread(target=beat_thread)
    thread.start()
    # Wait on the socket's output alone, with nothing else to wake this loop: a message the layer
    # took on another thread's loop would sit unnoticed until the timeout.
    frames = []
    deadline = time.monotonic() + 2 * django_settings.PORTAL_SAMPLE_SECONDS + 0.5
    while not frames and (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(mine.output_queue.get(), timeout=left)
        except asyncio.TimeoutError:
            break
        if message["type"] == "websocket.send" and '"samples"' in message.get("text", ""):
            frames.append(json.loads(message["text"]))
    await asyncio.to_thread(thread.join, 10)
    assert not errors, errors
    assert frames, "a sample published from the beat thread did not reach the socket within two intervals"
    assert {g["uuid"] for frame in frames for item in frame["items"] for g in item["gpus"]} == {ours.uuid}
    await mine.disconnect()
    channel_layers.backends = {}
