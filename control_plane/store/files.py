"""File items: metadata of every uploaded input and merged output; the bytes live in S3."""

from __future__ import annotations

import logging
from typing import Any

from control_plane.errors import NotFound, Unreadable
from control_plane.layout import file_key
from control_plane.models import CursorPage, FileObject
from control_plane.store import keys
from control_plane.store.table import UNREADABLE_OBJECT, Item, Table

log = logging.getLogger("control_plane.store")


def put_file(table: Table, *, tenant_id: str, file: FileObject, line_count: int | None) -> None:
    item: dict[str, Any] = {
        **keys.file(file.id),
        "gsi1pk": keys.tenant_listing(tenant_id, keys.FILE_LISTING),
        "gsi1sk": file.id,
        "tenant_id": tenant_id,
        "s3_key": file_key(file.id),
        **file.model_dump(exclude_none=True),
    }
    if line_count is not None:
        item["line_count"] = line_count
    table.put(item, condition="attribute_not_exists(pk)")


def get_file(table: Table, file_id: str) -> Item | None:
    return table.get(keys.file(file_id))


def get_file_item(table: Table, *, file_id: str, tenant_id: str | None) -> Item:
    """The item of `file_id`; another tenant's file is as absent as a missing one."""
    item = table.get(keys.file(file_id), consistent=False)
    if item is None or (tenant_id is not None and item["tenant_id"] != tenant_id):
        raise NotFound("file", file_id, param="file_id")
    return item


def file_from_item(item: Item) -> FileObject:
    """The file object of an item; `Unreadable` (logged with its id) when it does not make one."""
    try:
        return FileObject.model_validate(item)
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
    # A purpose filter can drop items from a page: keep reading until the page is full.
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
        files.extend(_readable([i for i in items if purpose in (None, i.get("purpose"))]))
    return CursorPage[FileObject](
        data=files,
        first_id=files[0].id if files else None,
        last_id=files[-1].id if files else None,
        has_more=has_more,
    )


def delete_file(table: Table, *, file_id: str) -> None:
    table.delete(keys.file(file_id))


def _start_key(tenant_id: str, after: str | None) -> dict[str, str] | None:
    if not after:
        return None
    return keys.listing_start(keys.file(after), tenant_id, keys.FILE_LISTING, after)
