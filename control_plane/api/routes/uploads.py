"""`/v1/uploads`: files larger than a Lambda request, PUT straight to S3 in parts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from control_plane import uploads as upload_service
from control_plane.api.deps import AwsDep, TenantDep
from control_plane.api.openapi import errors
from control_plane.models import CompleteUploadBody, CreateUploadBody, Upload

router = APIRouter(tags=["uploads"])

UploadId = Annotated[str, Path(max_length=64)]


@router.post("/uploads")
def create_upload(aws: AwsDep, tenant: TenantDep, body: CreateUploadBody) -> Upload:
    return upload_service.create_upload(aws, tenant_id=tenant, body=body)


@router.post("/uploads/{upload_id}/complete", responses=errors(404, 409))
def complete_upload(
    aws: AwsDep, tenant: TenantDep, upload_id: UploadId, body: CompleteUploadBody | None = None
) -> Upload:
    return upload_service.complete_upload(aws, tenant_id=tenant, upload_id=upload_id)


@router.post("/uploads/{upload_id}/cancel", responses=errors(404, 409))
def cancel_upload(aws: AwsDep, tenant: TenantDep, upload_id: UploadId) -> Upload:
    return upload_service.cancel_upload(aws, tenant_id=tenant, upload_id=upload_id)
