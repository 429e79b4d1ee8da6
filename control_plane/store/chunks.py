"""Chunk items: one per chunk object, written by the split, driven by the tick.

A pending chunk sits in the sparse gsi2 queue `CHUNKS#pending`, ordered by priority, then
batch id (creation time), then chunk number, so the tick reads the next work in one query.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from control_plane.split import ChunkRef
from control_plane.store import keys
from control_plane.store.table import Item, Table

PRIORITY_RANK = {"high": "0", "normal": "1", "backfill": "2"}
PENDING_QUEUE = "CHUNKS#pending"


def chunk_item(batch_id: str, priority: str, chunk: ChunkRef, *, created_at: int) -> Item:
    chunk_id = f"{chunk.index:05d}"
    item: dict[str, Any] = {
        **keys.chunk(batch_id, chunk.index),
        "gsi2pk": PENDING_QUEUE,
        "gsi2sk": f"{PRIORITY_RANK[priority]}#{batch_id}#{chunk_id}",
        "batch_id": batch_id,
        "chunk_id": chunk_id,
        "state": "pending",
        "attempts": 0,
        "input_key": chunk.key,
        "requests": chunk.requests,
        "bytes": chunk.bytes,
        "first_line": chunk.first_line,
        "created_at": created_at,
    }
    return item


def put_chunks(
    table: Table, *, batch_id: str, priority: str, chunks: Iterable[ChunkRef], created_at: int
) -> int:
    """Unconditional puts: the split writes the same items again when it is retried, and no
    chunk can have moved on before its batch leaves `validating`."""
    return table.put_many(
        chunk_item(batch_id, priority, chunk, created_at=created_at) for chunk in chunks
    )


def list_chunks(table: Table, *, batch_id: str, limit: int = 1000) -> list[Item]:
    items, _ = table.query_page(
        index=None,
        key_name="pk",
        key_value=keys.batch(batch_id)["pk"],
        limit=limit,
        newest_first=False,
        sort_condition=("sk", "begins_with", "CHUNK#"),
    )
    return items
