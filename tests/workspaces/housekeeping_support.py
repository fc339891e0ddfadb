"""Helpers for the Docker launcher, reconciler and culler tests: a workspace placed on GPUs as a
scheduling pass would leave it, telemetry written as the simulated sampler would, a real
JupyterLab process to talk to, and the lab's kernel protocol over a real websocket."""

from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from django.utils import timezone

from scheduler.models import Allocation, AllocationRequest, GpuDevice, GpuSample, Node
from tests.conftest import service_missing
from workspaces.models import Image, Workspace

LAB_IMAGE = "portal-lab:ci"


def node_with_gpus(name: str = "node-w2", count: int = 2, model: str = "H100") -> Node:
    node = Node.objects.create(name=name, simulated=True, last_heartbeat=timezone.now())
    for index in range(count):
        GpuDevice.objects.create(node=node, uuid=f"GPU-{name}-{index}-{uuid.uuid4().hex[:8]}", index=index,
                                 model=model, memory_mb=81920)
    return node


def image(reference: str = LAB_IMAGE, name: str = "lab") -> Image:
    return Image.objects.get_or_create(name=name, defaults={"reference": reference})[0]


def placed_workspace(*, owner, team, node: Node, gpus: int = 1, state=Workspace.State.SCHEDULED,
                     reference: str = LAB_IMAGE, pk: int | None = None, **fields) -> Workspace:
    """A workspace whose request a pass placed on `gpus` free GPUs of `node` (rows as the pass writes them)."""
    held = Allocation.objects.filter(released_at__isnull=True, gpu__isnull=False).values("gpu_id")
    devices = list(GpuDevice.objects.filter(node=node).exclude(pk__in=held).order_by("index")[:gpus])
    assert len(devices) == gpus, "not enough free GPUs on the test node"
    now = timezone.now()
    request = AllocationRequest.objects.create(team=team, user=owner, flavor=devices[0].model, count=gpus,
                                               state=AllocationRequest.State.PLACED, placed_at=now)
    Allocation.objects.bulk_create([
        Allocation(request=request, team=team, node=node, gpu=device, planned_end=now + datetime.timedelta(hours=8))
        for device in devices
    ])
    values = {"scheduled_at": now, "planned_end": now + datetime.timedelta(hours=8),
              "volume": f"portal-{team.slug}-{owner.username}", **({"pk": pk} if pk else {}), **fields}
    return Workspace.objects.create(team=team, owner=owner, name="w2-test", image=image(reference), state=state,
                                    allocation_request=request, node=node, **values)


def live_allocations(workspace: Workspace) -> int:
    return Allocation.objects.filter(request_id=workspace.allocation_request_id, released_at__isnull=True).count()


def device_uuids(workspace: Workspace) -> list[str]:
    return list(Allocation.objects.filter(request_id=workspace.allocation_request_id)
                .order_by("gpu__index").values_list("gpu__uuid", flat=True))


def write_samples(workspace: Workspace, *, util: float, start: datetime.datetime, end: datetime.datetime,
                  step_s: int = 30, mem_used_gb: float = 20.0) -> int:
    """Samples for every GPU of the workspace, as the simulated sampler writes them (one row per GPU
    per interval). A "notebook holding GPU memory but doing nothing" is util ~0 with memory used."""
    gpu_ids = list(Allocation.objects.filter(request_id=workspace.allocation_request_id, released_at__isnull=True)
                   .values_list("gpu_id", flat=True))
    rows, ts = [], start
    while ts <= end:
        rows += [GpuSample(gpu_id=g, slice_index=-1, ts=ts, util_gpu=util, util_mem=util / 2,
                           mem_used_bytes=int(mem_used_gb * 1024**3), mem_total_bytes=80 * 1024**3,
                           power_w=70 + 600 * util, power_limit_w=700, temp_c=35 + 40 * util) for g in gpu_ids]
        ts += datetime.timedelta(seconds=step_s)
    GpuSample.objects.bulk_create(rows)
    return len(rows)


def require_lab_image(client) -> None:
    import docker

    try:
        client.images.get(LAB_IMAGE)
    except docker.errors.ImageNotFound:
        service_missing(f"Docker image {LAB_IMAGE} (build it with .ci/build-lab-image.sh)")


def remove_portal_containers(client, workspace_ids) -> None:
    """Leave the engine as found (tests share one engine with the other engineers' runs)."""
    for container in client.containers.list(all=True, filters={"label": "portal.managed=true"}):
        if container.labels.get("portal.workspace") in {str(i) for i in workspace_ids}:
            container.remove(force=True)


