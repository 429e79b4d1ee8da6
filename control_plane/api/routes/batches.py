"""`/v1/batches`: create, retrieve, list, cancel; hotbatch's dead letters and redrive."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query

from control_plane import batches as batch_service
from control_plane.api.deps import AwsDep, KickDep, TenantDep
from control_plane.models import Batch, CreateBatchBody, CursorPage, DeadLetter, RetryBody
from control_plane.redrive import redrive

router = APIRouter(tags=["batches"])


@router.post("/batches")
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


@router.get("/batches")
def list_batches(
    aws: AwsDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> CursorPage[Batch]:
    return batch_service.list_batches(aws, tenant_id=tenant, limit=limit, after=after)


@router.get("/batches/{batch_id}")
def retrieve_batch(aws: AwsDep, tenant: TenantDep, batch_id: str) -> Batch:
    return batch_service.get_batch(aws, tenant_id=tenant, batch_id=batch_id)


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(aws: AwsDep, tenant: TenantDep, batch_id: str) -> Batch:
    return batch_service.cancel_batch(aws, tenant_id=tenant, batch_id=batch_id)


@router.get("/batches/{batch_id}/dead_letters")
def list_dead_letters(
    aws: AwsDep,
    tenant: TenantDep,
    batch_id: str,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CursorPage[DeadLetter]:
    """hotbatch extra: the requests that failed for good, by custom_id (cursor: `after`)."""
    return batch_service.list_dead_letters(
        aws, tenant_id=tenant, batch_id=batch_id, limit=limit, after=after
    )


@router.post("/batches/{batch_id}/retry")
def retry_dead_letters(
    aws: AwsDep, tenant: TenantDep, batch_id: str, body: RetryBody | None = None
) -> Batch:
    """hotbatch extra: redrive the dead letters (all, or `custom_ids`) of a completed batch."""
    return redrive(
        aws, tenant_id=tenant, batch_id=batch_id, custom_ids=body.custom_ids if body else None
    )
