"""The whole path with the real Docker engine: create -> the scheduler's real pass -> the node's
start task -> a portal-lab:ci container on the allocated GPUs (env mode) -> running, then reached
through the portal's real proxy (uvicorn serving portal.asgi): REST and the kernel websocket."""

import asyncio
import datetime
import uuid

import httpx
import pytest

from tests.workspaces.housekeeping_support import docker_engine, kernel_execute  # noqa: F401 - fixture
from tests.workspaces.lifecycle_support import fleet, h100_quota, lab_image, portal_server, session_cookie  # noqa: F401
from workspaces import services
from workspaces.models import Workspace

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(240)]


def test_docker_workspace_runs_and_answers_through_the_proxy(docker_engine, member, outsider, team, fleet, h100_quota,
                                                              lab_image, portal_server):
    workspace = services.workspace_create(user=member, team=team, image=lab_image, gpu_count=2, flavor="H100",
                                          duration=datetime.timedelta(hours=1), name="docker-proxy")
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.RUNNING, workspace.error
    assert workspace.launcher == "docker" and len(workspace.handle) == 64
    container = docker_engine.containers.get(workspace.handle)
    assert container.labels["portal.workspace"] == str(workspace.pk)

    base = f"http://{portal_server}/w/{workspace.pk}"
    cookies = session_cookie(member)
    with httpx.Client(cookies=cookies, trust_env=False, timeout=30) as client:
        assert client.get(f"{base}/api/status").status_code == 200
        created = client.post(f"{base}/api/kernels", json={"name": "python3"},
                              headers={"Origin": f"http://{portal_server}"})
        assert created.status_code == 201, created.text
        kernel_id = created.json()["id"]
        # The token stays server-side: not in anything the browser receives.
        page = client.get(f"{base}/lab")
        assert page.status_code == 200 and workspace.lab_token not in page.text
    with httpx.Client(cookies=session_cookie(outsider), trust_env=False, timeout=30) as client:
        assert client.get(f"{base}/api/status").status_code == 404

    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    url = f"ws://{portal_server}/w/{workspace.pk}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
    output = asyncio.run(kernel_execute(url, "import os; print(1 + 1, os.environ['CUDA_VISIBLE_DEVICES'].count(','))",
                                        headers={"Cookie": cookie, "Origin": f"http://{portal_server}"}))
    assert output == "2 1\n"  # 1+1 ran in the container, which sees exactly the two allocated GPUs

    services.workspace_stop(workspace=workspace, actor=member)
    workspace.refresh_from_db()
    assert workspace.state == Workspace.State.STOPPED
    assert not docker_engine.containers.list(all=True, filters={"id": container.id})
