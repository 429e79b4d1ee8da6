"""Chunk items: one per chunk object, written by the split, driven by the tick.

A pending chunk sits in the sparse gsi2 queue `CHUNKS#pending`, ordered by priority, then
batch id (creation time), then chunk number, so the tick reads the next work in one query.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from control_plane.split import ChunkRef
from control_plane.store import keys
from control_plane.store.table import Item, Table, to_attrs

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
        "priority": priority,
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


DISPATCHED_QUEUE = "CHUNKS#dispatched"
# A leaf is final in these states; `split` chunks live on in their two halves.
FINAL_STATES = frozenset({"done", "dead", "cancelled", "expired"})


def queued(table: Table, *, queue: str, limit: int, before: str | None = None) -> list[Item]:
    """Chunks in a gsi2 queue in its order (pending: priority; dispatched: lease expiry)."""
    items, _ = table.query_page(
        index="gsi2",
        key_name="gsi2pk",
        key_value=queue,
        limit=limit,
        newest_first=False,
        sort_condition=("gsi2sk", "<", before) if before else None,
    )
    return items


def all_chunks(table: Table, *, batch_id: str) -> list[Item]:
    return list_chunks(table, batch_id=batch_id, limit=1_000_000)


def _chunk_update(
    table: Table,
    chunk: Item,
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


def batch_add(
    table: Table, batch_id: str, deltas: dict[str, int], *, require_status: str | None = None
) -> dict[str, Any]:
    """A transaction part: add `deltas` to the batch's counters (optionally only while it is in
    `require_status`)."""
    names = {f"#c{i}": name for i, name in enumerate(deltas)}
    values: dict[str, Any] = {f":c{i}": delta for i, delta in enumerate(deltas.values())}
    update: dict[str, Any] = {
        "TableName": table.name,
        "Key": to_attrs(keys.batch(batch_id)),
        "UpdateExpression": "ADD " + ", ".join(f"#c{i} :c{i}" for i in range(len(deltas))),
        "ExpressionAttributeNames": names,
    }
    if require_status:
        names["#status"] = "status"
        values[":required"] = require_status
        # An expiring batch stays in_progress while its chunks are settled: no new dispatches.
        update["ConditionExpression"] = (
            "#status = :required AND attribute_not_exists(stop_dispatch)"
        )
    update["ExpressionAttributeValues"] = to_attrs(values)
    return {"Update": update}


def claim(table: Table, chunk: Item, *, lease_until: int, now: int) -> Item:
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
                "dispatched_at = :now, gsi2pk = :queue, gsi2sk = :order REMOVE job_id",
                expect_state="pending",
                values={
                    ":dispatched": "dispatched",
                    ":attempt": attempt,
                    ":lease": lease_until,
                    ":now": now,
                    ":queue": DISPATCHED_QUEUE,
                    ":order": f"{lease_until:010d}#{chunk['batch_id']}#{chunk['chunk_id']}",
                },
            ),
            batch_add(
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


def tries(chunk: Item) -> int:
    """How many of the chunk's dispatches reached a worker (refunded ones did not)."""
    return int(chunk["attempts"]) - int(chunk.get("refunds", 0))


def set_job(table: Table, chunk: Item, job_id: str) -> None:
    table.update(
        keys.chunk(chunk["batch_id"], int(chunk["chunk_id"])),
        "SET job_id = :job",
        condition="#state = :dispatched AND attempts = :attempt",
        names={"#state": "state"},
        values={":job": job_id, ":dispatched": "dispatched", ":attempt": chunk["attempts"]},
    )


def extend_lease(table: Table, chunk: Item, *, lease_until: int) -> None:
    table.update(
        keys.chunk(chunk["batch_id"], int(chunk["chunk_id"])),
        "SET lease_until = :lease, gsi2sk = :order",
        condition="#state = :dispatched AND attempts = :attempt",
        names={"#state": "state"},
        values={
            ":lease": lease_until,
            ":order": f"{lease_until:010d}#{chunk['batch_id']}#{chunk['chunk_id']}",
            ":dispatched": "dispatched",
            ":attempt": chunk["attempts"],
        },
    )


def release(
    table: Table,
    chunk: Item,
    *,
    not_before: int,
    reason: str,
    priority_rank: str,
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
                    ":queue": PENDING_QUEUE,
                    ":order": f"{priority_rank}#{chunk['batch_id']}#{chunk['chunk_id']}",
                },
            ),
            batch_add(table, chunk["batch_id"], {"chunks_in_flight": -1}),
        ]
    )


def finish(
    table: Table,
    chunk: Item,
    *,
    state: str,
    expect_state: str,
    sets: dict[str, Any],
    batch_deltas: dict[str, int],
    extra: list[dict[str, Any]] | None = None,
) -> None:
    """Move a chunk to a final or `split` state and add to its batch's counters, once: the
    chunk's condition fails for a duplicate result, and then nothing is counted."""
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
            batch_add(table, chunk["batch_id"], batch_deltas),
            *(extra or []),
        ]
    )


def new_chunk_put(table: Table, item: Item) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": table.name,
            "Item": to_attrs(item),
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }
