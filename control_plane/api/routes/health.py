"""`GET /v1/health`: the service's health over the last hour, judged from the tick's samples;
`GET /v1/health/samples`: the same samples over the last hours as series, for the dashboard.

Behind an API key like every other route: it tells worker counts, GPU models and the depth of
the queue across every tenant, which is nobody else's business; any tenant's key may read it
(the figures carry no ids), so a client can check the service before submitting a batch.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from control_plane.api.deps import AwsDep, TenantDep
from control_plane.health import history
from control_plane.health import report as health
from control_plane.ids import now_s

router = APIRouter(tags=["health"])


@router.get("/health")
def get_health(aws: AwsDep, tenant: TenantDep) -> health.HealthResponse:
    return health.report(aws.table, now=now_s())


@router.get("/health/samples")
def get_health_samples(
    aws: AwsDep,
    tenant: TenantDep,
    since: Annotated[int | None, Query(ge=0)] = None,
    step: Annotated[int | None, Query(ge=1, le=86_400)] = None,
) -> history.HealthSeries:
    """hotbatch extra: samples from `since` (Unix seconds; default six hours ago, at most the
    two days they are kept) in buckets of `step` seconds (raised to keep ≤ 240 points)."""
    return history.history(aws.table, since=since, step=step, now=now_s())
