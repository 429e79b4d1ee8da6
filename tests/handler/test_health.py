"""Health readings: NVML (faked on CPU, real where a GPU exists) and vLLM's Prometheus metrics."""

from __future__ import annotations

import types
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from handler import health


class FakeNvmlError(Exception):
    pass


def fake_nvml(count: int = 2, *, init_fails: bool = False) -> Any:
    """An NVML double with the calls and units of nvidia-ml-py (bytes, mW, %)."""

    def init() -> None:
        if init_fails:
            raise FakeNvmlError("NVML Shared Library Not Found")

    def no_power(_handle: int) -> float:
        raise FakeNvmlError("Not Supported")

    return types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: count,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=lambda handle: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(
            used=(handle + 1) * 10 * 1024**3, total=80 * 1024**3
        ),
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=87, memory=40),
        nvmlDeviceGetTemperature=lambda handle, sensor: 61,
        nvmlDeviceGetPowerUsage=lambda handle: 350_500 if handle == 0 else no_power(handle),
        nvmlDeviceGetEnforcedPowerLimit=lambda handle: 700_000,
    )


def test_gpu_stats_convert_nvml_units() -> None:
    gpus, error = health.gpu_stats(fake_nvml())
    assert error is None and [gpu.index for gpu in gpus] == [0, 1]
    first, second = gpus
    assert first.name == "NVIDIA H100 80GB HBM3"
    assert first.memory_used_mb == 10240.0 and first.memory_total_mb == 81920.0
    assert first.memory_percent == 12.5 and second.memory_percent == 25.0
    assert first.utilization_percent == 87.0 and first.temperature_c == 61.0
    assert first.power_w == 350.5 and first.power_limit_w == 700.0
    assert second.power_w is None  # "Not Supported" on that board is not an error


def test_gpu_stats_without_a_driver_give_an_empty_list_and_the_reason() -> None:
    gpus, error = health.gpu_stats(fake_nvml(init_fails=True))
    assert gpus == [] and error is not None and "Shared Library Not Found" in error


@pytest.mark.gpu
def test_gpu_stats_on_a_real_gpu() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pytest.skip("no NVIDIA GPU here; test_gpu_stats_convert_nvml_units is the CPU twin")
    gpus, error = health.gpu_stats()
    assert error is None and gpus
    assert all(0 < gpu.memory_total_mb and 0 <= gpu.memory_percent <= 100 for gpu in gpus)
    assert all(gpu.utilization_percent is not None for gpu in gpus)


def test_engine_stats_sum_labels_and_compute_hit_rate() -> None:
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    running = Gauge("vllm:num_requests_running", "", labels, registry=registry)
    waiting = Gauge("vllm:num_requests_waiting", "", labels, registry=registry)
    kv = Gauge("vllm:kv_cache_usage_perc", "", labels, registry=registry)
    queries = Counter("vllm:prefix_cache_queries", "", labels, registry=registry)
    hits = Counter("vllm:prefix_cache_hits", "", labels, registry=registry)
    Gauge("unrelated_metric", "", registry=registry).set(99)
    for engine, count in (("0", 3), ("1", 4)):
        running.labels("m", engine).set(count)
        waiting.labels("m", engine).set(10)
    kv.labels("m", "0").set(0.25)
    queries.labels("m", "0").inc(200)
    hits.labels("m", "0").inc(50)

    totals = health.metric_totals(registry)
    assert "unrelated_metric" not in totals
    stats = health.engine_stats(
        totals, model="m", max_model_len=512, vllm_version="0.32.0", cold_start_s=31.234
    )
    assert stats.running == 7 and stats.waiting == 20
    assert stats.kv_cache_usage_percent == 25.0
    assert stats.prefix_cache_queries == 200 and stats.prefix_cache_hits == 50
    assert stats.prefix_cache_hit_rate == 0.25
    assert stats.cold_start_s == 31.23
    assert stats.requests_finished is None  # absent metric stays unknown, not zero


def test_system_stats_read_this_process() -> None:
    stats = health.system_stats()
    assert stats.ram_total_mb > stats.ram_used_mb > 0
    assert stats.process_rss_mb > 0 and stats.threads >= 1
    assert stats.asyncio_tasks is None  # no loop given