# --- a real JupyterLab, started by hand (what the culler and the bench talk to) ----------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    """`jupyter lab` from the venv, on 127.0.0.1, with a token and a base_url: the same lab the
    local launcher runs, started by hand so one lab can serve a module's tests."""

    def __init__(self, root: Path, base_url: str):
        self.root = root
        self.base_url = base_url
        self.token = secrets.token_urlsafe(24)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_url}api/"

    def headers(self) -> dict:
        return {"Authorization": f"token {self.token}"}

    def start(self, timeout: float = 90) -> Lab:
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR")}
        env.update({"HOME": str(self.root), "JUPYTER_TOKEN": self.token, "PYTHONUNBUFFERED": "1"})
        command = [str(Path(sys.prefix) / "bin" / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1",
                   f"--port={self.port}", "--ServerApp.port_retries=0", f"--ServerApp.base_url={self.base_url}",
                   f"--ServerApp.root_dir={self.root}", "--LabApp.news_url=",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:
            command.append("--allow-root")
        self.log = open(self.root / "lab.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.api + "status", headers=self.headers(), timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        pytest.fail("JupyterLab did not start:\n" + (self.root / "lab.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(5)
        if getattr(self, "log", None):
            self.log.close()

    def bind(self, workspace: Workspace) -> Workspace:
        """Point a running workspace's record at this lab (as the start task records it)."""
        workspace.host, workspace.port, workspace.lab_token = "127.0.0.1", self.port, self.token
        workspace.handle = workspace.handle or f"pid:{self.process.pid}:0"
        workspace.save(update_fields=["host", "port", "lab_token", "handle"])
        return workspace

    def kernel_start(self) -> str:
        response = httpx.post(self.api + "kernels", headers=self.headers(), json={"name": "python3"}, timeout=30)
        response.raise_for_status()
        return response.json()["id"]

    def kernel_delete(self, kernel_id: str) -> None:
        httpx.delete(self.api + f"kernels/{kernel_id}", headers=self.headers(), timeout=30)

    def kernel_state(self, kernel_id: str) -> str:
        return httpx.get(self.api + f"kernels/{kernel_id}", headers=self.headers(), timeout=10).json()["execution_state"]


async def kernel_execute(ws_url: str, code: str, *, wait_reply: bool = True, headers: dict | None = None,
                         timeout: float = 30) -> str | None:
    """Run `code` on a kernel over its websocket (Jupyter's JSON protocol); return the text of its
    execute_result/stream output, or None when not waiting for the reply."""
    import asyncio

    import websockets

    msg_id = uuid.uuid4().hex
    message = {
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                   "version": "5.3", "date": timezone.now().isoformat()},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }
    async with websockets.connect(ws_url, additional_headers=headers or {}, max_size=None) as ws:
        await ws.send(json.dumps(message))
        if not wait_reply:
            # Wait until the kernel says it is busy with our request, then leave it running.
            async with asyncio.timeout(timeout):
                while True:
                    reply = json.loads(await ws.recv())
                    if (reply.get("parent_header", {}).get("msg_id") == msg_id and reply.get("msg_type") == "status"
                            and reply["content"].get("execution_state") == "busy"):
                        return None
        output = []
        async with asyncio.timeout(timeout):
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = reply.get("msg_type")
                if kind == "execute_result":
                    output.append(reply["content"]["data"].get("text/plain", ""))
                elif kind == "stream":
                    output.append(reply["content"]["text"])
                elif kind == "status" and reply["content"].get("execution_state") == "idle":
                    return "".join(output)


@pytest.fixture
def docker_engine(docker_client, settings):
    """The real engine set up for the Docker launcher in env GPU mode (no NVIDIA runtime here), with
    a fresh PORTAL_DOCKER_INSTANCE so this test sees, and cleans up, only its own containers and volumes."""
    require_lab_image(docker_client)
    instance = f"t{uuid.uuid4().hex[:10]}"
    settings.PORTAL_LAUNCHER = "docker"
    settings.PORTAL_DOCKER_GPU_MODE = "env"
    settings.PORTAL_DOCKER_INSTANCE = instance
    settings.PORTAL_DOCKER_PULL = False
    settings.PORTAL_LAB_READY_TIMEOUT = 90
    yield docker_client
    for container in docker_client.containers.list(all=True, filters={"label": f"portal.instance={instance}"}):
        container.remove(force=True)
    for volume in docker_client.volumes.list(filters={"name": instance}):
        volume.remove(force=True)
    for network in docker_client.networks.list(names=[f"{instance}-portal-labs"]):
        network.remove()
