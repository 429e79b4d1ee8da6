"""Concatenate chunk result objects into one S3 object without routing the data through Lambda.

S3 multipart copy (`UploadPartCopy`) does the work for every object of 5 MB or more. Parts
other than the last must be at least 5 MB, so small objects are gathered in a buffer; when a
large object follows a non-empty buffer, only the head needed to top the buffer up to 5 MB is
read (a ranged GET) and the rest of the object is still copied server-side. Memory stays
under ~10 MB whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MIN_PART = 5 * 1024 * 1024
MAX_COPY_PART = 5 * 1024 * 1024 * 1024
# HEADs in flight at once: one per chunk, and a batch of 20,000 requests has 20 chunks, so one
# at a time kept the finished batch waiting 20 round trips before its merge began.
HEAD_THREADS = 8


def sizes(s3: Any, bucket: str, keys: Iterable[str]) -> list[tuple[str, int]]:
    """The non-empty objects among `keys`, in their order, with their sizes (missing ones are
    skipped: a worker writes no error object when nothing failed). boto3 clients are
    thread-safe, so the HEADs go out `HEAD_THREADS` at a time."""
    keys = list(keys)
    if len(keys) <= 1:
        found = [_size(s3, bucket, key) for key in keys]
    else:
        with ThreadPoolExecutor(max_workers=min(HEAD_THREADS, len(keys))) as pool:
            found = list(pool.map(lambda key: _size(s3, bucket, key), keys))
    return [(key, size) for key, size in zip(keys, found, strict=True) if size]


def _size(s3: Any, bucket: str, key: str) -> int:
    """The object's size; 0 when it does not exist."""
    try:
        return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return 0
        raise


def concatenate(s3: Any, bucket: str, sources: list[tuple[str, int]], dest: str) -> int:
    """Write the concatenation of `sources` to `dest`; return its size (0: nothing written)."""
    total = sum(size for _, size in sources)
    if total == 0:
        return 0
    if len(sources) == 1 and total <= MAX_COPY_PART:
        s3.copy_object(Bucket=bucket, Key=dest, CopySource={"Bucket": bucket, "Key": sources[0][0]})
        return total
    upload_id = s3.create_multipart_upload(
        Bucket=bucket, Key=dest, ContentType="application/jsonl"
    )["UploadId"]
    try:
        parts = _parts(s3, bucket, sources, dest, upload_id)
        s3.complete_multipart_upload(
            Bucket=bucket, Key=dest, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except Exception:
        s3.abort_multipart_upload(Bucket=bucket, Key=dest, UploadId=upload_id)
        raise
    return total


def _parts(
    s3: Any, bucket: str, sources: list[tuple[str, int]], dest: str, upload_id: str
) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    buffer = bytearray()

    def put_buffer() -> None:
        number = len(parts) + 1
        reply = s3.upload_part(
            Bucket=bucket, Key=dest, UploadId=upload_id, PartNumber=number, Body=bytes(buffer)
        )
        parts.append({"PartNumber": number, "ETag": reply["ETag"]})
        buffer.clear()

    def copy(key: str, start: int, end: int) -> None:
        number = len(parts) + 1
        reply = s3.upload_part_copy(
            Bucket=bucket,
            Key=dest,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": bucket, "Key": key},
            CopySourceRange=f"bytes={start}-{end - 1}",
        )
        parts.append({"PartNumber": number, "ETag": reply["CopyPartResult"]["ETag"]})

    for key, size in sources:
        offset = 0
        if buffer and size >= MIN_PART:
            # Top the buffer up from the head of this object, then copy the rest.
            need = MIN_PART - len(buffer)
            buffer += _read(s3, bucket, key, 0, need)
            put_buffer()
            offset = need
        if not buffer and size - offset >= MIN_PART:
            while size - offset >= MIN_PART:
                end = min(size, offset + MAX_COPY_PART)
                if 0 < size - end < MIN_PART:
                    end = size  # never leave a tail too small to stand alone
                copy(key, offset, end)
                offset = end
            continue
        buffer += _read(s3, bucket, key, offset, size)
        if len(buffer) >= MIN_PART:
            put_buffer()
    if buffer or not parts:
        put_buffer()
    return parts


def _read(s3: Any, bucket: str, key: str, start: int, end: int) -> bytes:
    if end <= start:
        return b""
    body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
    with body:
        data: bytes = body.read()
    return data
