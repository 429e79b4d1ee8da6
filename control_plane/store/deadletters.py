"""Dead letters: one item per request that failed for good, kept until redriven."""

from __future__ import annotations

from typing import Any

from control_plane.store import keys
from control_plane.store.table import Item, Table, to_attrs


def dead_letter_item(
    batch_id: str,
    *,
    custom_id: str,
    chunk_id: str,
    status_code: int,
    code: str | None,
    type: str | None,
    message: str,
    attempts: int,
    created_at: int,
) -> Item:
    return {
        **keys.dead_letter(batch_id, custom_id),
        "batch_id": batch_id,
        "custom_id": custom_id,
        "chunk_id": chunk_id,
        "status_code": status_code,
        "code": code,
        "type": type,
        "message": message[:2000],
        "attempts": attempts,
        "created_at": created_at,
    }


def as_put(table: Table, item: Item) -> dict[str, Any]:
    """A transaction part that writes a dead letter."""
    return {"Put": {"TableName": table.name, "Item": to_attrs(item)}}


def list_dead_letters(
    table: Table, *, batch_id: str, limit: int, after: str | None
) -> tuple[list[Item], bool]:
    start = keys.dead_letter(batch_id, after) if after else None
    return table.query_page(
        index=None,
        key_name="pk",
        key_value=keys.batch(batch_id)["pk"],
        limit=limit,
        newest_first=False,
        start_key=start,
        sort_condition=("sk", "begins_with", "DEAD#"),
    )
