"""The one narrow interface to GPU hardware.

`source()` returns the GPU source named by settings.PORTAL_GPU_SOURCE:
- "nvml": real NVIDIA GPUs through pynvml (package nvidia-ml-py), on a node with drivers;
- "simulated:<fleet.yaml>": a fleet described in a file, for machines without GPUs. It says it is
  simulated (`simulated = True`), and every page that shows its GPUs labels them so.

Everything above this module (inventory registration, telemetry, the scheduler) sees only the
dataclasses below and never imports pynvml.
"""

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml
from django.conf import settings


@dataclass(frozen=True)
class SliceInfo:
    uuid: str
    index: int
    profile: str
    memory_mb: int


@dataclass(frozen=True)
class GpuInfo:
    uuid: str
    index: int
    model: str
    memory_mb: int
    serial: str = ""
    nvlink_group: str = ""
    mig_enabled: bool = False
    slices: tuple[SliceInfo, ...] = ()


@dataclass(frozen=True)
class NodeInfo:
    name: str
    gpus: tuple[GpuInfo, ...]
    labels: dict = field(default_factory=dict)
    capacity: dict = field(default_factory=dict)
    simulated: bool = False


def _sim_id(*parts) -> str:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def mig_profile_memory_mb(profile: str) -> int:
    """'3g.71gb' -> 71 GiB in MiB."""
    size = profile.split(".", 1)[1].lower().removesuffix("gb")
    return int(float(size) * 1024)


def load_fleet_file(path: str | Path) -> list[NodeInfo]:
    """Parse a simulated fleet description (see scheduler/fleets/demo.yaml)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    nodes = []
    for node in data.get("nodes", []):
        spec = node["gpus"]
        model, count, memory_mb = spec["model"], int(spec["count"]), int(float(spec["memory_gb"]) * 1024)
        group_of = {}
        for g, members in enumerate(spec.get("nvlink_groups") or []):
            for index in members:
                group_of[int(index)] = f"{node['name']}-nvl{g}"
        mig = {int(k): v for k, v in (spec.get("mig") or {}).items()}
        gpus = []
        for index in range(count):
            uuid = f"GPU-{_sim_id(node['name'], index)}"
            slices = tuple(
                SliceInfo(uuid=f"MIG-{_sim_id(node['name'], index, s)}", index=s, profile=profile, memory_mb=mig_profile_memory_mb(profile))
                for s, profile in enumerate(mig.get(index, []))
            )
            gpus.append(GpuInfo(uuid=uuid, index=index, model=model, memory_mb=memory_mb,
                                serial=f"SIM{_sim_id(node['name'], index)[:10].upper()}", nvlink_group=group_of.get(index, ""),
                                mig_enabled=bool(slices), slices=slices))
        nodes.append(NodeInfo(name=node["name"], gpus=tuple(gpus), labels=node.get("labels", {}),
                              capacity=node.get("capacity", {}), simulated=True))
    return nodes


class SimulatedSource:
    simulated = True

    def __init__(self, fleet_file: str):
        self.fleet_file = fleet_file
        self._nodes = {n.name: n for n in load_fleet_file(fleet_file)}

    def node_names(self) -> list[str]:
        return list(self._nodes)

    def inventory(self, node_name: str) -> NodeInfo:
        return self._nodes[node_name]


class NvmlSource:
    """Real GPUs on this host. `nvmlInit` once per process."""

    simulated = False

    def __init__(self):
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()

    def node_names(self) -> list[str]:
        import socket

        return [settings.PORTAL_NODE_NAME or socket.gethostname()]

    def inventory(self, node_name: str) -> NodeInfo:
        nv = self.nvml
        gpus = []
        for index in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
            try:
                serial = _text(nv.nvmlDeviceGetSerial(handle))
            except nv.NVMLError:
                serial = ""
            try:
                current_mig, _pending = nv.nvmlDeviceGetMigMode(handle)
            except nv.NVMLError:
                current_mig = 0
            slices = []
            if current_mig == nv.NVML_DEVICE_MIG_ENABLE:
                for s in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
                    try:
                        mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, s)
                    except nv.NVMLError:
                        continue
                    mem = nv.nvmlDeviceGetMemoryInfo(mig).total // (1024 * 1024)
                    profile = _mig_profile_name(nv, mig, mem)
                    slices.append(SliceInfo(uuid=_text(nv.nvmlDeviceGetUUID(mig)), index=s, profile=profile, memory_mb=int(mem)))
            gpus.append(GpuInfo(
                uuid=uuid, index=index, model=_short_model(_text(nv.nvmlDeviceGetName(handle))),
                memory_mb=int(nv.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)), serial=serial,
                nvlink_group=_nvlink_group(nv, handle, node_name), mig_enabled=bool(slices), slices=tuple(slices),
            ))
        return NodeInfo(name=node_name, gpus=tuple(gpus), simulated=False)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _short_model(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100'; unknown names are kept whole."""
    for token in name.replace("NVIDIA", "").split():
        if token[:1] in "ABHLTV" and any(ch.isdigit() for ch in token):
            return token
    return name.strip()


def _mig_profile_name(nv, mig_handle, mem_mb: int) -> str:
    try:
        slices = nv.nvmlDeviceGetAttributes(mig_handle).gpuInstanceSliceCount
    except nv.NVMLError:
        slices = 1
    return f"{slices}g.{round(mem_mb / 1024)}gb"


def _nvlink_group(nv, handle, node_name: str) -> str:
    """GPUs with any active NVLink share one group per node (a coarse but safe topology)."""
    try:
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            if nv.nvmlDeviceGetNvLinkState(handle, link) == nv.NVML_FEATURE_ENABLED:
                return f"{node_name}-nvl"
    except nv.NVMLError:
        pass
    return ""


@lru_cache(maxsize=4)
def _source_for(spec: str):
    if spec == "nvml":
        return NvmlSource()
    if spec.startswith("simulated:"):
        return SimulatedSource(spec.split(":", 1)[1])
    raise ValueError(f"PORTAL_GPU_SOURCE must be 'nvml' or 'simulated:<file>', not {spec!r}")


def source():
    return _source_for(settings.PORTAL_GPU_SOURCE)
