"""`/v1/files`: upload, list, retrieve, delete, content."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile
from fastapi.responses import RedirectResponse
from pydantic import WithJsonSchema

from control_plane.api.deps import AwsDep, TenantDep
from control_plane.api.openapi import errors
from control_plane.models import CursorPage, ExpiresAfter, FileDeleted, FileObject
from control_plane.services import files as file_service

router = APIRouter(tags=["files"])

FileId = Annotated[str, Path(max_length=64)]
# A file part (OpenAPI 3.1 spells it `contentMediaType: application/octet-stream`) that is
# checked to be UTF-8 text with at least one line that is not blank: `minLength` and `pattern`
# (one non-blank character) say so.
UPLOADED_FILE = {
    "type": "string",
    "contentMediaType": "application/octet-stream",
    "minLength": 1,
    "pattern": "\\S",
    "description": "The JSONL input: UTF-8 text with at least one non-blank line.",
}
# Optional form fields: absent or a value (a form cannot send a JSON null).
SECONDS_MIN, SECONDS_MAX = 3600, 30 * 24 * 3600
ANCHOR_SCHEMA = WithJsonSchema({"type": "string", "enum": ["created_at"]})
SECONDS_SCHEMA = WithJsonSchema({"type": "integer", "minimum": SECONDS_MIN, "maximum": SECONDS_MAX})
CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes.",
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    },
    307: {
        "description": "A file larger than a Lambda answer: a presigned S3 URL in `Location`.",
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
}


@router.post("/files")
def create_file(
    aws: AwsDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File(json_schema_extra=UPLOADED_FILE)],
    purpose: Annotated[str, Form(json_schema_extra={"enum": ["batch"]})],
    anchor: Annotated[
        Literal["created_at"] | None, ANCHOR_SCHEMA, Form(alias="expires_after[anchor]")
    ] = None,
    seconds: Annotated[
        int | None,
        SECONDS_SCHEMA,
        Form(alias="expires_after[seconds]", ge=SECONDS_MIN, le=SECONDS_MAX),
    ] = None,
) -> FileObject:
    # The only anchor is `created_at`, so seconds alone mean the same; an anchor alone sets no
    # expiry (OpenAI's form, where both are optional).
    expires = ExpiresAfter(anchor="created_at", seconds=seconds) if seconds else None
    return file_service.create_file(
        aws,
        tenant_id=tenant,
        filename=file.filename or "upload.jsonl",
        purpose=purpose,
        stream=file.file,
        expires_after=expires,
    )


@router.get("/files")
def list_files(
    aws: AwsDep,
    tenant: TenantDep,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: Annotated[str | None, Query(max_length=64)] = None,
    order: Literal["asc", "desc"] = "desc",
) -> CursorPage[FileObject]:
    return file_service.list_files(
        aws,
        tenant_id=tenant,
        limit=limit,
        after=after,
        newest_first=order == "desc",
        purpose=purpose,
    )


@router.get("/files/{file_id}", responses=errors(404))
def retrieve_file(aws: AwsDep, tenant: TenantDep, file_id: FileId) -> FileObject:
    return file_service.get_file(aws, tenant_id=tenant, file_id=file_id)


@router.delete("/files/{file_id}", responses=errors(404))
def delete_file(aws: AwsDep, tenant: TenantDep, file_id: FileId) -> FileDeleted:
    file_service.delete_file(aws, tenant_id=tenant, file_id=file_id)
    return FileDeleted(id=file_id)


@router.get(
    "/files/{file_id}/content",
    response_model=None,
    response_class=Response,
    responses={**CONTENT, **errors(404)},
)
def file_content(aws: AwsDep, tenant: TenantDep, file_id: FileId) -> Response:
    kind, content = file_service.file_content(aws, tenant_id=tenant, file_id=file_id)
    if kind == "redirect":
        assert isinstance(content, str)
        return RedirectResponse(content, status_code=307)
    assert isinstance(content, bytes)
    return Response(content, media_type="application/octet-stream")
