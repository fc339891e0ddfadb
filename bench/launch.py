#!/usr/bin/env python
"""Launch and proxy benchmark: what the portal adds on top of JupyterLab itself.

Measured in one run, against a baseline taken in the same run on the same machine:
- create-to-ready of a local-process workspace (workspace_create -> scheduling pass -> start task ->
  lab answering /api/status) vs starting the same `jupyter lab` by hand and polling it the same way:
  `launch_overhead_ratio` (goal <= 1.25);
- the same with the Docker launcher and the portal-lab:ci image vs `docker run` of that image by
  hand, when an engine and the image are here: `docker_launch_overhead_ratio` (goal <= 1.25);
- HTTP through the portal's authenticated proxy (a real uvicorn serving portal.asgi, session
  cookie) vs straight to the lab (token), 20 concurrent clients listing the home directory:
  `proxy_p50_ratio`, `proxy_p99_ratio` (goal <= 1.5);
- a kernel websocket round trip (kernel_info_request -> reply) through the proxy vs direct:
  `ws_rtt_overhead_ms`, the difference of medians (goal <= 2 ms).

It runs the embedded configuration in a temporary directory (its own SQLite file, tasks run in
process) so it touches no other database. Prints figures, then ONE final `key=value ...` line.
`--tiny` does one round of everything with a handful of requests: the test suite runs it only to
check that it works."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAB_IMAGE = "portal-lab:ci"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _configure(tmp: Path) -> None:
    """Embedded mode in `tmp`, before Django loads its settings."""
    for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
        os.environ.pop(key, None)
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_LOCAL_DIR": str(tmp),
        "SQLITE_PATH": str(tmp / "bench.sqlite3"),
        "PORTAL_WORKSPACE_ROOT": str(tmp / "workspaces"),
        "PORTAL_TASKS": "eager",
        "PORTAL_LAUNCHER": "local",
        "PORTAL_DOCKER_GPU_MODE": "env",
        "PORTAL_DOCKER_INSTANCE": f"bench{uuid.uuid4().hex[:8]}",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
    })
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _world():
    """One team with a grant of H100s, its owner, the lab image in the catalogue, the simulated fleet."""
    from governance.models import Membership, QuotaGrant, Role, Team, TeamPolicy, User
    from scheduler import inventory
    from workspaces.models import Image

    inventory.inventory_sync_all()
    team = Team.objects.create(name="Bench", slug="bench")
    TeamPolicy.objects.get_or_create(team=team, defaults={"max_workspaces_per_user": 8})
    user = User.objects.create_user(username="bench-user", email="bench@example.com", password=secrets.token_urlsafe())
    Membership.objects.create(team=team, user=user, role=Role.OWNER)
    QuotaGrant.objects.create(team=team, flavor="H100", count=8,
                              starts_at=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1))
    image = Image.objects.create(name="lab", reference=LAB_IMAGE)
    return team, user, image


# --- readiness, polled the same way for the portal and the hand-started lab -----------------------


def _poll_ready(url: str, token: str, timeout: float = 120.0) -> None:
    """The same schedule as Launcher.wait_ready (50 ms, growing to 500 ms)."""
    import httpx

    deadline = time.monotonic() + timeout
    delay = 0.05
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(url, headers={"Authorization": f"token {token}"}).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s")


def _lab_command(port: int, base_url: str, root: Path) -> list[str]:
    """What a person would type, with the flags the local launcher also passes."""
    command = [str(Path(sys.prefix) / "bin" / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--ServerApp.base_url={base_url}", f"--ServerApp.root_dir={root}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return command


def manual_local(tmp: Path, n: int) -> float:
    root = tmp / f"manual-{n}"
    root.mkdir(parents=True, exist_ok=True)
    port, token = _free_port(), secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
    env.update({"HOME": str(root), "JUPYTER_TOKEN": token})
    started = time.perf_counter()
    process = subprocess.Popen(_lab_command(port, "/w/0/", root), env=env, cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _poll_ready(f"http://127.0.0.1:{port}/w/0/api/status", token)
        return time.perf_counter() - started
    finally:
        os.killpg(process.pid, 15)
        process.wait(20)


def manual_docker(client) -> float:
    token = secrets.token_urlsafe(32)
    command = ["/opt/lab/bin/jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root",
               "--ServerApp.base_url=/w/0/"]
    started = time.perf_counter()
    container = client.containers.run(LAB_IMAGE, command, detach=True, environment={"JUPYTER_TOKEN": token},
                                      ports={"8888/tcp": ("127.0.0.1", None)},
                                      labels={"portal.instance": os.environ["PORTAL_DOCKER_INSTANCE"]})
    try:
        container.reload()
        port = int(container.attrs["NetworkSettings"]["Ports"]["8888/tcp"][0]["HostPort"])
        _poll_ready(f"http://127.0.0.1:{port}/w/0/api/status", token)
        return time.perf_counter() - started
    finally:
        container.remove(force=True)


def portal_launch(team, user, image):
    """Create-to-ready through the product's own path; returns (seconds, workspace)."""
    from workspaces.models import Workspace
    from workspaces.services import workspace_create

    started = time.perf_counter()
    workspace = workspace_create(user=user, team=team, image=image, gpu_count=1, flavor="H100",
                                 duration=datetime.timedelta(hours=1), name="bench")
    workspace.refresh_from_db()
    elapsed = time.perf_counter() - started
    if workspace.state != Workspace.State.RUNNING:
        raise RuntimeError(f"workspace ended {workspace.state}: {workspace.error}")
    return elapsed, workspace


