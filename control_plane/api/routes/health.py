"""`GET /v1/health`: the service's health over the last hour, judged from the tick's samples.

Behind an API key like every other route: it tells worker counts, GPU models and the depth of
the queue across every tenant, which is nobody else's business; any tenant's key may read it
(the figures carry no ids), so a client can check the service before submitting a batch.
"""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.api.deps import AwsDep, TenantDep
from control_plane.health import report as health
from control_plane.ids import now_s

router = APIRouter(tags=["health"])


@router.get("/health")
def get_health(aws: AwsDep, tenant: TenantDep) -> health.HealthResponse:
    return health.report(aws.table, now=now_s())
