"""Uploads larger than a Lambda request: S3 multipart upload through presigned part URLs.

OpenAI's Upload object, with a hotbatch extra `part_urls`: the client PUTs each part straight
to S3, then `complete` lists the parts in S3 (no ETags to carry back), checks the size and
yields a normal `file-…`. Parts that fit a Lambda request may also go through the API, as
OpenAI's clients send them (`add_part`, assembled at `complete`: `upload_parts.py`).
"""

from __future__ import annotations

import math
from typing import IO, Any

from control_plane import layout
from control_plane.clients.aws import Aws
from control_plane.errors import Conflict, LimitExceeded, StateConflict
from control_plane.ids import new_id, now_s
from control_plane.models import CreateUploadBody, FileObject, Upload, UploadPart, UploadPartUrl
from control_plane.services import upload_parts
from control_plane.services.files import check_purpose
from control_plane.store import Item
from control_plane.store import files as file_store
from control_plane.store import uploads as upload_store

S3_MAX_PARTS = 10_000
TTL_GRACE_S = 24 * 3600


def create_upload(aws: Aws, *, tenant_id: str, body: CreateUploadBody) -> Upload:
    settings = aws.settings
    check_purpose(body.purpose)
    if body.bytes > settings.max_file_bytes:
        raise LimitExceeded(
            "max_file_bytes", settings.max_file_bytes, "The upload is too large", status_code=400
        )
    created = now_s()
    _check_pending_cap(aws, tenant_id=tenant_id, now=created)
    upload = Upload(
        id=new_id("upload"),
        bytes=body.bytes,
        created_at=created,
        expires_at=created + settings.upload_expires_s,
        filename=body.filename,
        purpose=body.purpose,
        status="pending",
    )
    # The file id is fixed now so the object lands where the file will live.
    key = layout.file_key(new_id("file"))
    s3_upload_id = aws.s3.create_multipart_upload(
        Bucket=settings.bucket_name, Key=key, ContentType=body.mime_type
    )["UploadId"]
    upload.part_urls = _part_urls(aws, key=key, s3_upload_id=s3_upload_id, size=body.bytes)
    upload_store.put_upload(
        aws.table,
        tenant_id=tenant_id,
        upload=upload,
        s3_key=key,
        s3_upload_id=s3_upload_id,
        ttl=upload.expires_at + TTL_GRACE_S,
        file_expires_after_s=body.expires_after.seconds if body.expires_after else None,
    )
    return upload


def _check_pending_cap(aws: Aws, *, tenant_id: str, now: int) -> None:
    cap = aws.settings.max_pending_uploads
    if upload_store.count_pending(aws.table, tenant_id=tenant_id, now=now, cap=cap) >= cap:
        raise LimitExceeded(
            "max_pending_uploads",
            cap,
            f"You have {cap} pending uploads; complete or cancel one before creating another "
            "(a pending upload also ends when it expires)",
            status_code=400,
        )


def _part_urls(aws: Aws, *, key: str, s3_upload_id: str, size: int) -> list[UploadPartUrl]:
    """A presigned `upload_part` URL for each part of the declared size. Each signs its part's
    `Content-Length` (in X-Amz-SignedHeaders), so S3 takes exactly that many bytes through it,
    not the 5 GiB a part may hold; PUT again, it replaces the part rather than adding one."""
    settings = aws.settings
    part_bytes = max(settings.upload_part_bytes, math.ceil(size / S3_MAX_PARTS))
    urls = []
    for number in range(1, math.ceil(size / part_bytes) + 1):
        length = min(part_bytes, size - (number - 1) * part_bytes)
        url = aws.s3.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": settings.bucket_name,
                "Key": key,
                "UploadId": s3_upload_id,
                "PartNumber": number,
                "ContentLength": length,
            },
            ExpiresIn=settings.upload_expires_s,
        )
        urls.append(UploadPartUrl(part_number=number, bytes=length, url=url))
    return urls


def add_part(aws: Aws, *, tenant_id: str, upload_id: str, data: IO[bytes], size: int) -> UploadPart:
    """`POST /v1/uploads/{id}/parts`: one part of a pending upload, through the API."""
    item = upload_store.get_upload_item(aws.table, upload_id=upload_id, tenant_id=tenant_id)
    _check_pending(item)
    return upload_parts.add_part(aws, upload=item, data=data, size=size)


