"""File items: metadata of every uploaded input and merged output; the bytes live in S3.

A file's place in gsi2 is the tick's next job with it: `FILES#unchecked` while its content is
not yet known good (an upload completed by parts: status `uploaded`), then `FILES#expiring`
(sorted by expiry) when it has an `expires_at`, else nowhere. Expiry is the tick's, not
DynamoDB TTL's: TTL would drop the item and leave the S3 object behind, so the file's expiry is
kept as `file_expires_at` (not the TTL attribute) and the tick deletes object and item together.
"""

from __future__ import annotations

import logging
from typing import Any

from control_plane.errors import NotFound, StateConflict, Unreadable
from control_plane.ids import now_s
from control_plane.layout import file_key
from control_plane.models import CursorPage, FileObject
from control_plane.store import keys
from control_plane.store.table import UNREADABLE_OBJECT, Item, Table

log = logging.getLogger("control_plane.store")


def _queue(status: str, expires_at: int | None, file_id: str) -> dict[str, str]:
    if status == "uploaded":
        return {"gsi2pk": keys.UNCHECKED_FILES, "gsi2sk": file_id}
    if expires_at is not None:
        return {"gsi2pk": keys.EXPIRING_FILES, "gsi2sk": keys.expiry_order(expires_at, file_id)}
    return {}


def put_file(table: Table, *, tenant_id: str, file: FileObject, line_count: int | None) -> None:
    item: dict[str, Any] = {
        **keys.file(file.id),
        "gsi1pk": keys.tenant_listing(tenant_id, keys.FILE_LISTING),
        "gsi1sk": file.id,
        **_queue(file.status, file.expires_at, file.id),
        "tenant_id": tenant_id,
        "s3_key": file_key(file.id),
        **file.model_dump(exclude_none=True, exclude={"expires_at"}),
    }
    if file.expires_at is not None:
        item["file_expires_at"] = file.expires_at
    if line_count is not None:
        item["line_count"] = line_count
    table.put(item, condition="attribute_not_exists(pk)")


def get_file(table: Table, file_id: str) -> Item | None:
    return table.get(keys.file(file_id))


def is_expired(item: Item, now: int) -> bool:
    expires_at = item.get("file_expires_at")
    return expires_at is not None and int(expires_at) <= now


def get_file_item(table: Table, *, file_id: str, tenant_id: str | None) -> Item:
    """The item of `file_id`; another tenant's file, or one past its expiry (the tick has not
    removed it yet), is as absent as a missing one."""
    item = table.get(keys.file(file_id), consistent=False)
    if (
        item is None
        or (tenant_id is not None and item["tenant_id"] != tenant_id)
        or is_expired(item, now_s())
    ):
        raise NotFound("file", file_id, param="file_id")
    return item


def file_from_item(item: Item) -> FileObject:
    """The file object of an item; `Unreadable` (logged with its id) when it does not make one."""
    try:
        return FileObject.model_validate({**item, "expires_at": item.get("file_expires_at")})
    except UNREADABLE_OBJECT as exc:
        file_id = str(item.get("id") or item.get("pk", "?"))
        log.error("unreadable file item", extra={"file_id": file_id, "error": repr(exc)[:500]})
        raise Unreadable("file", file_id) from exc


def _readable(items: list[Item]) -> list[FileObject]:
    """A listing's files, without the ones that cannot be read (each logged)."""
    files = []
    for item in items:
        try:
            files.append(file_from_item(item))
        except Unreadable:
            continue
    return files


def list_files(
    table: Table,
    *,
    tenant_id: str,
    limit: int,
    after: str | None,
    newest_first: bool,
    purpose: str | None,
) -> CursorPage[FileObject]:
    listing = keys.tenant_listing(tenant_id, keys.FILE_LISTING)
    files: list[FileObject] = []
    has_more = True
    start = _start_key(tenant_id, after)
    now = now_s()
    # A filter (purpose, expiry) can drop items from a page: keep reading until it is full.
    while has_more and len(files) < limit:
        items, has_more = table.query_page(
            index="gsi1",
            key_name="gsi1pk",
            key_value=listing,
            limit=limit - len(files),
            newest_first=newest_first,
            start_key=start,
        )
        if items:
            start = _start_key(tenant_id, str(items[-1]["id"]))
        files.extend(
            _readable(
                [i for i in items if purpose in (None, i.get("purpose")) and not is_expired(i, now)]
            )
        )
    return CursorPage[FileObject](
        data=files,
        first_id=files[0].id if files else "",
        last_id=files[-1].id if files else "",
        has_more=has_more,
    )


def delete_file(table: Table, *, file_id: str) -> None:
    table.delete(keys.file(file_id))


def unchecked_files(table: Table, *, limit: int) -> list[Item]:
    """Files whose content is not yet known good, oldest first."""
    items, _ = table.query_page(
        index="gsi2",
        key_name="gsi2pk",
        key_value=keys.UNCHECKED_FILES,
        limit=limit,
        newest_first=False,
    )
    return items


def expired_files(table: Table, *, now: int, limit: int) -> list[Item]:
    """Files whose expiry has come, the longest expired first (one query, no scan)."""
    items, _ = table.query_page(
        index="gsi2",
        key_name="gsi2pk",
        key_value=keys.EXPIRING_FILES,
        limit=limit,
        newest_first=False,
        sort_condition=("gsi2sk", "<=", keys.due_before(now)),
    )
    return items


def _scan_condition(seen: int, values: dict[str, Any]) -> str:
    """Still unchecked, and checked exactly as far as this writer read from (two ticks
    checking one file: the second writer loses)."""
    values[":uploaded"] = "uploaded"
    if seen == 0:
        return "#status = :uploaded AND attribute_not_exists(check_offset)"
    values[":seen"] = seen
    return "#status = :uploaded AND check_offset = :seen"


def save_check_progress(table: Table, item: Item, *, seen: int, state: dict[str, Any]) -> bool:
    """Keep a partial check's progress for the next tick. False when another tick moved on."""
    values: dict[str, Any] = {":state": state, ":offset": int(state["size"])}
    try:
        table.update(
            keys.file(item["id"]),
            "SET check_state = :state, check_offset = :offset",
            condition=_scan_condition(seen, values),
            names={"#status": "status"},
            values=values,
        )
    except StateConflict:
        return False
    return True


def finish_check(
    table: Table,
    item: Item,
    *,
    seen: int,
    status: str,
    line_count: int | None = None,
    details: str | None = None,
) -> bool:
    """uploaded → processed (with its line count) | error (with why), once; the file moves on
    to the expiry queue, or out of gsi2."""
    values: dict[str, Any] = {":to": status}
    sets = ["#status = :to"]
    removes = ["check_state", "check_offset"]
    if line_count is not None:
        sets.append("line_count = :lines")
        values[":lines"] = line_count
    if details is not None:
        sets.append("status_details = :details")
        values[":details"] = details
    queue = _queue(status, item.get("file_expires_at"), item["id"])
    if queue:
        sets.append("gsi2pk = :queue, gsi2sk = :order")
        values[":queue"], values[":order"] = queue["gsi2pk"], queue["gsi2sk"]
    else:
        removes += ["gsi2pk", "gsi2sk"]
    try:
        table.update(
            keys.file(item["id"]),
            f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            condition=_scan_condition(seen, values),
            names={"#status": "status"},
            values=values,
        )
    except StateConflict:
        return False
    return True


def _start_key(tenant_id: str, after: str | None) -> dict[str, str] | None:
    if not after:
        return None
    return keys.listing_start(keys.file(after), tenant_id, keys.FILE_LISTING, after)
