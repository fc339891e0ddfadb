"""The live-telemetry websocket: one per page (/ws/telemetry/). Dumb by design: it authenticates,
asks the access layer, joins channel-layer groups and forwards what producers send.

Client -> server (JSON):
    {"action": "subscribe", "target": "gpu"|"team"|"node"|"fleet", "id": <uuid|team slug|node id>}
    {"action": "unsubscribe", "target": ..., "id": ...}
    {"action": "pause"} / {"action": "resume"}
    {"action": "rate", "seconds": 0..60}        at most one frame per `seconds` (0: as they come)
Server -> client:
    {"type": "subscribed"|"unsubscribed"|"refused"|"revoked", "target", "id", "reason"?}
    {"type": "samples", "items": [{"node", "name", "ts", "simulated", "gpus": [...]}, ...], "dropped": n}

Fan-out: producers `group_send` to the channel layer's groups (`gpu.<uuid>`, `node.<id>`,
`team.<id>`, `fleet`). Each server process joins a group ONCE, through its `GroupHub`, and hands
every message to its local subscribers in memory: a message reaches a thousand sockets with one
channel-layer receive and one JSON encoding, instead of a thousand of each.

A slow client never slows the others or grows memory: the hub only appends to the connection's
bounded queue (oldest points dropped first), and the connection's own task sends at the client's
pace. The channel layer's per-channel capacity bounds what waits in Redis.
"""

import asyncio
import collections
import json
import logging
import re
import time
import weakref

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from asgiref.sync import sync_to_async

from governance.access import can, forget_roles, is_platform_staff, team_roles
from scheduler import metrics, telemetry
from scheduler.telemetry_access import gpu_holder_team_ids  # noqa: F401 - registers the telemetry perms

log = logging.getLogger(__name__)
UUID_RE = re.compile(r"^(GPU|MIG)-[A-Za-z0-9-]{1,76}$")
SLUG_RE = re.compile(r"^[a-z0-9-]{1,50}$")


class GroupHub:
    """This process's one member of each telemetry group it needs (per event loop and channel
    layer). Memberships are refreshed well within the layer's group expiry, so a page left open
    for a day keeps its stream."""

    REFRESH_SECONDS = 60.0

    def __init__(self, layer):
        self.layer = layer
        self.channel: str | None = None
        self.members: dict[str, set] = {}
        self.task: asyncio.Task | None = None
        self.refresher: asyncio.Task | None = None

    async def join(self, group: str, consumer) -> None:
        if self.channel is None:
            self.channel = await self.layer.new_channel("telemetry-hub.")
        if group not in self.members:
            self.members[group] = set()
            await self.layer.group_add(group, self.channel)
        self.members[group].add(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._receive_loop())
            self.refresher = asyncio.ensure_future(self._refresh_loop())

    async def leave(self, group: str, consumer) -> None:
        members = self.members.get(group)
        if members is None:
            return
        members.discard(consumer)
        if not members:
            del self.members[group]
            await self.layer.group_discard(group, self.channel)
        if not self.members and self.task is not None:
            self.task.cancel()  # nothing to forward: stop listening (channels_redis cancels cleanly)
            self.refresher.cancel()
            self.task = None

    async def _refresh(self) -> None:
        for group in list(self.members):
            await self.layer.group_add(group, self.channel)

    async def _refresh_loop(self) -> None:
        """Re-join every group well within the layer's group expiry, messages or not."""
        while True:
            await asyncio.sleep(self.REFRESH_SECONDS)
            try:
                await self._refresh()
            except Exception:  # noqa: BLE001 - the next round retries
                log.exception("telemetry hub: refreshing group memberships failed")

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
                for consumer in list(self.members.get(message.get("group"), ())):
                    consumer.deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a Redis blip: wait, re-join, go on
                log.exception("telemetry hub: receive failed")
                await asyncio.sleep(1.0)
                try:
                    await self._refresh()
                except Exception:  # noqa: BLE001
                    pass


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, GroupHub]]" = weakref.WeakKeyDictionary()


def hub_loop_for(layer) -> asyncio.AbstractEventLoop | None:
    """A running event loop whose hub listens on `layer`. The in-process (embedded) layer's queues
    belong to that loop: a producer on another thread must send from there, or the listener only
    notices the message the next time its loop happens to wake."""
    for loop, per_loop in list(_hubs.items()):
        hub_ = per_loop.get(id(layer))
        if hub_ is not None and hub_.layer is layer and loop.is_running() and not loop.is_closed():
            return loop
    return None