def complete_upload(
    aws: Aws, *, tenant_id: str, upload_id: str, part_ids: list[str] | None = None
) -> Upload:
    """The file, made of the parts `part_ids` names in that order (parts sent through the
    API) or, without `part_ids`, of every part PUT to the presigned `part_urls`."""
    item = upload_store.get_upload_item(aws.table, upload_id=upload_id, tenant_id=tenant_id)
    _check_pending(item)
    if part_ids:
        uploaded = upload_parts.assemble(aws, item, part_ids)
    else:
        uploaded = _complete_presigned(aws, item)
    created = now_s()
    expires_after = item.get("file_expires_after_s")
    file = FileObject(
        id=layout.file_id_of(item["s3_key"]),
        bytes=uploaded,
        created_at=created,
        expires_at=created + int(expires_after) if expires_after else None,
        filename=item["filename"],
        purpose=item["purpose"],
        # Nothing has read it yet: the tick checks it is UTF-8 text and counts its lines.
        status="uploaded",
    )
    try:
        done = upload_store.finish_upload(aws.table, item, status="completed", file_id=file.id)
    except StateConflict as exc:
        raise Conflict(
            f"Upload {upload_id} is no longer pending.", code="upload_not_pending"
        ) from exc
    file_store.put_file(aws.table, tenant_id=tenant_id, file=file, line_count=None)
    if part_ids:
        # The presigned multipart upload was never used; the API's parts are in the file now.
        aws.s3.abort_multipart_upload(
            Bucket=aws.settings.bucket_name, Key=item["s3_key"], UploadId=item["s3_upload_id"]
        )
        upload_parts.delete_parts(aws, upload_id)
    result = upload_store.upload_from_item(done)
    result.file = file
    return result


def _complete_presigned(aws: Aws, item: Item) -> int:
    settings = aws.settings
    parts = _list_parts(aws, item["s3_key"], item["s3_upload_id"])
    uploaded = sum(part["Size"] for part in parts)
    if uploaded != item["bytes"]:
        # 409: the request is fine, the upload's state is not (yet): PUT the parts and retry.
        raise Conflict(
            f"The upload declared {item['bytes']} bytes but its parts hold {uploaded}; PUT every "
            "part before completing.",
            code="upload_incomplete",
        )
    aws.s3.complete_multipart_upload(
        Bucket=settings.bucket_name,
        Key=item["s3_key"],
        UploadId=item["s3_upload_id"],
        MultipartUpload={
            "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
        },
    )
    return int(uploaded)


def cancel_upload(aws: Aws, *, tenant_id: str, upload_id: str) -> Upload:
    item = upload_store.get_upload_item(aws.table, upload_id=upload_id, tenant_id=tenant_id)
    _check_pending(item)
    aws.s3.abort_multipart_upload(
        Bucket=aws.settings.bucket_name, Key=item["s3_key"], UploadId=item["s3_upload_id"]
    )
    try:
        done = upload_store.finish_upload(aws.table, item, status="cancelled", file_id=None)
    except StateConflict as exc:
        raise Conflict(
            f"Upload {upload_id} is no longer pending.", code="upload_not_pending"
        ) from exc
    upload_parts.delete_parts(aws, upload_id)
    return upload_store.upload_from_item(done)


def _check_pending(item: Item) -> None:
    if item["status"] != "pending":
        raise Conflict(
            f"Upload {item['id']} is {item['status']}, not pending.", code="upload_not_pending"
        )
    if item["upload_expires_at"] < now_s():
        raise Conflict(f"Upload {item['id']} has expired.", code="upload_expired")


def _list_parts(aws: Aws, key: str, s3_upload_id: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    marker = 0
    while True:
        reply = aws.s3.list_parts(
            Bucket=aws.settings.bucket_name,
            Key=key,
            UploadId=s3_upload_id,
            PartNumberMarker=marker,
        )
        parts.extend(reply.get("Parts", []))
        if not reply.get("IsTruncated"):
            return parts
        marker = reply["NextPartNumberMarker"]
