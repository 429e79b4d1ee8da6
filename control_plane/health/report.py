"""`GET /v1/health`: the service's health judged from the last hour of the tick's samples.

Components, each `healthy` / `degraded` / `down`, the overall status being the worst:
- gpu: mean GPU utilisation of the worker readings taken while work waited (an idle GPU with
  nothing to do is not a fault): the readings workers take over each chunk (NVML, sampled
  while the chunk runs) and those of keep-hot pings on samples where work waited;
- workers: the share of warm workers sitting idle while work waited;
- queue: how long the oldest pending chunk (backfill aside) has waited;
- endpoint: the dispatch circuit breaker (closed, half open, open).
"""

from __future__ import annotations

from statistics import fmean
from typing import Literal

from pydantic import BaseModel, Field

from control_plane.health.sample import HealthSample
from control_plane.store import Table
from control_plane.store import endpoint as endpoint_store
from control_plane.store import health as health_store

Status = Literal["healthy", "degraded", "down"]
Metric = float | int | str | None
HOUR_S = 3600
# An hour of samples at the local stack's 1 s tick; AWS's 60 s tick stores 60.
MAX_SAMPLES = 3600

# Thresholds. GPU: share of time a kernel ran (NVML). Workers: idle share of warm workers
# while chunks waited. Queue: a 200-chunk batch in a window of a few workers keeps its last
# chunk pending for an hour or more by design, so only long waits count.
GPU_HEALTHY_PERCENT, GPU_DEGRADED_PERCENT = 75.0, 50.0
IDLE_HEALTHY_SHARE, IDLE_DEGRADED_SHARE = 0.25, 0.50
QUEUE_HEALTHY_S, QUEUE_DEGRADED_S = 30 * 60, 2 * 3600
_RANK: dict[Status, int] = {"healthy": 0, "degraded": 1, "down": 2}


# --- the response of GET /v1/health ----------------------------------------------------------


class Component(BaseModel):
    status: Status
    note: str | None = None
    metrics: dict[str, Metric] = Field(default_factory=dict)


class Components(BaseModel):
    gpu: Component
    workers: Component
    queue: Component
    endpoint: Component


class HealthResponse(BaseModel):
    object: Literal["health"] = "health"
    status: Status
    checked_at: int
    window_s: int = HOUR_S
    samples: int
    components: Components


def gpu_status(utilization_percent: float) -> Status:
    if utilization_percent >= GPU_HEALTHY_PERCENT:
        return "healthy"
    return "degraded" if utilization_percent >= GPU_DEGRADED_PERCENT else "down"


def workers_status(idle_share: float) -> Status:
    if idle_share <= IDLE_HEALTHY_SHARE:
        return "healthy"
    return "degraded" if idle_share <= IDLE_DEGRADED_SHARE else "down"


def queue_status(oldest_age_s: float | None) -> Status:
    if oldest_age_s is None or oldest_age_s < QUEUE_HEALTHY_S:
        return "healthy"
    return "degraded" if oldest_age_s < QUEUE_DEGRADED_S else "down"


def endpoint_status(breaker: str) -> Status:
    if breaker == "closed":
        return "healthy"
    return "degraded" if breaker == "half_open" else "down"


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=_RANK.__getitem__, default="healthy")


def report(table: Table, *, now: int) -> HealthResponse:
    """The last hour's samples, judged; the breaker as the tick last left it."""
    items = health_store.samples_since(table, since=now - HOUR_S, limit=MAX_SAMPLES)
    samples = [HealthSample.model_validate(item) for item in items]
    return build_report(samples, breaker=endpoint_store.breaker_state(table), now=now)


def build_report(samples: list[HealthSample], *, breaker: str, now: int) -> HealthResponse:
    """Judge the last hour's samples (any order); `breaker` is the live circuit state."""
    samples = sorted(samples, key=lambda s: s.at)
    components = Components(
        gpu=_gpu(samples),
        workers=_workers(samples),
        queue=_queue(samples),
        endpoint=_endpoint(samples, breaker),
    )
    if not samples:
        stale = "no health sample in the last hour: is the tick running?"
        for component in (components.gpu, components.workers, components.queue):
            component.status, component.note = "degraded", stale
    parts: list[Status] = [
        components.gpu.status,
        components.workers.status,
        components.queue.status,
        components.endpoint.status,
    ]
    return HealthResponse(
        status=worst(parts), checked_at=now, samples=len(samples), components=components
    )


