"""`/v1/batches`: create, retrieve, list, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query

from control_plane import batches as batch_service
from control_plane.api.deps import AwsDep, TenantDep
from control_plane.models import Batch, CreateBatchBody, CursorPage
from control_plane.split_launch import start_split
from control_plane.store import batches as batch_store

router = APIRouter(tags=["batches"])


@router.post("/batches")
def create_batch(
    aws: AwsDep, tenant: TenantDep, body: CreateBatchBody, background: BackgroundTasks
) -> Batch:
    batch = batch_service.create_batch(aws, tenant_id=tenant, body=body)
    start_split(aws, batch.id, background=background.add_task)
    return batch


@router.get("/batches")
def list_batches(
    aws: AwsDep,
    tenant: TenantDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> CursorPage[Batch]:
    return batch_store.list_batches(aws.table, tenant_id=tenant, limit=limit, after=after)


@router.get("/batches/{batch_id}")
def retrieve_batch(aws: AwsDep, tenant: TenantDep, batch_id: str) -> Batch:
    return batch_service.get_batch(aws, tenant_id=tenant, batch_id=batch_id)


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(aws: AwsDep, tenant: TenantDep, batch_id: str) -> Batch:
    return batch_service.cancel_batch(aws, tenant_id=tenant, batch_id=batch_id)
