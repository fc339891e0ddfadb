"""Registering a real GPU host's inventory from NVML (runs where an NVIDIA driver is present:
`pytest -m gpu`; skipped elsewhere)."""

import pytest

from scheduler.inventory import node_register
from scheduler.models import GpuDevice, MigSlice, Node

pytestmark = [pytest.mark.gpu, pytest.mark.django_db]


@pytest.fixture
def nvml_source():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver here: {exc}")
    from scheduler.gpus import NvmlSource

    return NvmlSource()


def test_real_gpus_register_with_plausible_facts_and_idempotently(nvml_source):
    import pynvml

    info = nvml_source.inventory("gpu-host")
    node = node_register(info=info)
    node_register(info=nvml_source.inventory("gpu-host"))

    assert not node.simulated and Node.objects.count() == 1
    gpus = list(GpuDevice.objects.filter(node=node).order_by("index"))
    assert len(gpus) == pynvml.nvmlDeviceGetCount() >= 1
    for row in gpus:
        assert row.uuid.startswith("GPU-") and row.model and row.healthy
        assert 1024 <= row.memory_mb <= 1024 * 1024  # 1 GiB .. 1 TiB, in MiB
    for sl in MigSlice.objects.filter(gpu__node=node):
        assert sl.uuid.startswith("MIG-") and "g." in sl.profile and 0 < sl.memory_mb <= sl.gpu.memory_mb
