"""Parts of an Upload sent through the API (`POST /v1/uploads/{id}/parts`, as the `openai`
SDK's `uploads.parts.create` and `upload_file_chunked` send them), and their assembly into the
file when `complete` names them.

A part must fit one Lambda request, so parts are small (`HOTBATCH_UPLOAD_PART_MAX_BYTES`, 4 MiB
by default), smaller than the 5 MiB S3 asks of every multipart part but the last, and their
order is known only at `complete` (OpenAI's clients may send parts in any order and list
them then). So each part is its own S3 object (`layout.upload_part_key`); `complete`
gathers consecutive parts into S3 parts of at least 5 MiB (a part already that large is copied
server-side) and uploads those in parallel into one multipart upload: the file's object, made
of exactly the named parts in the named order. An upload takes at most
`HOTBATCH_UPLOAD_MAX_PARTS` parts this way (each is an S3 object billed until `complete`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from control_plane import layout
from control_plane.clients.aws import Aws
from control_plane.errors import InvalidRequest, LimitExceeded, TooLarge
from control_plane.ids import new_id, now_s
from control_plane.models import UploadPart
from control_plane.store import Item
from control_plane.store import uploads as upload_store

S3_MIN_PART = 5 * 1024 * 1024
ASSEMBLY_THREADS = 8
DELETE_BATCH = 1000


def part_too_large(size: int, limit: int, *, what: str = "The part") -> TooLarge:
    return TooLarge(
        f"{what} is {size} bytes; this API takes parts of up to {limit} bytes (limit "
        f"upload_part_max_bytes={limit}: a Lambda request stops at 6 MB). Send larger parts "
        "to the upload's `part_urls` (presigned S3 part URLs) instead.",
        code="upload_part_too_large",
        param="data",
    )


def add_part(aws: Aws, *, upload: Item, data: IO[bytes], size: int) -> UploadPart:
    """Store one part of a pending upload (the caller checked it is the tenant's and pending)."""
    limit = aws.settings.upload_part_max_bytes
    if size > limit:
        raise part_too_large(size, limit)
    if size == 0:
        raise InvalidRequest("The part is empty.", code="empty_part", param="data")
    max_parts = aws.settings.upload_max_parts
    if not upload_store.add_part(aws.table, upload_id=upload["id"], max_parts=max_parts):
        raise LimitExceeded(
            "upload_max_parts",
            max_parts,
            f"Upload {upload['id']} already has {max_parts} parts; send larger parts, or "
            "complete or cancel it",
            status_code=400,
        )
    part = UploadPart(id=new_id("part"), created_at=now_s(), upload_id=upload["id"])
    try:
        aws.s3.upload_fileobj(
            data, aws.settings.bucket_name, layout.upload_part_key(upload["id"], part.id)
        )
    except Exception:
        # The part was counted before it was stored: a failed store gives its place back.
        upload_store.remove_part(aws.table, upload_id=upload["id"])
        raise
    return part


def stored_parts(aws: Aws, upload_id: str) -> dict[str, int]:
    """Every part of the upload in S3: its id and size (one list call per 1,000 parts)."""
    found: dict[str, int] = {}
    pages = aws.s3.get_paginator("list_objects_v2").paginate(
        Bucket=aws.settings.bucket_name, Prefix=layout.upload_parts_prefix(upload_id)
    )
    for page in pages:
        for entry in page.get("Contents", []):
            found[layout.part_id_of(entry["Key"])] = int(entry["Size"])
    return found


def assemble(aws: Aws, upload: Item, part_ids: list[str]) -> int:
    """Write the named parts, in order, as the upload's file object; return its size. The
    parts must exist, be named once each, and add up to the bytes the upload declared."""
    stored = stored_parts(aws, upload["id"])
    unknown = [part_id for part_id in part_ids if part_id not in stored]
    if unknown:
        raise InvalidRequest(
            f"Part {unknown[0]!r} is not a part of upload {upload['id']}.",
            code="invalid_part_id",
            param="part_ids",
        )
    if len(set(part_ids)) != len(part_ids):
        raise InvalidRequest(
            "A part is named more than once.", code="duplicate_part_id", param="part_ids"
        )
    total = sum(stored[part_id] for part_id in part_ids)
    if total != upload["bytes"]:
        raise InvalidRequest(
            f"The upload declared {upload['bytes']} bytes but the parts named hold {total}.",
            code="upload_incomplete",
            param="part_ids",
        )
    sources = [(layout.upload_part_key(upload["id"], p), stored[p]) for p in part_ids]
    _concatenate(aws, sources, upload["s3_key"])
    return total


def delete_parts(aws: Aws, upload_id: str) -> None:
    """Drop the part objects once the file holds them (the bucket's lifecycle rule removes
    what a failed call leaves)."""
    keys = [layout.upload_part_key(upload_id, p) for p in stored_parts(aws, upload_id)]
    for start in range(0, len(keys), DELETE_BATCH):
        aws.s3.delete_objects(
            Bucket=aws.settings.bucket_name,
            Delete={"Objects": [{"Key": key} for key in keys[start : start + DELETE_BATCH]]},
        )


def _groups(sources: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Consecutive sources gathered until each group holds S3's minimum part (the last may
    hold less)."""
    groups: list[list[tuple[str, int]]] = [[]]
    held = 0
    for source in sources:
        if held >= S3_MIN_PART:
            groups.append([])
            held = 0
        groups[-1].append(source)
        held += source[1]
    return groups


def _concatenate(aws: Aws, sources: list[tuple[str, int]], dest: str) -> None:
    s3, bucket = aws.s3, aws.settings.bucket_name
    groups = _groups(sources)
    if len(groups) == 1:
        s3.put_object(Bucket=bucket, Key=dest, Body=_read_group(aws, groups[0]))
        return
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=dest)["UploadId"]

    def put(numbered: tuple[int, list[tuple[str, int]]]) -> dict[str, Any]:
        number, group = numbered
        if len(group) == 1 and group[0][1] >= S3_MIN_PART:
            reply = s3.upload_part_copy(
                Bucket=bucket,
                Key=dest,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": bucket, "Key": group[0][0]},
            )
            return {"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]}
        reply = s3.upload_part(
            Bucket=bucket,
            Key=dest,
            UploadId=upload_id,
            PartNumber=number,
            Body=_read_group(aws, group),
        )
        return {"PartNumber": number, "ETag": reply["ETag"]}

    try:
        # Threads, not one request after another: a 1 GB file is some 200 S3 parts, and
        # `complete` must answer within API Gateway's 30 seconds.
        with ThreadPoolExecutor(ASSEMBLY_THREADS, thread_name_prefix="assemble") as pool:
            parts = list(pool.map(put, enumerate(groups, start=1)))
        s3.complete_multipart_upload(
            Bucket=bucket, Key=dest, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except Exception:
        s3.abort_multipart_upload(Bucket=bucket, Key=dest, UploadId=upload_id)
        raise


def _read_group(aws: Aws, group: list[tuple[str, int]]) -> bytes:
    pieces = []
    for key, _ in group:
        body = aws.s3.get_object(Bucket=aws.settings.bucket_name, Key=key)["Body"]
        with body:
            pieces.append(body.read())
    return b"".join(pieces)
