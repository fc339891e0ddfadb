"""The one narrow interface to GPU hardware.

`source()` returns the GPU source named by settings.PORTAL_GPU_SOURCE:
- "nvml": real NVIDIA GPUs through pynvml (package nvidia-ml-py), on a node with drivers;
- "simulated:<fleet.yaml>": a fleet described in a file, for machines without GPUs. It says it is
  simulated (`simulated = True`), and every page that shows its GPUs labels them so.

Everything above this module (inventory registration, telemetry, the scheduler) sees only the
dataclasses below and never imports pynvml.
"""

import hashlib
import math
import time
import zlib
from collections.abc import Mapping
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


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int
    name: str = ""


@dataclass(frozen=True)
class GpuReading:
    """One sample of one GPU (slice_index -1) or one MIG slice, in base units: ratios 0..1, bytes,
    watts, celsius, MHz. `error` set means the device could not be read (then the metrics are
    zero/None and the caller records a health event instead of storing a sample)."""

    uuid: str
    index: int
    ts: float
    slice_index: int = -1
    slice_uuid: str = ""
    util_gpu: float = 0.0
    util_mem: float = 0.0
    mem_used_bytes: int = 0
    mem_total_bytes: int = 0
    power_w: float | None = None
    power_limit_w: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    ecc_errors: int | None = None
    # Only on the (slow, every PROCESS_POLL_SECONDS) process polls; None between them.
    processes: tuple[GpuProcess, ...] | None = None
    error: str = ""
    error_kind: str = ""


# Listing processes costs milliseconds per GPU in NVML: done every 10 s, not every sample.
PROCESS_POLL_SECONDS = 10.0
MIB = 1024 * 1024


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
        # Telemetry fault injection for demos and tests: node `faults: {<gpu index>: "<NVML error>"}`
        # makes that GPU fail to read, as a GPU fallen off the bus would.
        data = yaml.safe_load(Path(fleet_file).read_text()) or {}
        self.faults = {n["name"]: {int(k): str(v) for k, v in (n.get("faults") or {}).items()} for n in data.get("nodes", [])}

    def node_names(self) -> list[str]:
        return list(self._nodes)

    def inventory(self, node_name: str) -> NodeInfo:
        return self._nodes[node_name]

    def sample(self, node_name: str, *, busy: Mapping[str, str] | None = None, now: float | None = None) -> list[GpuReading]:
        """Plausible readings for every GPU (and MIG slice) of the node at time `now`.

        `busy` maps the uuid of each allocated GPU or slice to a workload key (the allocation
        request's id): the key picks the workload pattern, so the same allocation always shows
        the same kind of work, and a free device is idle. Deterministic for a (uuid, key, time)."""
        node = self._nodes[node_name]
        busy = busy or {}
        now = time.time() if now is None else now
        faults = self.faults.get(node_name, {})
        readings = []
        for gpu in node.gpus:
            if gpu.index in faults:
                readings.append(GpuReading(uuid=gpu.uuid, index=gpu.index, ts=now, error=faults[gpu.index], error_kind="gpu_lost"))
                continue
            if gpu.slices:
                slice_readings = [_sim_reading(gpu, now, busy.get(sl.uuid), sl) for sl in gpu.slices]
                readings.append(_sim_whole_from_slices(gpu, now, slice_readings))
                readings.extend(slice_readings)
            else:
                readings.append(_sim_reading(gpu, now, busy.get(gpu.uuid)))
        return readings


class NvmlSource:
    """Real GPUs on this host. `nvmlInit` once per process."""

    simulated = False

    def __init__(self):
        import pynvml

        self.nvml = pynvml
        pynvml.nvmlInit()
        self._last_process_poll = 0.0

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

    def sample(self, node_name: str, *, busy: Mapping[str, str] | None = None, now: float | None = None) -> list[GpuReading]:
        """Read every GPU and MIG slice. An NVML error on one GPU (fallen off the bus, ...)
        becomes a reading with `error` set; the other GPUs are still read. `busy` is unused:
        real GPUs say themselves what they do."""
        nv = self.nvml
        now = time.time() if now is None else now
        poll_processes = now - self._last_process_poll >= PROCESS_POLL_SECONDS
        if poll_processes:
            self._last_process_poll = now
        readings = []
        for index in range(nv.nvmlDeviceGetCount()):
            uuid = f"index-{index}"
            try:
                handle = nv.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nv.nvmlDeviceGetUUID(handle))
                readings.append(_nvml_read(nv, handle, uuid, index, now, poll_processes))
                readings.extend(_nvml_read_slices(nv, handle, uuid, index, now))
            except nv.NVMLError as exc:
                readings.append(GpuReading(uuid=uuid, index=index, ts=now, error=str(exc), error_kind=_nvml_error_kind(nv, exc)))
        return readings


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


