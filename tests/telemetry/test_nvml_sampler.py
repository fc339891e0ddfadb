"""The NVML sampler on a real NVIDIA GPU: plausible ranges and base units. Skipped where there is
no NVIDIA driver (the marker `gpu`)."""

import pytest

from scheduler import gpus

pytestmark = pytest.mark.gpu


@pytest.fixture
def nvml_source():
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - no library, no driver, no GPU: all mean "not here"
        pytest.skip(f"no NVIDIA GPU/driver here: {exc}")
    return gpus.NvmlSource()


def test_nvml_readings_are_plausible_and_in_base_units(nvml_source):
    node = nvml_source.node_names()[0]
    readings = nvml_source.sample(node, now=1000.0)
    whole = [r for r in readings if r.slice_index == -1]
    assert whole and all(not r.error for r in whole)
    inventory = {g.uuid: g for g in nvml_source.inventory(node).gpus}
    for r in whole:
        assert r.uuid in inventory
        assert 0.0 <= r.util_gpu <= 1.0 and 0.0 <= r.util_mem <= 1.0
        assert r.mem_total_bytes >= 1 << 30 and 0 <= r.mem_used_bytes <= r.mem_total_bytes
        assert abs(r.mem_total_bytes / (1 << 20) - inventory[r.uuid].memory_mb) <= 1
        if r.power_w is not None:
            assert 1.0 <= r.power_w <= 1500.0 and 10.0 <= r.power_limit_w <= 1500.0  # watts, not milliwatts
        if r.temp_c is not None:
            assert 5.0 <= r.temp_c <= 110.0
        if r.sm_clock_mhz is not None:
            assert 0.0 <= r.sm_clock_mhz <= 4000.0  # MHz
        assert r.processes is not None  # the first sample polls processes
        assert all(p.pid > 0 and p.used_bytes >= 0 for p in r.processes)


def test_nvml_polls_processes_only_every_ten_seconds(nvml_source):
    node = nvml_source.node_names()[0]
    nvml_source.sample(node, now=5000.0)
    soon = nvml_source.sample(node, now=5001.0)
    later = nvml_source.sample(node, now=5000.0 + gpus.PROCESS_POLL_SECONDS)
    assert all(r.processes is None for r in soon if r.slice_index == -1)
    assert all(r.processes is not None for r in later if r.slice_index == -1)
