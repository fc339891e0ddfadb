"""The Docker launcher (production): one container per workspace, through the Docker SDK.

What it guarantees, and why:
- Only the allocated GPUs: by default an NVIDIA device request naming exactly the scheduler's
  UUIDs; with PORTAL_DOCKER_GPU_MODE="env" the UUIDs go in NVIDIA_VISIBLE_DEVICES /
  CUDA_VISIBLE_DEVICES instead (hosts without the NVIDIA runtime).
- The lab's port is published on 127.0.0.1 only (a random host port, for the portal's proxy);
  nothing else is exposed, and labs sit on a bridge network with inter-container traffic off.
- Labels `portal.managed=true` and `portal.workspace=<id>` mark the container as the portal's, so
  the reconciler can find orphans after any crash.
- A named volume per user per team is the home directory and outlives the container.
- The image is recorded by digest (or image ID for an image that came from no registry).
- Every engine error becomes a LaunchError carrying the engine's own message, e.g.
  `could not select device driver "" with capabilities: [[gpu]]` on a node without the runtime.

The launcher never touches the database; workspaces.tasks records what it returns."""

from __future__ import annotations

import logging
import shlex

import docker
import requests
from django.conf import settings
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest

# What talking to the engine can raise: its API errors, and the transport's when it is unreachable.
ENGINE_ERRORS = (DockerException, requests.RequestException)

from workspaces.launchers.base import InstanceStatus, LaunchError, LaunchResult, LaunchSpec, Launcher, OwnedInstance

log = logging.getLogger(__name__)

LABEL_MANAGED = "portal.managed"
LABEL_WORKSPACE = "portal.workspace"
LAB_PORT = 8888
# Defaults for the catalogue image; an image may override them with the labels below
# (set at build time, e.g. `docker import --change 'LABEL portal.lab.home=/root'`).
DEFAULT_HOME = "/home/lab"
# The token goes by environment (JUPYTER_TOKEN), not argv: the host's process list shows every
# container's argv to every local user, /proc/<pid>/environ only to root. A template may still
# use {token} for an image whose lab reads no environment.
DEFAULT_COMMAND = (
    "/opt/lab/bin/jupyter lab --ip=0.0.0.0 --port={port} --no-browser --allow-root "
    "--ServerApp.base_url={base_url}"
)
IMAGE_LABEL_COMMAND = "portal.lab.command"
IMAGE_LABEL_HOME = "portal.lab.home"
STOP_GRACE_S = 10


LABEL_INSTANCE = "portal.instance"


def instance_name() -> str:
    """Which portal owns a container (PORTAL_DOCKER_INSTANCE): two portals sharing one engine
    (staging beside production, parallel test runs) never see each other's containers."""
    return settings.PORTAL_DOCKER_INSTANCE


def container_name(workspace_id: int) -> str:
    instance = instance_name()
    return f"portal-{instance}-ws-{workspace_id}" if instance else f"portal-ws-{workspace_id}"