# --- Simulated readings -------------------------------------------------------------------------

# (power limit W, idle power W, max SM clock MHz) per model; unknown models get a generic card.
_SIM_MODEL = {"H100": (700.0, 70.0, 1980.0), "H200": (700.0, 75.0, 1980.0), "A100": (400.0, 55.0, 1410.0),
              "L40S": (350.0, 35.0, 2520.0), "L4": (72.0, 16.0, 2040.0)}
_SIM_DEFAULT = (300.0, 40.0, 1500.0)
SIM_PATTERNS = ("training", "inference", "notebook")


def _unit(*parts) -> float:
    """A deterministic pseudo-random number in [0, 1) for the parts (crc32: cheap at fleet scale)."""
    return zlib.crc32(":".join(str(p) for p in parts).encode()) / 4294967296.0


def sim_pattern(uuid: str, workload: str | None) -> str:
    """Which workload a simulated device runs: idle when free, else fixed by (device, workload)."""
    if workload is None:
        return "idle"
    return SIM_PATTERNS[int(_unit("pattern", uuid, workload) * len(SIM_PATTERNS))]


@lru_cache(maxsize=65536)
def _sim_profile(uuid: str, workload: str | None) -> tuple[str, float, float]:
    """(pattern, phase seconds, memory fraction) of a device's workload: fixed per allocation, so
    computed once (the simulated fleet samples thousands of devices a second)."""
    return sim_pattern(uuid, workload), _unit("phase", uuid) * 600, _unit("mem", uuid, workload)


def _sim_reading(gpu: GpuInfo, now: float, workload: str | None, sl: SliceInfo | None = None) -> GpuReading:
    uuid = sl.uuid if sl else gpu.uuid
    limit, idle_w, max_clock = _SIM_MODEL.get(gpu.model, _SIM_DEFAULT)
    share = (sl.memory_mb / gpu.memory_mb) if sl else 1.0
    total = int((sl.memory_mb if sl else gpu.memory_mb) * MIB)
    second = int(now)
    jitter = _unit(uuid, second)  # per-second noise, the same for everyone asking about this second
    pattern, phase, mem_unit = _sim_profile(uuid, workload)
    if pattern == "training":
        # ~95 % busy with a short dip every ~5 minutes (checkpoint / evaluation)
        dip = ((now + phase) % 300) < 8
        util = 0.12 + 0.1 * jitter if dip else 0.91 + 0.08 * jitter
        mem = 0.86 + 0.08 * mem_unit
    elif pattern == "inference":
        # bursts of requests: a slow wave times per-second noise
        wave = 0.5 + 0.5 * math.sin((now + phase) / 23.0)
        util = min(1.0, 0.05 + 0.75 * wave * jitter + 0.1 * jitter)
        mem = 0.35 + 0.25 * mem_unit
    elif pattern == "notebook":
        # a forgotten notebook: holds memory, does (almost) nothing
        util = 0.01 * jitter
        mem = 0.30 + 0.45 * mem_unit
    else:
        util, mem = 0.0, 0.0
    util = round(util, 4)
    power = round((idle_w + (limit - idle_w) * (0.15 + 0.8 * util if util > 0.02 else 0.02 * jitter)) * share, 1)
    temp = round(30 + 48 * util + 4 * mem + 2 * jitter, 1)
    clock = round(max_clock * (0.95 + 0.05 * jitter) if util > 0.02 else 345.0, 0)
    return GpuReading(
        uuid=gpu.uuid, index=gpu.index, ts=now, slice_index=sl.index if sl else -1, slice_uuid=sl.uuid if sl else "",
        util_gpu=util, util_mem=round(util * 0.6 * (0.8 + 0.4 * jitter), 4), mem_used_bytes=int(total * mem),
        mem_total_bytes=total, power_w=power, power_limit_w=round(limit * share, 1), temp_c=temp,
        sm_clock_mhz=clock, ecc_errors=0,
    )


