"""Upload items: a presigned multipart upload in progress, dropped by TTL if never completed."""

from __future__ import annotations

from typing import Any

from control_plane.errors import NotFound
from control_plane.models import Upload
from control_plane.store import keys
from control_plane.store.table import Item, Table


def put_upload(
    table: Table,
    *,
    tenant_id: str,
    upload: Upload,
    s3_key: str,
    s3_upload_id: str,
    ttl: int,
    file_expires_after_s: int | None = None,
) -> None:
    item: dict[str, Any] = {
        **keys.upload(upload.id),
        **upload.model_dump(exclude_none=True, exclude={"file", "part_urls", "expires_at"}),
        "upload_expires_at": upload.expires_at,
        "tenant_id": tenant_id,
        "s3_key": s3_key,
        "s3_upload_id": s3_upload_id,
        # TTL: kept a day past its own expiry so a late complete still gets a clear answer.
        "expires_at": ttl,
    }
    if file_expires_after_s is not None:
        item["file_expires_after_s"] = file_expires_after_s  # the file's, counted from complete
    table.put(item, condition="attribute_not_exists(pk)")


def get_upload_item(table: Table, *, upload_id: str, tenant_id: str) -> Item:
    item = table.get(keys.upload(upload_id))
    if item is None or item["tenant_id"] != tenant_id:
        raise NotFound("upload", upload_id, param="upload_id")
    return item


def upload_from_item(item: Item) -> Upload:
    return Upload.model_validate({**item, "expires_at": item["upload_expires_at"]})


def finish_upload(table: Table, item: Item, *, status: str, file_id: str | None) -> Item:
    """pending → completed | cancelled, once."""
    sets = "SET #status = :to" + (", file_id = :file" if file_id else "")
    values: dict[str, Any] = {":to": status, ":pending": "pending"}
    if file_id:
        values[":file"] = file_id
    return table.update(
        keys.upload(item["id"]),
        sets,
        condition="#status = :pending",
        names={"#status": "status"},
        values=values,
    )
