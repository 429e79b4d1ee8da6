"""`/v1/files`: upload, list, retrieve, delete, content."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from control_plane import files as file_service
from control_plane.api.deps import AwsDep, TenantDep
from control_plane.errors import InvalidRequest
from control_plane.models import CursorPage, ExpiresAfter, FileDeleted, FileObject

router = APIRouter(tags=["files"])


@router.post("/files")
def create_file(
    aws: AwsDep,
    tenant: TenantDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
    anchor: Annotated[Literal["created_at"] | None, Form(alias="expires_after[anchor]")] = None,
    seconds: Annotated[int | None, Form(alias="expires_after[seconds]")] = None,
) -> FileObject:
    try:
        expires = ExpiresAfter(anchor=anchor, seconds=seconds) if anchor and seconds else None
    except ValidationError as exc:  # a form field out of range: the client's 400, not a 500
        raise InvalidRequest(
            f"Invalid value for 'expires_after[seconds]': {exc.errors()[0]['msg']}",
            code="invalid_value",
            param="expires_after[seconds]",
        ) from exc
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
    after: str | None = None,
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


@router.get("/files/{file_id}")
def retrieve_file(aws: AwsDep, tenant: TenantDep, file_id: str) -> FileObject:
    return file_service.get_file(aws, tenant_id=tenant, file_id=file_id)


@router.delete("/files/{file_id}")
def delete_file(aws: AwsDep, tenant: TenantDep, file_id: str) -> FileDeleted:
    file_service.delete_file(aws, tenant_id=tenant, file_id=file_id)
    return FileDeleted(id=file_id)


@router.get("/files/{file_id}/content", response_model=None)
def file_content(aws: AwsDep, tenant: TenantDep, file_id: str) -> Response:
    kind, content = file_service.file_content(aws, tenant_id=tenant, file_id=file_id)
    if kind == "redirect":
        assert isinstance(content, str)
        return RedirectResponse(content, status_code=307)
    assert isinstance(content, bytes)
    return Response(content, media_type="application/octet-stream")