def hub() -> GroupHub:
    """The hub of the running event loop for the current channel layer."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    per_loop = _hubs.setdefault(asyncio.get_running_loop(), {})
    if id(layer) not in per_loop or per_loop[id(layer)].layer is not layer:
        per_loop[id(layer)] = GroupHub(layer)
    return per_loop[id(layer)]


class TelemetryConsumer(AsyncJsonWebsocketConsumer):
    # No channel of its own: the process's GroupHub receives for every connection (see above).
    channel_layer_alias = "telemetry-hub-only"
    QUEUE_MAX = 120  # node messages kept for a slow client (2 minutes of one node at 1 Hz)
    MAX_SUBSCRIPTIONS = 64
    MAX_REFUSALS = 20  # then the socket is closed: refusals are audited, so they must not be free
    RECHECK_SECONDS = 30.0  # roles and allocations change: subscriptions are re-authorized this often
    MAX_INTERVAL = 60.0

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=4401)
            return
        self.user = user
        self.subs: dict[str, tuple[str, str]] = {}  # group -> (target, id)
        self.queue: collections.deque = collections.deque(maxlen=self.QUEUE_MAX)
        self.dropped = 0
        self.refusals = 0
        self.paused = False
        self.interval = 0.0
        self.wake = asyncio.Event()
        self.last_check = time.monotonic()
        self.staff, self.team_ids = await database_sync_to_async(self._roles)()
        await self.accept()
        self.counted = True
        await sync_to_async(metrics.ws_clients_change, thread_sensitive=False)(1)
        self.sender = asyncio.create_task(self._send_loop())

    async def disconnect(self, code):
        if not hasattr(self, "subs"):
            return
        for group in list(self.subs):
            await hub().leave(group, self)
        sender = getattr(self, "sender", None)
        if sender is not None:
            sender.cancel()
        if getattr(self, "counted", False):
            self.counted = False
            await sync_to_async(metrics.ws_clients_change, thread_sensitive=False)(-1)

    # --- client messages ---

    @classmethod
    async def decode_json(cls, text_data):
        """Bad JSON is answered like an unknown action, not by dropping the connection."""
        try:
            return json.loads(text_data)
        except ValueError:
            return None

    async def receive_json(self, content, **kwargs):
        action = content.get("action") if isinstance(content, dict) else None
        if action == "subscribe":
            await self._subscribe(content.get("target"), content.get("id"))
        elif action == "unsubscribe":
            await self._unsubscribe(content.get("target"), content.get("id"))
        elif action == "pause":
            self.paused = True
            self.queue.clear()
            await self.send_json({"type": "paused"})
        elif action == "resume":
            self.paused = False
            await self.send_json({"type": "resumed"})
        elif action == "rate":
            try:
                seconds = float(content.get("seconds"))
            except (TypeError, ValueError):
                await self.send_json({"type": "error", "reason": "rate needs a number of seconds"})
                return
            if seconds != seconds:  # NaN
                seconds = 0.0
            self.interval = min(max(seconds, 0.0), self.MAX_INTERVAL)
            await self.send_json({"type": "rate", "seconds": self.interval})
        else:
            await self.send_json({"type": "error", "reason": "unknown action"})

    async def _subscribe(self, target, ident):
        ident = "" if ident is None else str(ident)
        if len(self.subs) >= self.MAX_SUBSCRIPTIONS:
            await self.send_json({"type": "refused", "target": target, "id": ident, "reason": "too many subscriptions"})
            return
        group = await database_sync_to_async(self._authorize)(target, ident, True)
        if group is None:
            self.refusals += 1
            await self.send_json({"type": "refused", "target": target, "id": ident, "reason": "not allowed"})
            if self.refusals >= self.MAX_REFUSALS:
                await self.close(code=4403)
            return
        if group not in self.subs:
            await hub().join(group, self)
            self.subs[group] = (target, ident)
        await self.send_json({"type": "subscribed", "target": target, "id": ident})

    async def _unsubscribe(self, target, ident):
        ident = "" if ident is None else str(ident)
        for group, sub in list(self.subs.items()):
            if sub == (target, ident):
                await hub().leave(group, self)
                del self.subs[group]
        await self.send_json({"type": "unsubscribed", "target": target, "id": ident})

    # --- producer messages ---

    def deliver(self, event):
        """Called by the hub for each message of a group this connection joined. Never blocks."""
        if time.monotonic() - self.last_check > self.RECHECK_SECONDS:
            self.wake.set()  # let the sender re-check access even if nothing below is for us
        if self.paused:
            return
        filtered = None
        if not self.staff:
            # defence in depth: whatever group it came through, a team member sees only the
            # devices their teams hold
            filtered = [g for g in event["gpus"] if g.get("team") in self.team_ids]
            if not filtered:
                return
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append((event, filtered))
        self.wake.set()

    async def _send_loop(self):
        last_sent = 0.0
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.interval:
                delay = last_sent + self.interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.monotonic() - self.last_check > self.RECHECK_SECONDS:
                await self._recheck()
            if self.paused or not self.queue:
                continue
            batch = list(self.queue)
            self.queue.clear()
            dropped, self.dropped = self.dropped, 0
            await self.send(text_data=_frame(batch, dropped))
            last_sent = time.monotonic()

    async def _recheck(self):
        """Drop subscriptions the user no longer may have (left the team, GPU released)."""
        self.last_check = time.monotonic()
        self.staff, self.team_ids = await database_sync_to_async(self._roles)()
        for group, (target, ident) in list(self.subs.items()):
            if await database_sync_to_async(self._authorize)(target, ident, False) != group:
                await hub().leave(group, self)
                del self.subs[group]
                self.queue.clear()
                await self.send_json({"type": "revoked", "target": target, "id": ident})

    # --- access (sync, in a thread) ---

    def _roles(self) -> tuple[bool, set[int]]:
        forget_roles(self.user)
        return bool(is_platform_staff(self.user)), set(team_roles(self.user))

    def _authorize(self, target, ident: str, audit: bool) -> str | None:
        """The group to join, or None (and the refusal audited) when the roles do not allow it."""
        from governance.audit import audit_denied
        from governance.models import Team
        from scheduler.models import GpuDevice, Node

        user = self.user
        team = None
        if target == "fleet":
            allowed, group, target_type = can(user, "telemetry.view_fleet"), telemetry.GROUP_FLEET, "fleet"
        elif target == "node" and ident.isdigit():
            node = Node.objects.filter(pk=int(ident)).first()
            allowed = node is not None and can(user, "telemetry.view_node", node)
            group, target_type = telemetry.group_node(int(ident)), "scheduler.node"
        elif target == "team" and SLUG_RE.match(ident):
            team = Team.objects.filter(slug=ident).first()
            allowed = team is not None and can(user, "telemetry.view_team", team)
            group, target_type = (telemetry.group_team(team.pk) if team else ""), "governance.team"
        elif target == "gpu" and UUID_RE.match(ident):
            gpu = GpuDevice.objects.filter(uuid=ident).first()
            allowed = gpu is not None and can(user, "telemetry.view_gpu", gpu)
            group, target_type = telemetry.group_gpu(ident), "scheduler.gpudevice"
        else:
            allowed, group, target_type = False, "", "telemetry"
        if allowed:
            return group
        if audit:
            audit_denied(action="telemetry.subscribe", actor=user, target_type=target_type, target_id=ident[:64],
                         team=team, reason=f"may not watch {str(target)[:20]} {ident[:80]}")
        return None


def _item(event: dict, gpus: list | None) -> dict:
    return {"node": event["node"], "name": event["name"], "ts": event["ts"], "simulated": event.get("simulated", False),
            "gpus": event["gpus"] if gpus is None else gpus}


def _frame(batch: list[tuple[dict, list | None]], dropped: int) -> str:
    """The JSON frame for a batch. The common case (one unfiltered message, nothing dropped) is
    encoded once per process and shared by every connection that forwards it: the channel layer
    hands the same message object to all of this process's subscribers of a group."""
    if len(batch) == 1 and batch[0][1] is None and not dropped:
        event = batch[0][0]
        frame = event.get(_FRAME_KEY)
        if frame is None:
            frame = event[_FRAME_KEY] = json.dumps({"type": "samples", "items": [_item(event, None)], "dropped": 0})
        return frame
    return json.dumps({"type": "samples", "items": [_item(e, g) for e, g in batch], "dropped": dropped})


_FRAME_KEY = "_portal_frame"
