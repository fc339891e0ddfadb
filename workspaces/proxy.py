"""The authenticated proxy to a workspace's JupyterLab, at the ASGI level (portal/asgi.py sends
every HTTP request under /w/ here; websockets go to workspaces.consumers.LabSocketConsumer).

- Who: the session's user must pass `workspace.enter` (workspaces.access); anyone else gets 404
  (an anonymous page load is sent to the login page). Platform admins entering someone else's lab
  are audited as support access.
- The lab's token is added here (`Authorization: token ...`) and never reaches the browser: the
  browser's own Authorization header is dropped, and the token is blanked out of every text
  response (JupyterLab writes it into its page config).
- Token-authenticated requests skip Jupyter's own XSRF check, so the proxy checks the browser's
  Origin/Referer on unsafe methods itself (the portal's session cookie would otherwise make a
  cross-site POST count).
- Bodies stream both ways (uploads and downloads of any size); the upstream Host is the lab's own
  address, so the lab's host and origin checks see a local client.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import aiohttp
from channels.db import database_sync_to_async
from django.conf import settings

PATH_RE = re.compile(r"^/w/(?P<id>\d+)(?P<rest>/.*)?$")
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"host", b"content-length",
}
DROP_REQUEST = HOP_BY_HOP | {b"authorization", b"origin", b"referer", b"cookie", b"accept-encoding", b"x-forwarded-for",
                             b"x-forwarded-proto", b"x-forwarded-host"}
TEXT_TYPES = (b"text/", b"application/json", b"application/javascript", b"application/x-ipynb+json", b"image/svg+xml")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
ACCESS_TTL_S = 2.0  # how long an access decision is reused for one session and workspace


@dataclass(frozen=True)
class Upstream:
    workspace_id: int
    host: str
    port: int
    token: str

    def url(self, path: str, query: bytes) -> str:
        return f"http://{self.host}:{self.port}{path}" + (f"?{query.decode('latin-1')}" if query else "")


@dataclass(frozen=True)
class Decision:
    status: int  # 200: go ahead; 404 not allowed (or no such workspace); 503 not running
    upstream: Upstream | None = None
    state: str = ""
    anonymous: bool = False


_decisions: dict[tuple[str, int], tuple[float, Decision]] = {}


def decide_access(user, workspace_id: int) -> Decision:
    """Sync (runs in a thread): may `user` enter this workspace's lab now, and where is it?"""
    from django.core.cache import cache

    from workspaces.access import is_support_access, workspace_enterable
    from workspaces.models import Workspace
    from workspaces.services import workspace_note_support_access

    if not getattr(user, "is_authenticated", False):
        return Decision(404, anonymous=True)
    workspace = Workspace.objects.select_related("team", "owner").filter(pk=workspace_id).first()
    if workspace is None or not workspace_enterable(user, workspace):
        return Decision(404)
    if workspace.state != Workspace.State.RUNNING or not workspace.port:
        return Decision(503, state=workspace.state)
    if is_support_access(user, workspace) and cache.add(f"ws-support:{user.pk}:{workspace.pk}", 1, 3600):
        workspace_note_support_access(workspace=workspace, actor=user)
    return Decision(200, Upstream(workspace.pk, workspace.host or "127.0.0.1", workspace.port, workspace.lab_token))


def _session_key(scope) -> str:
    raw = _header(scope, b"cookie")
    if not raw:
        return ""
    name = settings.SESSION_COOKIE_NAME
    for part in raw.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip()
    return ""


def _decide_for_session(session_key: str, workspace_id: int) -> Decision:
    """Sync: the session's user (as django.contrib.auth resolves it, session hash checked), then decide_access."""
    from importlib import import_module
    from types import SimpleNamespace

    from django.contrib.auth import get_user
    from django.contrib.auth.models import AnonymousUser

    user = AnonymousUser()
    if session_key:
        store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        user = get_user(SimpleNamespace(session=store))
    return decide_access(user, workspace_id)


async def access_for_scope(scope, workspace_id: int) -> Decision:
    """decide_access for the session in the request's cookie, reused for ACCESS_TTL_S (a lab page
    load makes dozens of requests; each would otherwise load the session and the user again)."""
    session_key = _session_key(scope)
    key = (session_key, workspace_id)
    now = time.monotonic()
    if session_key:
        cached = _decisions.get(key)
        if cached and cached[0] > now:
            return cached[1]
    decision = await database_sync_to_async(_decide_for_session)(session_key, workspace_id)
    if session_key and decision.status == 200:
        if len(_decisions) > 10000:
            _decisions.clear()
        _decisions[key] = (now + ACCESS_TTL_S, decision)
    return decision


def check_instance(workspace_id: int) -> None:
    """Ask the workspace's node whether its lab still lives (a dead one fails the workspace)."""
    from portal.tasks import node_queue, send_now
    from workspaces.models import Workspace
    from workspaces.tasks import workspace_check

    node = Workspace.objects.filter(pk=workspace_id).values_list("node__name", flat=True).first()
    send_now(workspace_check, workspace_id, queue=node_queue(node) if node else None)


def forget_access(workspace_id: int) -> None:
    for key in [k for k in _decisions if k[1] == workspace_id]:
        _decisions.pop(key, None)


class TokenScrubber:
    """Blanks the lab token out of a byte stream, also where it straddles two chunks."""

    def __init__(self, token: str):
        self.token = token.encode()
        self.keep = len(self.token) - 1
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = (self.pending + chunk).replace(self.token, b"")
        if self.keep <= 0:
            self.pending = b""
            return data
        self.pending = data[-self.keep:]
        return data[:-self.keep]

    def flush(self) -> bytes:
        out, self.pending = self.pending, b""
        return out


_clients: dict[int, aiohttp.ClientSession] = {}