def _sim_whole_from_slices(gpu: GpuInfo, now: float, slices: list[GpuReading]) -> GpuReading:
    """A MIG GPU's whole-device reading: what its slices add up to."""
    limit, idle_w, max_clock = _SIM_MODEL.get(gpu.model, _SIM_DEFAULT)
    weights = [r.mem_total_bytes for r in slices]
    total_w = sum(weights) or 1
    util = round(sum(r.util_gpu * w for r, w in zip(slices, weights)) / total_w, 4)
    return GpuReading(
        uuid=gpu.uuid, index=gpu.index, ts=now, util_gpu=util,
        util_mem=round(sum(r.util_mem * w for r, w in zip(slices, weights)) / total_w, 4),
        mem_used_bytes=sum(r.mem_used_bytes for r in slices), mem_total_bytes=int(gpu.memory_mb * MIB),
        power_w=round(max(idle_w, sum(r.power_w or 0 for r in slices)), 1), power_limit_w=limit,
        temp_c=max((r.temp_c or 0) for r in slices), sm_clock_mhz=max((r.sm_clock_mhz or 0) for r in slices), ecc_errors=0,
    )


# --- NVML readings ------------------------------------------------------------------------------


def _nvml_optional(nv, call, *args):
    """A value NVML may not support on this device (power on some boards, ECC on consumer cards)."""
    try:
        return call(*args)
    except nv.NVMLError:
        return None


def _nvml_read(nv, handle, uuid: str, index: int, now: float, poll_processes: bool) -> GpuReading:
    util = nv.nvmlDeviceGetUtilizationRates(handle)
    memory = nv.nvmlDeviceGetMemoryInfo(handle)
    power_mw = _nvml_optional(nv, nv.nvmlDeviceGetPowerUsage, handle)
    limit_mw = _nvml_optional(nv, nv.nvmlDeviceGetEnforcedPowerLimit, handle)
    temp = _nvml_optional(nv, nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)
    clock = _nvml_optional(nv, nv.nvmlDeviceGetClockInfo, handle, nv.NVML_CLOCK_SM)
    ecc = _nvml_optional(nv, nv.nvmlDeviceGetTotalEccErrors, handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)
    processes = None
    if poll_processes:
        found = _nvml_optional(nv, nv.nvmlDeviceGetComputeRunningProcesses, handle) or []
        processes = tuple(GpuProcess(pid=int(p.pid), used_bytes=int(p.usedGpuMemory or 0)) for p in found)
    return GpuReading(
        uuid=uuid, index=index, ts=now, util_gpu=util.gpu / 100.0, util_mem=util.memory / 100.0,
        mem_used_bytes=int(memory.used), mem_total_bytes=int(memory.total),
        power_w=power_mw / 1000.0 if power_mw is not None else None,
        power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
        temp_c=float(temp) if temp is not None else None, sm_clock_mhz=float(clock) if clock is not None else None,
        ecc_errors=int(ecc) if ecc is not None else None, processes=processes,
    )


def _nvml_read_slices(nv, handle, uuid: str, index: int, now: float) -> list[GpuReading]:
    """MIG slices: memory is per slice; utilization per slice is not exposed by NVML's classic
    counters (only through GPM), so it is reported as the parent's where the slice refuses."""
    try:
        current_mig, _pending = nv.nvmlDeviceGetMigMode(handle)
    except nv.NVMLError:
        return []
    if current_mig != nv.NVML_DEVICE_MIG_ENABLE:
        return []
    readings = []
    parent_util = _nvml_optional(nv, nv.nvmlDeviceGetUtilizationRates, handle)
    for s in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, s)
        except nv.NVMLError:
            continue
        memory = nv.nvmlDeviceGetMemoryInfo(mig)
        util = _nvml_optional(nv, nv.nvmlDeviceGetUtilizationRates, mig) or parent_util
        readings.append(GpuReading(
            uuid=uuid, index=index, ts=now, slice_index=s, slice_uuid=_text(nv.nvmlDeviceGetUUID(mig)),
            util_gpu=(util.gpu / 100.0) if util else 0.0, util_mem=(util.memory / 100.0) if util else 0.0,
            mem_used_bytes=int(memory.used), mem_total_bytes=int(memory.total),
        ))
    return readings


def _nvml_error_kind(nv, exc) -> str:
    """A short, stable name for the health event ('gpu_lost', 'nvml_error:<code>')."""
    if isinstance(exc, getattr(nv, "NVMLError_GpuIsLost", ())):
        return "gpu_lost"
    code = getattr(exc, "value", None)
    return f"nvml_error:{code}" if code is not None else "nvml_error"

@lru_cache(maxsize=4)
def _source_for(spec: str):
    if spec == "nvml":
        return NvmlSource()
    if spec.startswith("simulated:"):
        return SimulatedSource(spec.split(":", 1)[1])
    raise ValueError(f"PORTAL_GPU_SOURCE must be 'nvml' or 'simulated:<file>', not {spec!r}")


def source():
    return _source_for(settings.PORTAL_GPU_SOURCE)
