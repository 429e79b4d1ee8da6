"""Upload items: a presigned multipart upload in progress, dropped by TTL if never completed.

While pending, an upload is also in its tenant's gsi1 partition of pending uploads, sorted by
expiry, so the uploads a tenant has open are one bounded query (`count_pending`); completing or
cancelling takes it out. Parts sent through the API are counted on the item (`add_part`)."""

from __future__ import annotations

from typing import Any

from control_plane.errors import NotFound, StateConflict
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
        "gsi1pk": keys.tenant_listing(tenant_id, keys.PENDING_UPLOAD_LISTING),
        "gsi1sk": keys.expiry_order(upload.expires_at, upload.id),
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


def count_pending(table: Table, *, tenant_id: str, now: int, cap: int) -> int:
    """The tenant's uploads neither completed, cancelled nor expired at `now`, up to `cap`
    (a query of their keys: at most `cap + 1` small items)."""
    items, more = table.query_page(
        index="gsi1",
        key_name="gsi1pk",
        key_value=keys.tenant_listing(tenant_id, keys.PENDING_UPLOAD_LISTING),
        limit=cap,
        newest_first=False,
        sort_condition=("gsi1sk", ">", keys.due_before(now)),
        attributes=["pk"],
    )
    return cap if more else len(items)


def add_part(table: Table, *, upload_id: str, max_parts: int) -> bool:
    """Count one more part sent through the API, unless the upload holds `max_parts` already
    (False then). Counted before the part is stored: a failed store is `remove_part`."""
    try:
        table.update(
            keys.upload(upload_id),
            "ADD api_parts :one",
            condition="attribute_not_exists(api_parts) OR api_parts < :max",
            values={":one": 1, ":max": max_parts},
            returns="NONE",
        )
    except StateConflict:
        return False
    return True


def remove_part(table: Table, *, upload_id: str) -> None:
    try:
        table.update(
            keys.upload(upload_id),
            "ADD api_parts :minus",
            condition="attribute_exists(pk)",  # never an item of a counter alone
            values={":minus": -1},
            returns="NONE",
        )
    except StateConflict:
        pass  # the upload is gone (TTL): nothing to give back


def finish_upload(table: Table, item: Item, *, status: str, file_id: str | None) -> Item:
    """pending → completed | cancelled, once; it leaves the tenant's pending uploads."""
    sets = "SET #status = :to" + (", file_id = :file" if file_id else "")
    sets += " REMOVE gsi1pk, gsi1sk"
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
