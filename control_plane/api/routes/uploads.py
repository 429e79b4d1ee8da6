"""`/v1/uploads`: files larger than a Lambda request, PUT straight to S3 in parts."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane import uploads as upload_service
from control_plane.api.deps import AwsDep, TenantDep
from control_plane.models import CompleteUploadBody, CreateUploadBody, Upload

router = APIRouter(tags=["uploads"])


@router.post("/uploads")
def create_upload(aws: AwsDep, tenant: TenantDep, body: CreateUploadBody) -> Upload:
    return upload_service.create_upload(aws, tenant_id=tenant, body=body)


@router.post("/uploads/{upload_id}/complete")
def complete_upload(
    aws: AwsDep, tenant: TenantDep, upload_id: str, body: CompleteUploadBody | None = None
) -> Upload:
    return upload_service.complete_upload(aws, tenant_id=tenant, upload_id=upload_id)


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(aws: AwsDep, tenant: TenantDep, upload_id: str) -> Upload:
    return upload_service.cancel_upload(aws, tenant_id=tenant, upload_id=upload_id)
