"""The websocket half of the lab proxy (kernels, terminals, events): authenticate from the session,
ask the access layer, connect to the lab with its token, then pump frames both ways. Dumb on purpose:
the same access decision as the HTTP proxy (workspaces.proxy.access_for_scope).

The browser's socket is accepted only once the lab accepted ours, with the subprotocol the lab
chose (JupyterLab's kernel protocol v1.kernel.websocket.jupyter.org), so both ends agree."""

import asyncio

import websockets
from channels.generic.websocket import AsyncWebsocketConsumer

from workspaces.proxy import access_for_scope


class LabSocketConsumer(AsyncWebsocketConsumer):
    # It joins no groups: no channel layer, so no Redis channel and no second receive loop per lab socket.
    channel_layer_alias = None
    upstream = None
    pump: asyncio.Task | None = None
    closed = False

    async def connect(self):
        kwargs = self.scope["url_route"]["kwargs"]
        decision = await access_for_scope(self.scope, int(kwargs["workspace_id"]))
        if decision.status != 200:
            # Refused before the handshake completes: the browser sees 403, learns nothing more.
            await self.close(code=4404 if decision.status == 404 else 4503)
            return
        upstream = decision.upstream
        query = self.scope.get("query_string", b"").decode("latin-1")
        url = f"ws://{upstream.host}:{upstream.port}{self.scope['path']}" + (f"?{query}" if query else "")
        try:
            self.upstream = await websockets.connect(
                url, additional_headers={"Authorization": f"token {upstream.token}"},
                subprotocols=self.scope.get("subprotocols") or None,
                max_size=None, compression=None, open_timeout=30, ping_interval=None,
            )
        except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
            await self.close(code=1011)
            return
        await self.accept(subprotocol=self.upstream.subprotocol)
        self.pump = asyncio.create_task(self._pump_from_lab())

    async def _pump_from_lab(self):
        try:
            async for message in self.upstream:
                if isinstance(message, str):
                    await self.send(text_data=message)
                else:
                    await self.send(bytes_data=message)
        except websockets.ConnectionClosed:
            pass
        if not self.closed:  # the lab ended it: end the browser's side too
            self.closed = True
            await self.close()

    async def receive(self, text_data=None, bytes_data=None):
        if self.upstream is None:
            return
        try:
            await self.upstream.send(text_data if text_data is not None else bytes_data)
        except websockets.ConnectionClosed:
            if not self.closed:
                self.closed = True
                await self.close()

    async def disconnect(self, code):
        self.closed = True
        if self.pump is not None:
            self.pump.cancel()
        if self.upstream is not None:
            await self.upstream.close()
