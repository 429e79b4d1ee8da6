"""Files: accept an upload into S3 with its metadata, serve its content, delete it."""

from __future__ import annotations

from typing import IO, Literal
from urllib.parse import quote

from control_plane import layout
from control_plane.clients.aws import Aws
from control_plane.errors import InvalidRequest, LimitExceeded
from control_plane.ids import new_id, now_s
from control_plane.models import CursorPage, ExpiresAfter, FileObject
from control_plane.services.textscan import TextError, TextScan
from control_plane.store import files as file_store

READ_SIZE = 1024 * 1024
UPLOAD_PURPOSES = ("batch",)


def check_purpose(purpose: str) -> None:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid purpose {purpose!r}: this service accepts files with purpose 'batch'.",
            code="invalid_purpose",
            param="purpose",
        )


def scan_upload(stream: IO[bytes], *, max_bytes: int) -> tuple[int, int]:
    """Size and request-line count of an uploaded file, checked to be non-empty UTF-8 text.

    Read in pieces, so a large local upload (spooled to disk by the server) is never held in
    memory whole.
    """
    scan = TextScan()
    try:
        while piece := stream.read(READ_SIZE):
            scan.feed(piece)
            if scan.size > max_bytes:
                raise LimitExceeded(
                    "max_file_bytes", max_bytes, "The file is too large", status_code=400
                )
        lines = scan.finish()
    except TextError as exc:
        raise InvalidRequest(exc.message, code=exc.code, param="file") from exc
    return scan.size, lines


def create_file(
    aws: Aws,
    *,
    tenant_id: str,
    filename: str,
    purpose: str,
    stream: IO[bytes],
    expires_after: ExpiresAfter | None,
) -> FileObject:
    check_purpose(purpose)
    size, lines = scan_upload(stream, max_bytes=aws.settings.max_file_bytes)
    stream.seek(0)
    created = now_s()
    file = FileObject(
        id=new_id("file"),
        bytes=size,
        created_at=created,
        expires_at=created + expires_after.seconds if expires_after else None,
        filename=filename,
        purpose=purpose,
    )
    aws.s3.upload_fileobj(
        stream,
        aws.settings.bucket_name,
        layout.file_key(file.id),
        ExtraArgs={"ContentType": "application/jsonl"},
    )
    file_store.put_file(aws.table, tenant_id=tenant_id, file=file, line_count=lines)
    return file


def get_file(aws: Aws, *, tenant_id: str, file_id: str) -> FileObject:
    item = file_store.get_file_item(aws.table, file_id=file_id, tenant_id=tenant_id)
    return file_store.file_from_item(item)


def list_files(
    aws: Aws,
    *,
    tenant_id: str,
    limit: int,
    after: str | None,
    newest_first: bool,
    purpose: str | None,
) -> CursorPage[FileObject]:
    return file_store.list_files(
        aws.table,
        tenant_id=tenant_id,
        limit=limit,
        after=after,
        newest_first=newest_first,
        purpose=purpose,
    )


def file_content(
    aws: Aws, *, tenant_id: str, file_id: str
) -> tuple[Literal["inline", "redirect"], bytes | str]:
    """The bytes when they fit a Lambda response, else a presigned URL to redirect to."""
    item = file_store.get_file_item(aws.table, file_id=file_id, tenant_id=tenant_id)
    if int(item["bytes"]) <= aws.settings.inline_content_max_bytes:
        body = aws.s3.get_object(Bucket=aws.settings.bucket_name, Key=item["s3_key"])["Body"]
        with body:
            return "inline", body.read()
    url = aws.s3.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": aws.settings.bucket_name,
            "Key": item["s3_key"],
            "ResponseContentDisposition": content_disposition(str(item["filename"])),
        },
        ExpiresIn=aws.settings.presign_expires_s,
    )
    return "redirect", str(url)


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback and the exact name percent-encoded, so a client's filename
    (quotes, line breaks, any script) cannot break the header S3 sends back."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    exact = quote(filename.encode("utf-8", "backslashreplace"), safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}"


def delete_file(aws: Aws, *, tenant_id: str, file_id: str) -> None:
    item = file_store.get_file_item(aws.table, file_id=file_id, tenant_id=tenant_id)
    aws.s3.delete_object(Bucket=aws.settings.bucket_name, Key=item["s3_key"])
    file_store.delete_file(aws.table, file_id=item["id"])
