"""Dead letters: one item per request that failed for good, kept until redriven."""

from __future__ import annotations

from collections.abc import Iterable

from control_plane.store import keys
from control_plane.store.table import Item, Table


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


def put_dead_letters(table: Table, letters: Iterable[Item]) -> int:
    """Unconditional puts: a letter written twice (a result delivered twice) is the same item."""
    return table.put_many(letters)


def get_dead_letters(table: Table, *, batch_id: str, custom_ids: list[str]) -> list[Item | None]:
    """The letters of `custom_ids`, None where a request has none (100 a read: a retry of
    50,000 ids is 500 calls, not 50,000)."""
    return table.get_many([keys.dead_letter(batch_id, custom_id) for custom_id in custom_ids])


def delete_dead_letters(table: Table, *, batch_id: str, custom_ids: Iterable[str]) -> None:
    for custom_id in custom_ids:
        table.delete(keys.dead_letter(batch_id, custom_id))


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
        sort_condition=("sk", "begins_with", keys.DEAD_PREFIX),
    )
