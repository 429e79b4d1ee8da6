"""`GET /v1/health`'s judgement of the health samples: each component's thresholds, the GPU
rated only while work waited, and the overall status the worst of them."""

from __future__ import annotations

from typing import Any

from control_plane.health.report import (
    build_report,
    endpoint_status,
    gpu_status,
    queue_status,
    workers_status,
)
from control_plane.health.sample import HealthSample, WorkerCounts, WorkerReading


def test_component_thresholds() -> None:
    assert [gpu_status(v) for v in (90, 75, 74.9, 50, 49.9)] == [
        "healthy",
        "healthy",
        "degraded",
        "degraded",
        "down",
    ]
    assert [workers_status(v) for v in (0.0, 0.25, 0.3, 0.5, 0.51)] == [
        "healthy",
        "healthy",
        "degraded",
        "degraded",
        "down",
    ]
    assert [queue_status(v) for v in (None, 29 * 60, 30 * 60, 7199, 7200)] == [
        "healthy",
        "healthy",
        "degraded",
        "degraded",
        "down",
    ]
    assert [endpoint_status(b) for b in ("closed", "half_open", "open")] == [
        "healthy",
        "degraded",
        "down",
    ]


def sample(at: int, *, waiting: bool, gpu: float | None = None, **extra: Any) -> HealthSample:
    readings = []
    if gpu is not None:
        report = {"status": "ok", "worker_id": "w1", "gpus": [{"utilization_percent": gpu}]}
        reading = WorkerReading.from_report(report)
        assert reading is not None
        readings.append(reading)
    fields: dict[str, Any] = {
        "at": at,
        "expires_at": at + 1,
        "schedule": "always",
        "in_schedule": True,
        "keep_hot_workers": 1,
        "work_waiting": waiting,
        "pending_chunks": 1 if waiting else 0,
        "in_flight_chunks": 0,
        "workers": WorkerCounts(idle=1),
        "readings": readings,
    }
    return HealthSample(**{**fields, **extra})


def test_gpu_is_judged_only_while_work_waits_and_overall_is_the_worst() -> None:
    idle = build_report([sample(10, waiting=False, gpu=3.0)], breaker="closed", now=20)
    assert idle.components.gpu.status == "healthy"
    assert idle.components.gpu.note and "nothing waited" in idle.components.gpu.note
    assert idle.status == "healthy"

    busy = [
        sample(10, waiting=True, gpu=40.0, workers=WorkerCounts(running=3, idle=1)),
        sample(20, waiting=True, gpu=50.0, workers=WorkerCounts(running=4)),
    ]
    report = build_report(busy, breaker="half_open", now=30)
    assert report.components.gpu.status == "down"  # mean 45 %
    assert report.components.gpu.metrics["mean_utilization_percent"] == 45.0
    assert report.components.workers.status == "healthy"  # idle share 12.5 %
    assert report.components.endpoint.status == "degraded"
    assert report.status == "down"

    stuck = [sample(10, waiting=True, oldest_pending_age_s=3 * 3600)]
    assert build_report(stuck, breaker="closed", now=20).components.queue.status == "down"
    nothing = build_report([], breaker="closed", now=20)
    assert nothing.status == "degraded" and nothing.samples == 0
