"""Real JupyterLab, launched by the local launcher through the real lifecycle, reached through the
portal's real ASGI application (uvicorn on a free port): HTTP and websockets, who gets in, and the
lab token never reaching the browser."""

import asyncio
import datetime
import json
import os
import signal
import uuid

import httpx
import pytest
import websockets

from governance.models import AuditEvent, Role
from scheduler.models import AllocationRequest
from tests.factories import MembershipFactory, UserFactory, make_token
from tests.workspaces.lifecycle_support import (fleet, h100_quota, lab_image, live_devices, portal_server,  # noqa: F401
                                                session_cookie, stop_labs)
from workspaces import services
from workspaces.launchers.local import parse_handle
from workspaces.models import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def running(member, team, fleet, h100_quota, lab_image, portal_server, stop_labs):
    """A workspace taken all the way to running: create -> pass (eager) -> placed -> start -> ready."""
    workspace = services.workspace_create(user=member, team=team, image=lab_image, gpu_count=2, flavor="H100",
                                          duration=datetime.timedelta(hours=1), name="proxy-test")
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.RUNNING, workspace.error
    return workspace


def _client(server, user=None):
    cookies = session_cookie(user) if user else {}
    return httpx.Client(base_url=f"http://{server}", cookies=cookies, trust_env=False, timeout=30)


async def _run_code(server, workspace, cookies, code: str) -> str:
    """Create a kernel over the proxied REST API, execute `code` over the proxied kernel websocket."""
    async with httpx.AsyncClient(base_url=f"http://{server}", cookies=cookies, trust_env=False, timeout=30) as http:
        response = await http.post(f"/w/{workspace.pk}/api/kernels", json={"name": "python3"},
                                   headers={"Origin": f"http://{server}"})
        assert response.status_code == 201, response.text
        kernel_id = response.json()["id"]
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    url = f"ws://{server}/w/{workspace.pk}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": f"http://{server}"},
                                  max_size=None) as ws:
        msg_id = uuid.uuid4().hex
        await ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False},
        }))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "execute_result":
                return message["content"]["data"]["text/plain"]
            if message["msg_type"] == "error":
                raise AssertionError(message["content"])


async def _terminal_echo(server, workspace, cookies) -> str:
    """Open a terminal over the proxied REST API and run a command over its proxied websocket."""
    async with httpx.AsyncClient(base_url=f"http://{server}", cookies=cookies, trust_env=False, timeout=30) as http:
        response = await http.post(f"/w/{workspace.pk}/api/terminals", headers={"Origin": f"http://{server}"})
        assert response.status_code == 200, response.text
        name = response.json()["name"]
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with websockets.connect(f"ws://{server}/w/{workspace.pk}/terminals/websocket/{name}",
                                  additional_headers={"Cookie": cookie, "Origin": f"http://{server}"}) as ws:
        await ws.send(json.dumps(["stdin", "echo proxied-$((6*7))\r"]))
        seen = ""
        while "proxied-42" not in seen:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if message[0] == "stdout":
                seen += message[1]
        return seen


