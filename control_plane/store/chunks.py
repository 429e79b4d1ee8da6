"""Chunk items: one per chunk object, written by the split, driven by the tick.

Timeline of one chunk item (every move conditioned on the state and attempt its writer saw):
  split, bisect, redrive   put pending (gsi2 `CHUNKS#pending`, by priority, batch, number)
  claim                    pending → dispatched, attempt + 1, lease (gsi2 `CHUNKS#dispatched`)
  release                  dispatched → pending after a failure, with a backoff
  finish                   → done | dead | split | cancelled | expired, off the queues
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from control_plane.layout import chunk_id as chunk_id_of
from control_plane.models import ChunkRef
from control_plane.store import keys
from control_plane.store.batches import add_to_batch
from control_plane.store.items import BatchCounters, ChunkFields, ChunkItem
from control_plane.store.table import Item, Table, to_attrs


def chunk_item(
    batch_id: str, priority: str, chunk: ChunkRef, *, created_at: int, parent: str | None = None
) -> ChunkItem:
    chunk_id = chunk_id_of(chunk.index)
    key = keys.chunk(batch_id, chunk.index)
    group_order = chunk.index if chunk.group_order is None else chunk.group_order
    item: ChunkItem = {
        "pk": key["pk"],
        "sk": key["sk"],
        "gsi2pk": keys.PENDING_CHUNKS,
        "gsi2sk": keys.pending_order(priority, batch_id, chunk_id, group_order),
        "batch_id": batch_id,
        "chunk_id": chunk_id,
        "state": "pending",
        "priority": priority,
        "attempts": 0,
        "input_key": chunk.key,
        "requests": chunk.requests,
        "bytes": chunk.bytes,
        "first_line": chunk.first_line,
        "group": chunk.group,
        "groups": chunk.groups,
        "group_order": group_order,
        "created_at": created_at,
    }
    if parent is not None:
        item["parent"] = parent  # a half of a bisected chunk: one try, then halved again
    return item


def put_chunks(
    table: Table, *, batch_id: str, priority: str, chunks: Iterable[ChunkRef], created_at: int
) -> int:
    """Unconditional puts: the split writes the same items again when it is retried, and no
    chunk can have moved on before its batch leaves `validating`."""
    return table.put_many(
        chunk_item(batch_id, priority, chunk, created_at=created_at) for chunk in chunks
    )


def get_chunk(table: Table, *, batch_id: str, chunk_id: str) -> ChunkItem | None:
    return cast(ChunkItem | None, table.get(keys.chunk(batch_id, int(chunk_id))))


def list_chunks(table: Table, *, batch_id: str, limit: int = 1_000_000) -> list[ChunkItem]:
    items, _ = table.query_page(
        index=None,
        key_name="pk",
        key_value=keys.batch(batch_id)["pk"],
        limit=limit,
        newest_first=False,
        sort_condition=("sk", "begins_with", keys.CHUNK_PREFIX),
    )
    return cast(list[ChunkItem], items)


def pending(table: Table, *, limit: int) -> list[ChunkItem]:
    """Chunks waiting for dispatch, highest priority first, then oldest batch, then one prefix
    group's chunks after another (`keys.pending_order` says why)."""
    return _queue(table, keys.PENDING_CHUNKS, limit)


def in_flight(table: Table, *, limit: int = 10_000) -> list[ChunkItem]:
    """Dispatched chunks, the one whose lease ends first first."""
    return _queue(table, keys.DISPATCHED_CHUNKS, limit)


def _queue(table: Table, queue: str, limit: int) -> list[ChunkItem]:
    items, _ = table.query_page(
        index="gsi2", key_name="gsi2pk", key_value=queue, limit=limit, newest_first=False
    )
    return cast(list[ChunkItem], items)


