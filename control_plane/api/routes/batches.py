"""`/v1/batches`: create, retrieve, list, cancel; hotbatch's dead letters and redrive."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path, Query

from control_plane.api.deps import AwsDep, KickDep, TenantDep
from control_plane.api.openapi import errors
from control_plane.metering.estimate import estimate_file
from control_plane.models import (
    Batch,
    BatchEstimate,
    CreateBatchBody,
    CursorPage,
    DeadLetter,
    EstimateBody,
    RetryBody,
)
from control_plane.services import batches as batch_service
from control_plane.services.redrive import redrive

router = APIRouter(tags=["batches"])

# Ids are ~31 characters; a longer one cannot exist (and would not fit a DynamoDB key).
BatchId = Annotated[str, Path(max_length=64)]
After = Annotated[str | None, Query(max_length=64)]


@router.post("/batches", responses=errors(404, 429, 503))
def create_batch(
    aws: AwsDep,
    tenant: TenantDep,
    kick: KickDep,
    body: CreateBatchBody,
    background: BackgroundTasks,
) -> Batch:
    return batch_service.submit_batch(
        aws, tenant_id=tenant, body=body, background=background.add_task, kick=kick
    )


@router.post("/batches/estimate", responses=errors(400, 404))
def estimate_batch(aws: AwsDep, tenant: TenantDep, body: EstimateBody) -> BatchEstimate:
    """hotbatch extra: requests, tokens, duration and cost of a file before it is submitted."""
    return estimate_file(aws, tenant_id=tenant, body=body)


@router.get("/batches")
def list_batches(
    aws: AwsDep,
    tenant: TenantDep,
    after: After = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> CursorPage[Batch]:
    return batch_service.list_batches(aws, tenant_id=tenant, limit=limit, after=after)


@router.get("/batches/{batch_id}", responses=errors(404))
def retrieve_batch(aws: AwsDep, tenant: TenantDep, batch_id: BatchId) -> Batch:
    return batch_service.get_batch(aws, tenant_id=tenant, batch_id=batch_id)


@router.post("/batches/{batch_id}/cancel", responses=errors(404, 409))
def cancel_batch(aws: AwsDep, tenant: TenantDep, kick: KickDep, batch_id: BatchId) -> Batch:
    return batch_service.cancel_batch(aws, tenant_id=tenant, batch_id=batch_id, kick=kick)


@router.get("/batches/{batch_id}/dead_letters", responses=errors(404))
def list_dead_letters(
    aws: AwsDep,
    tenant: TenantDep,
    batch_id: BatchId,
    after: Annotated[str | None, Query(max_length=1000)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CursorPage[DeadLetter]:
    """hotbatch extra: the requests that failed for good, by custom_id (cursor: `after`)."""
    return batch_service.list_dead_letters(
        aws, tenant_id=tenant, batch_id=batch_id, limit=limit, after=after
    )


@router.post("/batches/{batch_id}/retry", responses=errors(404, 409))
def retry_dead_letters(
    aws: AwsDep,
    tenant: TenantDep,
    kick: KickDep,
    batch_id: BatchId,
    body: RetryBody | None = None,
) -> Batch:
    """hotbatch extra: redrive the dead letters (all, or `custom_ids`) of a completed batch."""
    batch = redrive(
        aws, tenant_id=tenant, batch_id=batch_id, custom_ids=body.custom_ids if body else None
    )
    kick(f"redrive {batch_id}")
    return batch