def portal_stop(workspace, user) -> None:
    from workspaces.services import workspace_stop

    workspace_stop(workspace=workspace, actor=user)


def compare_launches(label: str, rounds: int, manual, portal) -> float:
    hand, ours = [], []
    for n in range(rounds):
        # Alternate which goes first so neither always gets the warmer caches.
        order = [("hand", manual), ("portal", portal)] if n % 2 == 0 else [("portal", portal), ("hand", manual)]
        for name, run in order:
            (hand if name == "hand" else ours).append(run(n))
    h, p = statistics.median(hand), statistics.median(ours)
    print(f"{label}: by hand median {h:.3f} s {[round(x, 3) for x in hand]}, portal median {p:.3f} s "
          f"{[round(x, 3) for x in ours]}, ratio {p / h:.3f}")
    return p / h


# --- proxy ----------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _http_load(url: str, headers: dict, cookies: dict, clients: int, requests: int) -> list[float]:
    import httpx

    latencies: list[float] = []

    async def one_client():
        async with httpx.AsyncClient(headers=headers, cookies=cookies, timeout=30, trust_env=False) as client:
            for _ in range(3):  # warm the connection
                (await client.get(url)).raise_for_status()
            for _ in range(requests):
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies


async def _ws_rtts(url: str, headers: dict, count: int) -> list[float]:
    import websockets

    session = uuid.uuid4().hex
    rtts = []
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        for n in range(count + 3):
            msg_id = uuid.uuid4().hex
            message = {"header": {"msg_id": msg_id, "username": "bench", "session": session,
                                  "msg_type": "kernel_info_request", "version": "5.3",
                                  "date": datetime.datetime.now(datetime.UTC).isoformat()},
                       "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell", "buffers": []}
            started = time.perf_counter()
            await ws.send(json.dumps(message))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("msg_type") == "kernel_info_reply" and reply["parent_header"].get("msg_id") == msg_id:
                    break
            if n >= 3:  # the first few warm the kernel and the connection
                rtts.append(time.perf_counter() - started)
    return rtts


