"""`GET /v1/health/samples`: the tick's health samples over the last hours as time series, cut
into a few hundred buckets so the dashboard can chart GPU utilisation and worker idle share.

Each bucket averages what its samples saw: the GPU readings harvested in it (utilisation,
memory, KV cache), the idle share of warm workers (all the time, and only while work waited,
which is what `GET /v1/health` rates), the warm workers, and the deepest queue.
"""

from __future__ import annotations

from statistics import fmean
from typing import Literal

from pydantic import BaseModel

from control_plane.health.sample import SAMPLE_TTL_S, HealthSample
from control_plane.store import Table
from control_plane.store import health as health_store

DEFAULT_WINDOW_S = 6 * 3600
MAX_POINTS = 240
# Samples read per call, newest first. AWS's 60 s tick stores 2,880 in the two days they live,
# so every one of them fits; the local stack's 1 s tick fills this in 70 minutes, and the
# series then starts later than asked (`truncated`).
MAX_SAMPLES = 4000


class HealthPoint(BaseModel):
    at: int  # start of the bucket (Unix seconds)
    samples: int
    gpu_utilization_percent: float | None = None  # mean of the GPU readings in the bucket
    gpu_memory_percent: float | None = None
    kv_cache_usage_percent: float | None = None
    idle_share: float | None = None  # idle / warm workers, samples with a warm worker
    idle_share_while_waiting: float | None = None  # the same, only while work waited
    warm_workers: float | None = None
    work_waiting_share: float  # share of the bucket's samples in which work waited
    pending_chunks: int  # the most seen in the bucket
    in_flight_chunks: int


class HealthSeries(BaseModel):
    object: Literal["health.samples"] = "health.samples"
    since: int
    until: int
    step_s: int
    samples: int
    truncated: bool  # MAX_SAMPLES were read: the series covers only the newest of the window
    points: list[HealthPoint]


def window(*, since: int | None, step: int | None, now: int) -> tuple[int, int]:
    """(since, step) within what is stored: at most two days back, at most MAX_POINTS buckets."""
    start = max(now - SAMPLE_TTL_S, min(now - DEFAULT_WINDOW_S if since is None else since, now))
    span = max(now - start, 1)
    fewest = -(-span // MAX_POINTS)  # ceil: the step that makes MAX_POINTS buckets
    return start, max(step or 1, fewest)


def history(table: Table, *, since: int | None, step: int | None, now: int) -> HealthSeries:
    start, step_s = window(since=since, step=step, now=now)
    items = health_store.samples_since(table, since=start, limit=MAX_SAMPLES)
    samples = [HealthSample.model_validate(item) for item in items]
    return HealthSeries(
        since=start,
        until=now,
        step_s=step_s,
        samples=len(samples),
        truncated=len(samples) >= MAX_SAMPLES,
        points=downsample(samples, since=start, step=step_s),
    )


def downsample(samples: list[HealthSample], *, since: int, step: int) -> list[HealthPoint]:
    """One point per bucket of `step` seconds from `since` that holds a sample, oldest first;
    a bucket without samples is left out (a gap, not a zero)."""
    buckets: dict[int, list[HealthSample]] = {}
    for sample in samples:
        if sample.at >= since:
            buckets.setdefault(since + (sample.at - since) // step * step, []).append(sample)
    return [_point(at, buckets[at]) for at in sorted(buckets)]


def _point(at: int, samples: list[HealthSample]) -> HealthPoint:
    readings = [reading for sample in samples for reading in sample.readings]
    counted = [s.workers for s in samples if s.workers is not None]
    warm = [w for w in counted if w.warm]
    warm_waiting = [
        s.workers for s in samples if s.work_waiting and s.workers is not None and s.workers.warm
    ]
    return HealthPoint(
        at=at,
        samples=len(samples),
        gpu_utilization_percent=_mean([r.mean_gpu_utilization() for r in readings]),
        gpu_memory_percent=_mean([g.memory_percent for r in readings for g in r.gpus]),
        kv_cache_usage_percent=_mean([r.kv_cache_usage_percent for r in readings]),
        idle_share=_mean([w.idle / w.warm for w in warm]),
        idle_share_while_waiting=_mean([w.idle / w.warm for w in warm_waiting]),
        warm_workers=_mean([float(w.warm) for w in counted]),
        work_waiting_share=round(fmean(1.0 if s.work_waiting else 0.0 for s in samples), 3),
        pending_chunks=max(s.pending_chunks for s in samples),
        in_flight_chunks=max(s.in_flight_chunks for s in samples),
    )


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(fmean(present), 3) if present else None