def _has_work_readings(sample: HealthSample) -> bool:
    return any(reading.status == "chunk" for reading in sample.readings)


def _gpu(samples: list[HealthSample]) -> Component:
    waiting = [s for s in samples if s.work_waiting or _has_work_readings(s)]
    values = [
        value
        for s in waiting
        for reading in s.readings
        # A chunk's readings were taken while it ran, whatever the queue is at the sample.
        if (s.work_waiting or reading.status == "chunk")
        and (value := reading.mean_gpu_utilization()) is not None
    ]
    latest = next((r for s in reversed(samples) for r in s.readings), None)
    metrics: dict[str, Metric] = {
        "readings_while_waiting": len(values),
        "latest_utilization_percent": latest.mean_gpu_utilization() if latest else None,
        "latest_memory_percent": _mean([g.memory_percent for g in latest.gpus]) if latest else None,
        "latest_kv_cache_usage_percent": latest.kv_cache_usage_percent if latest else None,
        "latest_reading_worker": latest.worker_id if latest else None,
    }
    if not waiting:
        note = "nothing waited: GPUs idle by design"
        return Component(status="healthy", note=note, metrics=metrics)
    if not values:
        note = "no GPU reading was taken while work waited"
        if latest is not None and latest.gpu_error:
            note += f" (workers report: {latest.gpu_error})"
        return Component(status="healthy", note=note, metrics=metrics)
    mean = round(fmean(values), 1)
    metrics["mean_utilization_percent"] = mean
    return Component(status=gpu_status(mean), metrics=metrics)


def _workers(samples: list[HealthSample]) -> Component:
    counted = [s for s in samples if s.workers is not None]
    waiting = [s for s in counted if s.work_waiting and s.workers and s.workers.warm]
    latest = counted[-1].workers if counted else None
    metrics: dict[str, Metric] = {
        "warm_mean": _mean([s.workers.warm for s in counted if s.workers]),
        "warm_latest": latest.warm if latest else None,
        "initializing_latest": latest.initializing if latest else None,
        "unhealthy_latest": latest.unhealthy if latest else None,
        "keep_hot_target": samples[-1].keep_hot_workers if samples else None,
    }
    if not waiting:
        note = "nothing waited on a warm worker: idle is expected"
        return Component(status="healthy", note=note, metrics=metrics)
    share = fmean(s.workers.idle / s.workers.warm for s in waiting if s.workers)
    metrics["idle_share_while_waiting"] = round(share, 3)
    status = workers_status(share)
    if latest is not None and latest.unhealthy and status == "healthy":
        note = "RunPod reports unhealthy workers"
        return Component(status="degraded", note=note, metrics=metrics)
    return Component(status=status, metrics=metrics)


def _queue(samples: list[HealthSample]) -> Component:
    latest = samples[-1] if samples else None
    ages = [s.oldest_pending_age_s for s in samples if s.oldest_pending_age_s is not None]
    metrics: dict[str, Metric] = {
        "oldest_pending_age_s": latest.oldest_pending_age_s if latest else None,
        "oldest_backfill_age_s": latest.oldest_backfill_age_s if latest else None,
        "max_pending_age_s": max(ages, default=None),
        "pending_chunks": latest.pending_chunks if latest else None,
        "in_flight_chunks": latest.in_flight_chunks if latest else None,
        "pending_chunks_max": max((s.pending_chunks for s in samples), default=None),
    }
    return Component(
        status=queue_status(latest.oldest_pending_age_s if latest else None), metrics=metrics
    )


def _endpoint(samples: list[HealthSample], breaker: str) -> Component:
    metrics: dict[str, Metric] = {
        "breaker": breaker,
        "open_share": _mean([1.0 if s.breaker == "open" else 0.0 for s in samples]),
        "window_latest": samples[-1].window if samples else None,
        "health_read_failures": sum(1 for s in samples if s.runpod_error),
    }
    status = endpoint_status(breaker)
    latest_error = samples[-1].runpod_error if samples else None
    if status == "healthy" and latest_error:
        return Component(
            status="degraded", note=f"RunPod /health failed: {latest_error}", metrics=metrics
        )
    return Component(status=status, metrics=metrics)


def _mean(values: list[float | None] | list[float] | list[int]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(fmean(present), 3) if present else None