def proxy_figures(team, user, image, tmp: Path, *, clients: int, requests: int, ws_count: int) -> dict:
    import httpx
    from django.conf import settings
    from django.test import Client

    _, workspace = portal_launch(team, user, image)
    web = Client()
    web.force_login(user)
    cookies = {settings.SESSION_COOKIE_NAME: web.cookies[settings.SESSION_COOKIE_NAME].value}
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=open(tmp / "uvicorn.log", "wb"))
    try:
        proxied = f"http://127.0.0.1:{port}/w/{workspace.pk}/api/"
        direct = f"http://{workspace.host}:{workspace.port}/w/{workspace.pk}/api/"
        token_header = {"Authorization": f"token {workspace.lab_token}"}
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(proxied + "status", cookies=cookies, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the proxy did not answer:\n" + (tmp / "uvicorn.log").read_text()[-2000:])
            time.sleep(0.2)

        direct_lat, proxy_lat = [], []
        for n in range(2):  # alternate, pool both rounds
            for name in (("direct", "proxy") if n == 0 else ("proxy", "direct")):
                if name == "direct":
                    direct_lat += asyncio.run(_http_load(direct + "contents", token_header, {}, clients, requests))
                else:
                    proxy_lat += asyncio.run(_http_load(proxied + "contents", {}, cookies, clients, requests))
        d50, d99 = _percentile(direct_lat, 0.5), _percentile(direct_lat, 0.99)
        p50, p99 = _percentile(proxy_lat, 0.5), _percentile(proxy_lat, 0.99)
        print(f"http GET api/contents, {clients} concurrent clients x {2 * requests} requests: "
              f"direct p50 {d50 * 1000:.2f} ms p99 {d99 * 1000:.2f} ms; "
              f"proxy p50 {p50 * 1000:.2f} ms p99 {p99 * 1000:.2f} ms")

        kernel = httpx.post(direct + "kernels", headers=token_header, json={"name": "python3"}, timeout=60).json()["id"]
        ws_path = f"/w/{workspace.pk}/api/kernels/{kernel}/channels"
        direct_rtt = asyncio.run(_ws_rtts(f"ws://{workspace.host}:{workspace.port}{ws_path}", token_header, ws_count))
        cookie_header = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookies[settings.SESSION_COOKIE_NAME]}",
                         "Origin": f"http://127.0.0.1:{port}"}
        proxy_rtt = asyncio.run(_ws_rtts(f"ws://127.0.0.1:{port}{ws_path}", cookie_header, ws_count))
        dm, pm = statistics.median(direct_rtt) * 1000, statistics.median(proxy_rtt) * 1000
        print(f"kernel websocket round trip (kernel_info), {ws_count} each: direct median {dm:.2f} ms, "
              f"proxy median {pm:.2f} ms")
        return {"proxy_p50_ratio": p50 / d50, "proxy_p99_ratio": p99 / d99, "ws_rtt_overhead_ms": pm - dm}
    finally:
        server.terminate()
        server.wait(20)
        portal_stop(workspace, user)


def _docker_client():
    try:
        import docker

        client = docker.from_env()
        client.ping()
        client.images.get(LAB_IMAGE)
        return client
    except Exception as exc:  # noqa: BLE001 - any reason means "no Docker figures in this run"
        print(f"docker: skipped ({type(exc).__name__}: {exc})")
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="one quick round of everything (suite check)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=50, help="requests per client per round")
    parser.add_argument("--no-docker", action="store_true")
    parser.add_argument("--no-proxy", action="store_true")
    args = parser.parse_args(argv)
    rounds, requests, ws_count = (1, 3, 5) if args.tiny else (args.rounds, args.requests, 200)

    tmp = Path(tempfile.mkdtemp(prefix="portal-bench-launch-"))
    figures: dict[str, float | str] = {}
    try:
        _configure(tmp)
        from django.test.utils import override_settings

        team, user, image = _world()
        print(f"machine: {os.cpu_count()} CPUs; rounds {rounds}; jupyter {Path(sys.prefix) / 'bin' / 'jupyter'}")

        def portal_run(_n):
            elapsed, workspace = portal_launch(team, user, image)
            portal_stop(workspace, user)
            return elapsed

        figures["launch_overhead_ratio"] = compare_launches(
            "local launch", rounds, lambda n: manual_local(tmp, n), portal_run)

        client = None if args.no_docker else _docker_client()
        if client is not None:
            with override_settings(PORTAL_LAUNCHER="docker"):
                figures["docker_launch_overhead_ratio"] = compare_launches(
                    "docker launch", max(1, min(rounds, 3)), lambda n: manual_docker(client), portal_run)
            for container in client.containers.list(
                    all=True, filters={"label": f"portal.instance={os.environ['PORTAL_DOCKER_INSTANCE']}"}):
                container.remove(force=True)
            for volume in client.volumes.list(filters={"name": os.environ["PORTAL_DOCKER_INSTANCE"]}):
                volume.remove(force=True)
            for network in client.networks.list(names=[f"{os.environ['PORTAL_DOCKER_INSTANCE']}-portal-labs"]):
                network.remove()
        else:
            figures["docker_launch_overhead_ratio"] = "na"

        if not args.no_proxy:
            figures.update(proxy_figures(team, user, image, tmp, clients=args.clients, requests=requests,
                                         ws_count=ws_count))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def fmt(value):
        return value if isinstance(value, str) else f"{value:.3f}"

    print(" ".join(f"{key}={fmt(value)}" for key, value in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