def _client() -> aiohttp.ClientSession:
    # One pooled session per event loop (uvicorn/daphne run one loop per worker). aiohttp rather
    # than httpx: the proxy sits on every lab request, and aiohttp costs a fraction of the CPU.
    loop = asyncio.get_running_loop()
    client = _clients.get(id(loop))
    if client is None or client.closed:
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=500, limit_per_host=200, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False, trust_env=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        _clients[id(loop)] = client
    return client


async def close_lab_clients() -> None:
    """Close this event loop's pooled upstream session (ASGI lifespan shutdown)."""
    client = _clients.pop(id(asyncio.get_running_loop()), None)
    if client is not None and not client.closed:
        await client.close()


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


def _same_origin(scope) -> bool:
    """Unsafe methods must come from the portal's own pages (when the browser says where from)."""
    host = (_header(scope, b"host") or b"").decode("latin-1")
    trusted = {host, *(urlsplit(o).netloc for o in settings.CSRF_TRUSTED_ORIGINS)}
    origin = _header(scope, b"origin")
    if origin is not None:
        return origin != b"null" and urlsplit(origin.decode("latin-1")).netloc in trusted
    referer = _header(scope, b"referer")
    if referer is not None:
        return urlsplit(referer.decode("latin-1")).netloc in trusted
    return True  # not a browser (browsers send Origin on every cross-origin unsafe request)


async def _respond(send, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8",
                   extra: list | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _portal_cookie_names() -> set[str]:
    return {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}


def _filtered_cookie(scope) -> bytes | None:
    """The browser's cookies minus the portal's own (the lab must never see the portal session)."""
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    drop = _portal_cookie_names()
    kept = [part.strip() for part in raw.decode("latin-1").split(";")
            if part.strip() and part.split("=", 1)[0].strip() not in drop]
    return "; ".join(kept).encode("latin-1") if kept else None


class LabProxy:
    """ASGI app for HTTP under /w/<id>/."""

    async def __call__(self, scope, receive, send):
        match = PATH_RE.match(scope["path"])
        if not match:
            await _respond(send, 404, b"Not found.")
            return
        workspace_id = int(match["id"])
        rest = match["rest"] or ""
        decision = await access_for_scope(scope, workspace_id)
        if decision.status == 404:
            if decision.anonymous and scope["method"] in ("GET", "HEAD") and b"text/html" in (_header(scope, b"accept") or b""):
                from django.shortcuts import resolve_url

                login = resolve_url(settings.LOGIN_URL)
                target = f"{login}?next={quote(scope['path'])}"
                await _respond(send, 302, b"", extra=[(b"location", target.encode())])
            else:
                await _respond(send, 404, b'{"error": "not_found", "detail": "No such workspace."}', b"application/json")
            return
        if decision.status == 503:
            detail = f"This workspace is {decision.state}, not running. See /workspaces/{workspace_id}/."
            await _respond(send, 503, detail.encode(), extra=[(b"retry-after", b"2")])
            return
        if rest in ("", "/"):
            await _respond(send, 302, b"", extra=[(b"location", f"/w/{workspace_id}/lab".encode())])
            return
        if scope["method"] not in SAFE_METHODS and not _same_origin(scope):
            await _respond(send, 403, b'{"error": "cross_origin", "detail": "Cross-origin request refused."}',
                           b"application/json")
            return
        await self.forward(scope, receive, send, decision.upstream)

    async def forward(self, scope, receive, send, upstream: Upstream) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in DROP_REQUEST]
        cookie = _filtered_cookie(scope)
        if cookie:
            headers.append((b"cookie", cookie))
        headers.append((b"authorization", f"token {upstream.token}".encode()))
        headers.append((b"accept-encoding", b"identity"))  # so the token can be scrubbed from text bodies
        client_addr = scope.get("client") or ("", 0)
        headers.append((b"x-forwarded-for", (client_addr[0] or "").encode()))
        length = _header(scope, b"content-length")
        if length is not None:
            headers.append((b"content-length", length))
        has_body = (length not in (None, b"0")) or _header(scope, b"transfer-encoding") is not None
        body = _request_body(receive) if has_body else None
        url = upstream.url(scope["path"], scope.get("query_string", b""))
        try:
            response = await _client().request(
                scope["method"], url, headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers],
                data=body, allow_redirects=False, compress=None, chunked=None if length is not None or body is None else True,
            )
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError)):
                forget_access(upstream.workspace_id)
                await database_sync_to_async(check_instance)(upstream.workspace_id)
            await _respond(send, 502, f"The workspace's lab did not answer ({type(exc).__name__}).".encode())
            return
        try:
            content_type = (response.headers.get("Content-Type") or "").encode("latin-1")
            scrub = content_type.startswith(TEXT_TYPES)
            out_headers = []
            token = upstream.token.encode()
            for key, value in response.raw_headers:
                lower = key.lower()
                if lower in HOP_BY_HOP and not (lower == b"content-length" and not scrub):
                    continue
                if lower == b"set-cookie" and value.lower().startswith(b"username-"):
                    continue  # the lab's own login cookie: the portal is the only login
                if token and token in value:
                    value = value.replace(token, b"")
                out_headers.append((lower, value))
            await send({"type": "http.response.start", "status": response.status, "headers": out_headers})
            scrubber = TokenScrubber(upstream.token) if scrub and upstream.token else None
            async for chunk in response.content.iter_any():
                if scrubber:
                    chunk = scrubber.feed(chunk)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            tail = scrubber.flush() if scrubber else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        finally:
            response.release()


async def _request_body(receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


def lab_proxy_application():
    """The proxy reads the session cookie itself (workspaces.proxy.access_for_scope) and caches the
    decision briefly, instead of loading the session and user on every request."""
    return LabProxy()