def test_kernel_runs_over_the_proxied_websocket_and_files_round_trip(running, member, portal_server):
    server, workspace = portal_server, running
    cookies = session_cookie(member)
    assert asyncio.run(_run_code(server, workspace, cookies, "1+1")) == "2"
    assert "proxied-42" in asyncio.run(_terminal_echo(server, workspace, cookies))

    with _client(server, member) as http:
        # The lab's page: served through the proxy, without the lab's token anywhere in it.
        page = http.get(f"/w/{workspace.pk}/lab", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "JupyterLab" in page.text
        assert workspace.lab_token not in page.text
        assert all(workspace.lab_token not in v for v in page.headers.values())
        # Upload (1 MiB, base64 through the contents API) and read back.
        payload = os.urandom(1024 * 1024)
        import base64

        put = http.put(f"/w/{workspace.pk}/api/contents/data.bin", headers={"Origin": f"http://{server}"},
                       json={"type": "file", "format": "base64", "content": base64.b64encode(payload).decode()})
        assert put.status_code in (200, 201), put.text
        got = http.get(f"/w/{workspace.pk}/files/data.bin")
        assert got.status_code == 200 and got.content == payload
        text = http.put(f"/w/{workspace.pk}/api/contents/hello.txt", headers={"Origin": f"http://{server}"},
                        json={"type": "file", "format": "text", "content": "hello through the proxy"})
        assert text.status_code in (200, 201)
        back = http.get(f"/w/{workspace.pk}/api/contents/hello.txt", params={"content": 1})
        assert back.json()["content"] == "hello through the proxy"
        # The file is in the user's volume on disk (kept after stop).
        from workspaces.launchers.local import _root

        assert (_root() / "vision" / member.username / "hello.txt").read_text() == "hello through the proxy"
        # A cross-site POST riding on the session cookie is refused by the proxy.
        evil = http.post(f"/w/{workspace.pk}/api/kernels", json={}, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403


def test_only_the_owner_shared_team_members_and_audited_admins_get_in(running, member, team, outsider, platform_admin,
                                                                       portal_server):
    server, workspace = portal_server, running
    colleague = UserFactory(username="cora-colleague")
    MembershipFactory(team=team, user=colleague, role=Role.MEMBER)
    path = f"/w/{workspace.pk}/api/status"
    with _client(server) as anonymous:
        page = anonymous.get(f"/w/{workspace.pk}/lab", headers={"Accept": "text/html"})
        assert page.status_code == 302 and "/login" in page.headers["location"]
        assert anonymous.get(path).status_code == 404
    with _client(server, outsider) as http:
        assert http.get(path).status_code == 404
    with _client(server, colleague) as http:
        assert http.get(path).status_code == 404  # private workspace: not even its team
    services.workspace_update_sharing(workspace=workspace, actor=member, sharing=Workspace.Sharing.TEAM)
    with _client(server, colleague) as http:
        assert http.get(path).status_code == 200
    with _client(server, platform_admin) as http:
        assert http.get(path).status_code == 200
    assert AuditEvent.objects.filter(action="workspace.support_access", actor_id=platform_admin.pk,
                                     target_id=str(workspace.pk)).count() == 1
    assert not AuditEvent.objects.filter(action="workspace.support_access", actor_id=member.pk).exists()

    cookie = "; ".join(f"{k}={v}" for k, v in session_cookie(outsider).items())

    async def outsider_socket():
        with pytest.raises(websockets.InvalidStatus):
            async with websockets.connect(f"ws://{server}/w/{workspace.pk}/api/events/subscribe",
                                          additional_headers={"Cookie": cookie, "Origin": f"http://{server}"}):
                pass

    asyncio.run(outsider_socket())


def test_a_lab_killed_by_hand_fails_the_workspace_and_frees_its_gpus(running, member, portal_server):
    server, workspace = portal_server, running
    pid, _ = parse_handle(workspace.handle)
    os.killpg(pid, signal.SIGKILL)
    with _client(server, member) as http:
        for _ in range(100):
            response = http.get(f"/w/{workspace.pk}/api/status")
            if response.status_code != 200:
                break
        assert response.status_code == 502
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.FAILED and "stopped unexpectedly" in workspace.error
    assert live_devices(workspace) == 0
    assert workspace.allocation_request.state == AllocationRequest.State.FINISHED
    with _client(server, member) as http:
        assert http.get(f"/w/{workspace.pk}/api/status").status_code == 503


def test_stop_from_the_api_ends_the_lab_and_keeps_its_files(running, member, portal_server):
    server, workspace = portal_server, running
    from workspaces.launchers.local import LocalLauncher

    with _client(server, member) as http:
        http.put(f"/w/{workspace.pk}/api/contents/keep.txt", headers={"Origin": f"http://{server}"},
                 json={"type": "file", "format": "text", "content": "kept"})
        token = make_token(member)[1]
        response = http.post(f"/api/v1/workspaces/{workspace.pk}/stop/", json={},
                             headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED
    assert LocalLauncher().status(workspace.handle).state != "running"
    assert live_devices(workspace) == 0
    from workspaces.launchers.local import _root

    assert (_root() / "vision" / member.username / "keep.txt").read_text() == "kept"
