"""The `health` action: what the GPUs, the engine and the process are doing right now.

Engine numbers come from the Prometheus collectors vLLM registers in this process, so they are
the same figures `vllm serve` exports on /metrics. GPU numbers come from NVML; without a GPU the
list is empty and `gpu_error` says why.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from pydantic import BaseModel

from handler.contract import ChunkGpu

# vLLM V1 metric names (checked on 0.32); the prefix-cache pair are counters (`_total` samples).
_GAUGES = {
    "running": "vllm:num_requests_running",
    "waiting": "vllm:num_requests_waiting",
    "kv_cache_usage": "vllm:kv_cache_usage_perc",
}
_COUNTERS = {
    "prefix_cache_queries": "vllm:prefix_cache_queries",
    "prefix_cache_hits": "vllm:prefix_cache_hits",
    "prompt_tokens": "vllm:prompt_tokens",
    "generation_tokens": "vllm:generation_tokens",
    "requests_finished": "vllm:request_success",
    "preemptions": "vllm:num_preemptions",
}


class GpuStats(BaseModel):
    index: int
    name: str
    memory_used_mb: float
    memory_total_mb: float
    memory_percent: float
    utilization_percent: float | None
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None


class EngineStats(BaseModel):
    model: str | None
    max_model_len: int | None
    vllm_version: str | None
    cold_start_s: float | None
    running: int | None
    waiting: int | None
    # vLLM V1 has no swapping; preemptions (recompute) are what replaced it.
    swapped: int | None = None
    preemptions: int | None
    kv_cache_usage_percent: float | None
    prefix_cache_queries: int | None
    prefix_cache_hits: int | None
    prefix_cache_hit_rate: float | None
    requests_finished: int | None
    prompt_tokens: int | None
    generation_tokens: int | None


class SystemStats(BaseModel):
    ram_used_mb: float
    ram_total_mb: float
    ram_percent: float
    process_rss_mb: float
    threads: int
    asyncio_tasks: int | None
    cpu_count: int | None


class HealthReport(BaseModel):
    status: str
    worker_id: str
    uptime_s: float
    gpus: list[GpuStats]
    gpu_error: str | None
    engine: EngineStats
    system: SystemStats
    jobs_in_progress: int
    chunks_done: int
    last_error: str | None
    engine_busy_s: float = 0.0  # the worker's busy clock (handler/pipeline.py) since start
    requests_in_flight: int = 0


class GpuSampler:
    """NVML readings taken while a chunk runs, folded per GPU into the chunk's summary."""

    def __init__(self, read: Callable[[], tuple[list[GpuStats], str | None]]) -> None:
        self._read = read
        self._seen: dict[int, list[GpuStats]] = {}

    def take(self) -> None:
        readings, _ = self._read()
        for reading in readings:
            self._seen.setdefault(reading.index, []).append(reading)

    def summary(self) -> list[ChunkGpu]:
        gpus = []
        for index, readings in sorted(self._seen.items()):
            utilization = [
                r.utilization_percent for r in readings if r.utilization_percent is not None
            ]
            gpus.append(
                ChunkGpu(
                    index=index,
                    name=readings[-1].name,
                    samples=len(readings),
                    utilization_percent=round(sum(utilization) / len(utilization), 1)
                    if utilization
                    else None,
                    memory_used_mb=max(r.memory_used_mb for r in readings),
                    memory_total_mb=readings[-1].memory_total_mb,
                )
            )
        return gpus


def gpu_stats(nvml: Any = None) -> tuple[list[GpuStats], str | None]:
    """Per-GPU readings through NVML, or an empty list and the reason there are none."""
    if nvml is None:
        try:
            import pynvml
        except ImportError as exc:  # the handler extra brings it; say so if it is missing
            return [], f"nvidia-ml-py is not installed: {exc}"
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError has many subclasses; all mean "no GPU"
        return [], f"NVML unavailable: {exc}"
    try:
        return [_one_gpu(nvml, i) for i in range(nvml.nvmlDeviceGetCount())], None
    except Exception as exc:  # a half-broken driver still gets a health answer
        return [], f"NVML query failed: {exc}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # a shutdown failure changes nothing reported
            pass


def _one_gpu(nvml: Any, index: int) -> GpuStats:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    name = nvml.nvmlDeviceGetName(handle)
    mib = 1024 * 1024
    return GpuStats(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        memory_used_mb=round(memory.used / mib, 1),
        memory_total_mb=round(memory.total / mib, 1),
        memory_percent=round(100.0 * memory.used / memory.total, 2) if memory.total else 0.0,
        utilization_percent=_optional(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        temperature_c=_optional(
            lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        ),
        power_w=_optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
        power_limit_w=_optional(lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0),
    )


def _optional(read: Any) -> float | None:
    # Some readings are "not supported" on some boards (MIG slices, passive cards).
    try:
        return float(read())
    except Exception:
        return None


def metric_totals(registry: Any = None) -> dict[str, float]:
    """Sum every sample of each vLLM metric over its labels (model, engine index)."""
    if registry is None:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    totals: dict[str, float] = {}
    for family in registry.collect():
        if not family.name.startswith("vllm:"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket", "_sum", "_count")):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def engine_stats(
    totals: dict[str, float],
    *,
    model: str | None,
    max_model_len: int | None,
    vllm_version: str | None,
    cold_start_s: float | None,
) -> EngineStats:
    def gauge(key: str) -> float | None:
        return totals.get(_GAUGES[key])

    def counter(key: str) -> int | None:
        name = _COUNTERS[key]
        value = totals.get(f"{name}_total", totals.get(name))
        return None if value is None else int(value)

    queries, hits = counter("prefix_cache_queries"), counter("prefix_cache_hits")
    usage = gauge("kv_cache_usage")
    running, waiting = gauge("running"), gauge("waiting")
    return EngineStats(
        model=model,
        max_model_len=max_model_len,
        vllm_version=vllm_version,
        cold_start_s=None if cold_start_s is None else round(cold_start_s, 2),
        running=None if running is None else int(running),
        waiting=None if waiting is None else int(waiting),
        preemptions=counter("preemptions"),
        kv_cache_usage_percent=None if usage is None else round(100.0 * usage, 2),
        prefix_cache_queries=queries,
        prefix_cache_hits=hits,
        prefix_cache_hit_rate=round(hits / queries, 4) if queries and hits is not None else None,
        requests_finished=counter("requests_finished"),
        prompt_tokens=counter("prompt_tokens"),
        generation_tokens=counter("generation_tokens"),
    )


def system_stats(loops: Iterable[asyncio.AbstractEventLoop] = ()) -> SystemStats:
    memory = psutil.virtual_memory()
    process = psutil.Process(os.getpid())
    mib = 1024 * 1024
    tasks: int | None = None
    for loop in loops:
        tasks = (tasks or 0) + len(asyncio.all_tasks(loop))
    return SystemStats(
        ram_used_mb=round((memory.total - memory.available) / mib, 1),
        ram_total_mb=round(memory.total / mib, 1),
        ram_percent=memory.percent,
        process_rss_mb=round(process.memory_info().rss / mib, 1),
        threads=threading.active_count(),
        asyncio_tasks=tasks,
        cpu_count=os.cpu_count(),
    )


def process_uptime() -> float:
    """Seconds since this worker process started, cold start included."""
    return round(time.time() - psutil.Process(os.getpid()).create_time(), 2)
