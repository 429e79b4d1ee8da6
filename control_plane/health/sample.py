"""The health sample the tick stores every tick (pk HEALTH, sk SAMPLE#{at}): the endpoint's
worker and job counts, the worker readings harvested from keep-hot pings, the queue and the
breaker. `report` judges an hour of them."""

from __future__ import annotations

from statistics import fmean
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SAMPLE_TTL_S = 2 * 24 * 3600


class GpuReading(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = ""
    utilization_percent: float | None = None
    memory_percent: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None


class WorkerReading(BaseModel):
    """What keeps its value from a worker's `{"action": "health"}` answer (handler/health.py's
    HealthReport, flattened; every field optional so an older worker image still parses)."""

    model_config = ConfigDict(extra="ignore")

    worker_id: str = ""
    status: str = ""
    uptime_s: float | None = None
    gpus: list[GpuReading] = Field(default_factory=list)
    gpu_error: str | None = None
    kv_cache_usage_percent: float | None = None
    running: int | None = None
    waiting: int | None = None
    prefix_cache_hit_rate: float | None = None
    preemptions: int | None = None
    ram_percent: float | None = None
    process_rss_mb: float | None = None
    jobs_in_progress: int | None = None
    chunks_done: int | None = None
    last_error: str | None = None

    @classmethod
    def from_report(cls, output: Any, *, worker_id: str | None = None) -> WorkerReading | None:
        if not isinstance(output, dict) or output.get("status") is None:
            return None
        flat: dict[str, Any] = {}
        for part in ("system", "engine"):
            nested = output.get(part)
            if isinstance(nested, dict):
                flat.update(nested)
        flat.update(output)
        if worker_id and not flat.get("worker_id"):
            flat["worker_id"] = worker_id
        return cls.model_validate(flat)

    def mean_gpu_utilization(self) -> float | None:
        values = [g.utilization_percent for g in self.gpus if g.utilization_percent is not None]
        return fmean(values) if values else None


class WorkerCounts(BaseModel):
    """RunPod `/health` → `workers`."""

    model_config = ConfigDict(extra="ignore")

    idle: int = 0
    initializing: int = 0
    ready: int = 0
    running: int = 0
    throttled: int = 0
    unhealthy: int = 0

    @property
    def warm(self) -> int:
        return self.idle + self.running


class JobCounts(BaseModel):
    """RunPod `/health` → `jobs` (camelCase there)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    completed: int = 0
    failed: int = 0
    in_progress: int = Field(default=0, alias="inProgress")
    in_queue: int = Field(default=0, alias="inQueue")
    retried: int = 0


class HealthSample(BaseModel):
    at: int
    expires_at: int  # the table's TTL attribute
    schedule: str
    in_schedule: bool
    keep_hot_workers: int
    work_waiting: bool
    work_expected: bool | None = None  # `learned`: the forecast expects a recurring batch
    lead_s: int | None = None  # `learned`: how long ahead of a recurring batch it warms
    pending_chunks: int
    in_flight_chunks: int
    oldest_pending_age_s: int | None = None  # high and normal priority
    oldest_backfill_age_s: int | None = None
    workers: WorkerCounts | None = None  # None: RunPod's /health was not read this tick
    jobs: JobCounts | None = None
    runpod_error: str | None = None
    readings: list[WorkerReading] = Field(default_factory=list)  # harvested this tick
    pings_sent: int = 0
    pings_outstanding: int = 0
    breaker: str = "closed"
    window: int = 0
    failures: int = 0