def _chunk_update(
    table: Table,
    chunk: ChunkItem,
    expression: str,
    *,
    expect_state: str,
    values: dict[str, Any],
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A transaction part: update `chunk` only if it is still in `expect_state` at the attempt
    this caller saw — a retried or concurrent writer fails the condition instead."""
    values = {**values, ":expect": expect_state, ":seen_attempts": chunk["attempts"]}
    return {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.chunk(chunk["batch_id"], int(chunk["chunk_id"]))),
            "UpdateExpression": expression,
            "ConditionExpression": "#state = :expect AND attempts = :seen_attempts",
            "ExpressionAttributeNames": {"#state": "state", **(names or {})},
            "ExpressionAttributeValues": to_attrs(values),
        }
    }


def claim(table: Table, chunk: ChunkItem, *, lease_until: int, now: int) -> ChunkItem:
    """pending → dispatched with the next attempt and a lease, counted in flight on its batch,
    only while the batch is in progress. Raises TransactionConflict when another tick won or
    the batch stopped."""
    attempt = int(chunk["attempts"]) + 1
    table.transact(
        [
            _chunk_update(
                table,
                chunk,
                "SET #state = :dispatched, attempts = :attempt, lease_until = :lease, "
                "dispatched_at = :now, gsi2pk = :queue, gsi2sk = :order "
                "REMOVE job_id, progress_completed, progress_failed, progress_at",
                expect_state="pending",
                values={
                    ":dispatched": "dispatched",
                    ":attempt": attempt,
                    ":lease": lease_until,
                    ":now": now,
                    ":queue": keys.DISPATCHED_CHUNKS,
                    ":order": keys.dispatched_order(
                        lease_until, chunk["batch_id"], chunk["chunk_id"]
                    ),
                },
            ),
            add_to_batch(
                table, chunk["batch_id"], {"chunks_in_flight": 1}, require_status="in_progress"
            ),
        ]
    )
    return {
        **chunk,
        "state": "dispatched",
        "attempts": attempt,
        "lease_until": lease_until,
        "dispatched_at": now,
    }


def tries(chunk: ChunkItem) -> int:
    """How many of the chunk's dispatches reached a worker (refunded ones did not)."""
    return int(chunk["attempts"]) - int(chunk.get("refunds", 0))


def set_job(table: Table, chunk: ChunkItem, job_id: str, *, endpoint_id: str) -> None:
    """Record the RunPod job (and the endpoint it runs on: status and cancel must ask that one)."""
    table.update(
        keys.chunk(chunk["batch_id"], int(chunk["chunk_id"])),
        "SET job_id = :job, runpod_endpoint_id = :endpoint",
        condition="#state = :dispatched AND attempts = :attempt",
        names={"#state": "state"},
        values={
            ":job": job_id,
            ":endpoint": endpoint_id,
            ":dispatched": "dispatched",
            ":attempt": chunk["attempts"],
        },
    )


def save_progress(table: Table, chunk: ChunkItem, *, completed: int, failed: int, now: int) -> None:
    """A running chunk's requests answered so far (from its worker's progress report), kept
    only while the chunk is dispatched at this attempt: a finished or retried chunk ignores it."""
    table.update(
        keys.chunk(chunk["batch_id"], int(chunk["chunk_id"])),
        "SET progress_completed = :completed, progress_failed = :failed, progress_at = :now",
        condition="#state = :dispatched AND attempts = :attempt",
        names={"#state": "state"},
        values={
            ":completed": completed,
            ":failed": failed,
            ":now": now,
            ":dispatched": "dispatched",
            ":attempt": chunk["attempts"],
        },
    )


def progress_checked(table: Table, chunk: ChunkItem, *, now: int) -> None:
    """When the tick last asked about a running chunk's progress (so it asks again only after
    `progress_poll_s`)."""
    table.update(
        keys.chunk(chunk["batch_id"], int(chunk["chunk_id"])),
        "SET progress_at = :now",
        condition="#state = :dispatched AND attempts = :attempt",
        names={"#state": "state"},
        values={":now": now, ":dispatched": "dispatched", ":attempt": chunk["attempts"]},
    )


def progress_by_batch(table: Table) -> dict[str, tuple[int, int]]:
    """Requests answered so far in the running chunks, per batch: (completed, failed)."""
    totals: dict[str, tuple[int, int]] = {}
    for chunk in in_flight(table):
        completed = int(chunk.get("progress_completed", 0))
        failed = int(chunk.get("progress_failed", 0))
        if completed or failed:
            was = totals.get(chunk["batch_id"], (0, 0))
            totals[chunk["batch_id"]] = (was[0] + completed, was[1] + failed)
    return totals


def release(
    table: Table,
    chunk: ChunkItem,
    *,
    not_before: int,
    reason: str,
    priority: str,
    refund_attempt: bool = False,
) -> None:
    """dispatched → pending again (a retry after `not_before`). `refund_attempt` when the chunk
    never reached a worker (the endpoint refused it): that try does not count. The attempt
    number itself is never given back: a /run that timed out may still have queued a job, whose
    late result must not pass for the next dispatch's (the number names the result objects)."""
    refund = " ADD refunds :one" if refund_attempt else ""
    table.transact(
        [
            _chunk_update(
                table,
                chunk,
                "SET #state = :pending, not_before = :nb, last_error = :reason, "
                "gsi2pk = :queue, gsi2sk = :order REMOVE job_id, lease_until" + refund,
                expect_state="dispatched",
                values={
                    **({":one": 1} if refund_attempt else {}),
                    ":pending": "pending",
                    ":nb": not_before,
                    ":reason": reason[:1000],
                    ":queue": keys.PENDING_CHUNKS,
                    ":order": keys.pending_order(
                        priority,
                        chunk["batch_id"],
                        chunk["chunk_id"],
                        int(chunk.get("group_order", chunk["chunk_id"])),
                    ),
                },
            ),
            add_to_batch(table, chunk["batch_id"], {"chunks_in_flight": -1}),
        ]
    )


def finish(
    table: Table,
    chunk: ChunkItem,
    *,
    state: str,
    expect_state: str,
    sets: ChunkFields,
    batch_deltas: BatchCounters,
    new_chunks: list[ChunkItem] | None = None,
    dead_letters: list[Item] | None = None,
) -> None:
    """Move a chunk to a final or `split` state and add to its batch's counters, once: the
    chunk's condition fails for a duplicate result, and then nothing is counted. A bisection
    puts its halves (`new_chunks`) and a last failing request its dead letter in the same
    transaction."""
    names = {f"#s{i}": name for i, name in enumerate(sets)}
    values: dict[str, Any] = {f":s{i}": value for i, value in enumerate(sets.values())}
    assignments = ", ".join(f"#s{i} = :s{i}" for i in range(len(sets)))
    expression = "SET #state = :final" + (f", {assignments}" if assignments else "")
    values[":final"] = state
    table.transact(
        [
            _chunk_update(
                table,
                chunk,
                expression + " REMOVE gsi2pk, gsi2sk, lease_until",
                expect_state=expect_state,
                values=values,
                names=names,
            ),
            add_to_batch(table, chunk["batch_id"], batch_deltas),
            *(new_chunk_put(table, item) for item in new_chunks or []),
            *(
                {"Put": {"TableName": table.name, "Item": to_attrs(letter)}}
                for letter in dead_letters or []
            ),
        ]
    )


def new_chunk_put(table: Table, item: ChunkItem) -> dict[str, Any]:
    """A transaction part that adds a chunk that must not exist yet."""
    return {
        "Put": {
            "TableName": table.name,
            "Item": to_attrs(item),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }


def set_error_object(table: Table, chunk: ChunkItem, *, error_key: str, removed: int) -> None:
    """Point a finished chunk at a new error object that holds `removed` lines fewer (redrive
    took them away to run again)."""
    table.update(
        keys.chunk(chunk["batch_id"], int(chunk["chunk_id"])),
        "SET error_key = :key, failed = failed - :n",
        values={":key": error_key, ":n": removed},
    )
