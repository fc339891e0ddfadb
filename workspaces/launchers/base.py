"""The one small interface every launcher implements (local process, Docker; Kubernetes later).

A launcher only *executes* a placement the scheduler already made: it is told which devices
(GPU or MIG UUIDs) to expose and never chooses any itself. It does not touch the database;
workspaces.tasks calls it and records what it returns through workspaces.services."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import httpx
from django.conf import settings


class LaunchError(Exception):
    """The launcher could not start (or keep) a lab. `message` is the real cause (the Docker
    engine's message, the lab's last log lines) and is shown to the user as is."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class LaunchSpec:
    workspace_id: int
    owner_username: str
    team_slug: str
    image_reference: str
    device_uuids: tuple[str, ...]
    token: str
    base_url: str  # "/w/<id>/": the lab serves everything under it, so the proxy forwards paths unchanged
    cpu_limit: float | None = None
    memory_limit_bytes: int | None = None
    volume: str = ""  # local: a directory; docker: a named volume (per user per team, kept after stop)
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchResult:
    handle: str  # local: "pid:<pid>:<start_ticks>"; docker: the container id
    host: str
    port: int
    image_digest: str = ""


@dataclass(frozen=True)
class InstanceStatus:
    state: Literal["running", "exited", "missing"]
    detail: str = ""


@dataclass(frozen=True)
class OwnedInstance:
    handle: str
    workspace_id: int


class Launcher(ABC):
    """Executes a placement the scheduler already made: start, stop, status, list-owned."""

    name = "base"

    @abstractmethod
    def start(self, spec: LaunchSpec) -> LaunchResult:
        """Start the lab and return at once (readiness is wait_ready's job)."""

    @abstractmethod
    def stop(self, handle: str) -> None:
        """Stop and remove the instance; a handle that is already gone is not an error."""

    @abstractmethod
    def status(self, handle: str) -> InstanceStatus:
        """Whether the instance runs, has exited (with why) or is gone."""

    @abstractmethod
    def list_owned(self) -> list[OwnedInstance]:
        """Every instance on this host that carries the portal's marker, live workspace or not."""

    def logs_tail(self, handle: str, lines: int = 20) -> str:
        """The instance's last output lines, to explain a failure (best effort)."""
        return ""

    def wait_ready(self, result: LaunchResult, token: str, base_url: str, timeout: float | None = None) -> None:
        """Poll the lab's `<base_url>api/status` until it answers 200. Raises LaunchError when the
        instance exits first or when `timeout` (default PORTAL_LAB_READY_TIMEOUT) passes."""
        timeout = settings.PORTAL_LAB_READY_TIMEOUT if timeout is None else timeout
        url = f"http://{result.host}:{result.port}{base_url}api/status"
        deadline = time.monotonic() + timeout
        delay = 0.05
        last = "no answer yet"
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                try:
                    response = client.get(url, headers={"Authorization": f"token {token}"})
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                status = self.status(result.handle)
                if status.state != "running":
                    tail = self.logs_tail(result.handle)
                    detail = f": {status.detail}" if status.detail else ""
                    raise LaunchError(f"JupyterLab exited before it was ready{detail}" + (f"\n{tail}" if tail else ""))
                if time.monotonic() >= deadline:
                    tail = self.logs_tail(result.handle)
                    raise LaunchError(
                        f"JupyterLab did not answer {base_url}api/status within {timeout:.0f} s (last: {last})"
                        + (f"\n{tail}" if tail else "")
                    )
                # Short, flat polling: /api/status is cheap and every 100 ms of delay is click-to-ready time.
                time.sleep(delay)
                delay = min(delay * 1.2, 0.1)


def get_launcher(name: str | None = None) -> Launcher:
    """The launcher named `name`, or settings.PORTAL_LAUNCHER ("local" | "docker")."""
    name = name or settings.PORTAL_LAUNCHER
    if name == "local":
        from workspaces.launchers.local import LocalLauncher

        return LocalLauncher()
    if name == "docker":
        from workspaces.launchers.docker import DockerLauncher

        return DockerLauncher()
    raise LaunchError(f"Unknown launcher {name!r} (PORTAL_LAUNCHER must be 'local' or 'docker').")
