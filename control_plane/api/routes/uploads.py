"""`/v1/uploads`: files larger than a Lambda request, in parts: PUT straight to S3 through
presigned `part_urls`, or (parts that fit a request) through `POST /v1/uploads/{id}/parts`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from control_plane.api.deps import AwsDep, TenantDep
from control_plane.api.openapi import errors
from control_plane.errors import InvalidRequest
from control_plane.models import CompleteUploadBody, CreateUploadBody, Upload, UploadPart
from control_plane.services import upload_parts
from control_plane.services import uploads as upload_service

router = APIRouter(tags=["uploads"])

UploadId = Annotated[str, Path(max_length=64)]

# Room for the multipart framing around the part's bytes (boundaries, headers, the filename).
FORM_OVERHEAD = 64 * 1024
PART_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post("/uploads")
def create_upload(aws: AwsDep, tenant: TenantDep, body: CreateUploadBody) -> Upload:
    return upload_service.create_upload(aws, tenant_id=tenant, body=body)


@router.post(
    "/uploads/{upload_id}/parts", openapi_extra=PART_FORM, responses=errors(400, 404, 409, 413)
)
async def add_upload_part(
    request: Request, aws: AwsDep, tenant: TenantDep, upload_id: UploadId
) -> UploadPart:
    """One part (multipart field `data`). The form is parsed here rather than declared, so a
    request announcing too many bytes is refused before its body is read."""
    limit = aws.settings.upload_part_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise upload_parts.part_too_large(int(declared), limit, what="The request")
    form = await request.form()
    try:
        data = form.get("data")
        if not isinstance(data, UploadFile):  # starlette's: the form holds no fastapi type
            raise InvalidRequest(
                "Missing required parameter: 'data' (the part's bytes, as a multipart file).",
                code="missing_required_parameter",
                param="data",
            )
        stream = data.file
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(0)
        return await run_in_threadpool(
            upload_service.add_part,
            aws,
            tenant_id=tenant,
            upload_id=upload_id,
            data=stream,
            size=size,
        )
    finally:
        await form.close()


@router.post("/uploads/{upload_id}/complete", responses=errors(404, 409))
def complete_upload(
    aws: AwsDep, tenant: TenantDep, upload_id: UploadId, body: CompleteUploadBody | None = None
) -> Upload:
    return upload_service.complete_upload(
        aws, tenant_id=tenant, upload_id=upload_id, part_ids=body.part_ids if body else None
    )


@router.post("/uploads/{upload_id}/cancel", responses=errors(404, 409))
def cancel_upload(aws: AwsDep, tenant: TenantDep, upload_id: UploadId) -> Upload:
    return upload_service.cancel_upload(aws, tenant_id=tenant, upload_id=upload_id)