def _engine_message(exc: Exception) -> str:
    """The engine's own words (APIError.explanation is the daemon's message), never a Python repr."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return explanation.decode() if isinstance(explanation, bytes) else str(explanation)
    return str(exc)


class DockerLauncher(Launcher):
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None):
        self._client = client

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env()
            except DockerException as exc:
                raise LaunchError(f"Docker engine unavailable: {_engine_message(exc)}") from exc
        return self._client

    # --- start -------------------------------------------------------------------------------

    def _image(self, reference: str):
        try:
            return self.client.images.get(reference)
        except ImageNotFound:
            pass
        except ENGINE_ERRORS as exc:
            raise LaunchError(f"Docker engine: {_engine_message(exc)}") from exc
        if not settings.PORTAL_DOCKER_PULL:
            raise LaunchError(f"Image {reference} is not on this node and pulling is disabled (PORTAL_DOCKER_PULL).")
        try:
            return self.client.images.pull(reference)
        except ENGINE_ERRORS as exc:
            raise LaunchError(f"Could not pull image {reference}: {_engine_message(exc)}") from exc

    @staticmethod
    def _digest(image) -> str:
        # A registry image has a content digest; an imported one (no registry) only its ID,
        # which is itself a content hash of its configuration.
        repo_digests = image.attrs.get("RepoDigests") or []
        if repo_digests:
            return repo_digests[0].split("@", 1)[-1]
        return image.id

    def _command(self, image, spec: LaunchSpec) -> list[str]:
        labels = (image.attrs.get("Config") or {}).get("Labels") or {}
        template = labels.get(IMAGE_LABEL_COMMAND) or settings.PORTAL_DOCKER_LAB_COMMAND or DEFAULT_COMMAND
        return [part.format(port=LAB_PORT, token=spec.token, base_url=spec.base_url) for part in shlex.split(template)]

    def _home(self, image) -> str:
        labels = (image.attrs.get("Config") or {}).get("Labels") or {}
        return labels.get(IMAGE_LABEL_HOME) or DEFAULT_HOME

    def _volume(self, spec: LaunchSpec) -> str:
        name = spec.volume or f"portal-{spec.team_slug}-{spec.owner_username}"
        if instance_name():
            name = f"{instance_name()}-{name}"
        try:
            self.client.volumes.get(name)
        except NotFound:
            try:
                self.client.volumes.create(name=name, labels={
                    LABEL_MANAGED: "true", "portal.team": spec.team_slug, "portal.owner": spec.owner_username,
                })
            except ENGINE_ERRORS as exc:
                raise LaunchError(f"Docker engine could not create volume {name}: {_engine_message(exc)}") from exc
        return name

    def _gpu_options(self, spec: LaunchSpec) -> tuple[dict[str, str], list[DeviceRequest]]:
        uuids = ",".join(spec.device_uuids)
        if settings.PORTAL_DOCKER_GPU_MODE == "env":
            # No NVIDIA runtime here: the devices are named for CUDA only, the container
            # still runs under runc. "void" hides every GPU from the NVIDIA hooks if present.
            return {"NVIDIA_VISIBLE_DEVICES": uuids or "void", "CUDA_VISIBLE_DEVICES": uuids}, []
        if not spec.device_uuids:
            return {"NVIDIA_VISIBLE_DEVICES": "void"}, []
        return {}, [DeviceRequest(device_ids=list(spec.device_uuids), capabilities=[["gpu"]])]

    def _network(self) -> str:
        """A bridge network of the portal's with inter-container traffic off: one user's lab
        cannot reach another's over the bridge (only the published loopback port leads in)."""
        name = settings.PORTAL_DOCKER_NETWORK or "portal-labs"
        if instance_name():
            name = f"{instance_name()}-{name}"
        try:
            # The engine's name filter matches substrings: compare exactly.
            if not any(n.name == name for n in self.client.networks.list(names=[name])):
                self.client.networks.create(name, driver="bridge", labels={LABEL_MANAGED: "true"}, check_duplicate=True,
                                            options={"com.docker.network.bridge.enable_icc": "false"})
        except ENGINE_ERRORS as exc:
            if getattr(exc, "status_code", None) == 409:
                return name  # a concurrent start created it first

            raise LaunchError(f"Docker engine could not create network {name}: {_engine_message(exc)}") from exc
        return name

    def _remove_leftover(self, name: str) -> None:
        """A container of the same name can only be a leftover of an earlier attempt at this
        workspace (the start task runs once per attempt): remove it so the name is free."""
        try:
            self.client.containers.get(name).remove(force=True)
        except NotFound:
            pass
        except ENGINE_ERRORS as exc:
            raise LaunchError(f"Docker engine could not remove the old container {name}: {_engine_message(exc)}") from exc

    def start(self, spec: LaunchSpec) -> LaunchResult:
        image = self._image(spec.image_reference)
        name = container_name(spec.workspace_id)
        self._remove_leftover(name)
        volume = self._volume(spec)
        gpu_env, device_requests = self._gpu_options(spec)
        network = self._network()
        home = self._home(image)
        environment = {**spec.env, **gpu_env, "HOME": home, "JUPYTER_TOKEN": spec.token,
                       "PORTAL_WORKSPACE_ID": str(spec.workspace_id)}
        options = {
            "image": image.id,
            "command": self._command(image, spec),
            "name": name,
            "hostname": f"ws-{spec.workspace_id}",
            "labels": {
                LABEL_MANAGED: "true", LABEL_WORKSPACE: str(spec.workspace_id), LABEL_INSTANCE: instance_name(),
                "portal.team": spec.team_slug, "portal.owner": spec.owner_username,
                "portal.image": spec.image_reference,
            },
            "environment": environment,
            "working_dir": home,
            "volumes": {volume: {"bind": home, "mode": "rw"}},
            # Published on loopback only, random host port: the proxy is the only way in.
            "ports": {f"{LAB_PORT}/tcp": ("127.0.0.1", None)},
            "network": network,
            "device_requests": device_requests,
            "init": True,  # reaps the kernels' zombie children
            "security_opt": ["no-new-privileges"],
            "pids_limit": 8192,  # a runaway fork loop in a notebook must not take the node down
            "detach": True,
        }
        if spec.cpu_limit:
            options["nano_cpus"] = int(min(spec.cpu_limit, self._host_cpus()) * 1e9)
        if spec.memory_limit_bytes:
            options["mem_limit"] = int(spec.memory_limit_bytes)
        container = None
        try:
            container = self.client.containers.create(**options)
            container.start()
            container.reload()
        except ENGINE_ERRORS as exc:
            message = _engine_message(exc)
            if container is not None:
                self._discard(container)
            raise LaunchError(f"Docker engine refused to start the workspace container: {message}") from exc
        port = self._host_port(container)
        if port is None:
            self._discard(container)
            raise LaunchError(f"Docker engine published no host port for {LAB_PORT}/tcp (container state: "
                              f"{container.status}).")
        return LaunchResult(handle=container.id, host="127.0.0.1", port=port, image_digest=self._digest(image))

    def _host_cpus(self) -> float:
        """The engine refuses a CPU limit above the host's CPU count; the policy's limit is a
        ceiling, so on a smaller host it means "all of them"."""
        if not hasattr(self, "_ncpu"):
            try:
                self._ncpu = float(self.client.info().get("NCPU") or 0) or float("inf")
            except ENGINE_ERRORS:
                self._ncpu = float("inf")
        return self._ncpu

    @staticmethod
    def _host_port(container) -> int | None:
        bindings = ((container.attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{LAB_PORT}/tcp") or []
        for binding in bindings:
            if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
                return int(binding["HostPort"])
        return None

    @staticmethod
    def _discard(container) -> None:
        try:
            container.remove(force=True)
        except ENGINE_ERRORS:
            log.warning("could not remove failed container %s", container.id, exc_info=True)

    # --- the rest of the interface ------------------------------------------------------------

    def stop(self, handle: str) -> None:
        """Stop (SIGTERM, then SIGKILL after a grace) and remove the container; the volume stays."""
        try:
            container = self.client.containers.get(handle)
        except NotFound:
            return
        except ENGINE_ERRORS as exc:
            raise LaunchError(f"Docker engine: {_engine_message(exc)}") from exc
        try:
            if container.status in ("running", "restarting", "paused"):
                container.stop(timeout=STOP_GRACE_S)
            container.remove(force=True, v=False)
        except NotFound:
            return
        except ENGINE_ERRORS as exc:
            raise LaunchError(f"Docker engine could not remove container {handle[:12]}: {_engine_message(exc)}") from exc

    def status(self, handle: str) -> InstanceStatus:
        try:
            container = self.client.containers.get(handle)
        except NotFound:
            return InstanceStatus("missing", "the container is gone")
        except ENGINE_ERRORS as exc:
            raise LaunchError(f"Docker engine: {_engine_message(exc)}") from exc
        state = container.attrs.get("State") or {}
        if state.get("Running") or container.status in ("running", "restarting"):
            return InstanceStatus("running")
        if container.status == "created":
            return InstanceStatus("exited", "the container was created but never started")
        parts = [f"the container exited with code {state.get('ExitCode')}"]
        if state.get("OOMKilled"):
            parts.append("killed for exceeding its memory limit (OOM)")
        if state.get("Error"):
            parts.append(state["Error"])
        return InstanceStatus("exited", "; ".join(parts))

    def list_owned(self) -> list[OwnedInstance]:
        try:
            containers = self.client.containers.list(all=True, filters={"label": [
                f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={instance_name()}"]})
        except ENGINE_ERRORS as exc:
            raise LaunchError(f"Docker engine: {_engine_message(exc)}") from exc
        owned = []
        for container in containers:
            try:
                workspace_id = int(container.labels.get(LABEL_WORKSPACE, ""))
            except ValueError:
                workspace_id = 0  # marked as ours but unattributable: an orphan by definition
            owned.append(OwnedInstance(handle=container.id, workspace_id=workspace_id))
        return owned

    def logs_tail(self, handle: str, lines: int = 20) -> str:
        try:
            raw = self.client.containers.get(handle).logs(tail=lines)
        except ENGINE_ERRORS:
            return ""
        return raw.decode(errors="replace").strip()
