"""Chunk items: one per chunk object, written by the split, driven by dispatch and results.

Timeline of one chunk item (every move conditioned on the state and attempt its writer saw):
  split, bisect, redrive   put pending (gsi2: its tenant's `PENDING#{endpoint}#{rank}#{tenant}`
                           queue, by batch and number)
  claim                    pending → dispatched, attempt + 1, lease, next check (gsi2: one of
                           its endpoint's `DISPATCHED#` shards, by next check)
  progress                 while dispatched: the worker's answered count, added to its batch
  release                  dispatched → pending after a failure, with a backoff
  finish                   → done | dead | split | cancelled | expired, off the queues
Each move that changes the batch's counters adds them to the chunk's counter shard
(`keys.counter_shard`) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from control_plane.layout import chunk_id as chunk_id_of
from control_plane.models import ChunkRef
from control_plane.store import keys
from control_plane.store.batches import add_to_batch, require_dispatching
from control_plane.store.items import BatchCounters, ChunkFields, ChunkItem
from control_plane.store.table import Item, Table, to_attrs

# A chunk item is under 1 KB: one write unit on the table and one on the pending index, each
# below DynamoDB's 1,000 a second per key with room for the dispatcher's claims beside it.
CHUNK_WRITES_PER_S = 800.0


def chunk_item(
    batch_id: str,
    priority: str,
    chunk: ChunkRef,
    *,
    tenant_id: str,
    endpoint_id: str,
    created_at: int,
    parent: str | None = None,
) -> ChunkItem:
    chunk_id = chunk_id_of(chunk.index)
    key = keys.chunk(batch_id, chunk.index)
    group_order = chunk.index if chunk.group_order is None else chunk.group_order
    item: ChunkItem = {
        "pk": key["pk"],
        "sk": key["sk"],
        "gsi2pk": keys.pending_queue(endpoint_id, priority, tenant_id),
        "gsi2sk": keys.pending_order(batch_id, chunk_id, group_order),
        "batch_id": batch_id,
        "chunk_id": chunk_id,
        "state": "pending",
        "priority": priority,
        "tenant_id": tenant_id,
        "runpod_endpoint_id": endpoint_id,
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
    table: Table,
    *,
    batch_id: str,
    tenant_id: str,
    endpoint_id: str,
    priority: str,
    chunks: Iterable[ChunkRef],
    created_at: int,
) -> int:
    """Unconditional puts: the split writes the same items again when it is retried, and no
    chunk can have moved on before its batch leaves `validating`. Paced: every chunk of a batch
    shares its partition key and its pending-index partition, and DynamoDB throttles one key
    past 1,000 write units a second (a 1M-request batch is ~10,000 chunks)."""
    return table.put_many(
        (
            chunk_item(
                batch_id,
                priority,
                chunk,
                tenant_id=tenant_id,
                endpoint_id=endpoint_id,
                created_at=created_at,
            )
            for chunk in chunks
        ),
        per_s=CHUNK_WRITES_PER_S,
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


def pending_of(
    table: Table,
    *,
    endpoint_id: str,
    priority: str,
    tenant_id: str,
    limit: int,
    after: ChunkItem | None = None,
) -> tuple[list[ChunkItem], bool]:
    """One tenant's pending chunks for an endpoint at a priority, in dispatch order (its oldest
    batch first, one prefix group after another: `keys.pending_order`), from after `after`."""
    start = None
    if after is not None:
        start = {key: after[key] for key in ("pk", "sk", "gsi2pk", "gsi2sk")}
    items, more = table.query_page(
        index="gsi2",
        key_name="gsi2pk",
        key_value=keys.pending_queue(endpoint_id, priority, tenant_id),
        limit=limit,
        newest_first=False,
        start_key=start,
    )
    return cast(list[ChunkItem], items), more


def overdue(table: Table, *, endpoint_id: str, now: int, limit: int) -> list[ChunkItem]:
    """Dispatched chunks of an endpoint whose next check has come, up to `limit` per shard,
    the most overdue first."""
    found: list[ChunkItem] = []
    for queue in keys.dispatched_queues(endpoint_id):
        items, _ = table.query_page(
            index="gsi2",
            key_name="gsi2pk",
            key_value=queue,
            limit=limit,
            newest_first=False,
            sort_condition=("gsi2sk", "<=", keys.due_before(now)),
        )
        found.extend(cast(list[ChunkItem], items))
    return sorted(found, key=lambda chunk: str(chunk.get("gsi2sk", "")))


def count_dispatched(table: Table, *, endpoint_id: str, cap: int) -> int:
    """Dispatched chunks of an endpoint, counted up to `cap` (a health figure, not a window)."""
    return sum(
        table.count(index="gsi2", key_name="gsi2pk", key_value=queue, cap=cap)
        for queue in keys.dispatched_queues(endpoint_id)
    )


def endpoint_of(chunk: ChunkItem, default: str) -> str:
    return str(chunk.get("runpod_endpoint_id") or default)


def _chunk_update(
    table: Table,
    chunk: ChunkItem,
    expression: str,
    *,
    expect_state: str,
    values: dict[str, Any],
    names: dict[str, str] | None = None,
    extra_condition: str | None = None,
    extra_values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A transaction part: update `chunk` only if it is still in `expect_state` at the attempt
    this caller saw — a retried or concurrent writer fails the condition instead."""
    values = {
        **values,
        **(extra_values or {}),
        ":expect": expect_state,
        ":seen_attempts": chunk["attempts"],
    }
    condition = "#state = :expect AND attempts = :seen_attempts"
    if extra_condition:
        condition += f" AND ({extra_condition})"
    return {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.chunk(chunk["batch_id"], int(chunk["chunk_id"]))),
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#state": "state", **(names or {})},
            "ExpressionAttributeValues": to_attrs(values),
        }
    }


def claim(
    table: Table, chunk: ChunkItem, *, lease_until: int, check_at: int, now: int
) -> ChunkItem:
    """pending → dispatched with the next attempt, a lease and its first check, counted in
    flight on its batch, only while the batch is in progress. Raises TransactionConflict when
    another dispatcher won or the batch stopped."""
    attempt = int(chunk["attempts"]) + 1
    endpoint_id = endpoint_of(chunk, "")
    table.transact(
        [
            _chunk_update(
                table,
                chunk,
                "SET #state = :dispatched, attempts = :attempt, lease_until = :lease, "
                "check_at = :check, dispatched_at = :now, gsi2pk = :queue, gsi2sk = :order "
                "REMOVE job_id, progress_completed, progress_failed, progress_at",
                expect_state="pending",
                values={
                    ":dispatched": "dispatched",
                    ":attempt": attempt,
                    ":lease": lease_until,
                    ":check": check_at,
                    ":now": now,
                    ":queue": keys.dispatched_queue(endpoint_id, chunk["chunk_id"]),
                    ":order": keys.dispatched_order(check_at, chunk["batch_id"], chunk["chunk_id"]),
                },
            ),
            require_dispatching(table, chunk["batch_id"]),
            add_to_batch(table, chunk["batch_id"], {"chunks_in_flight": 1}, shard=_shard(chunk)),
        ]
    )
    return {
        **chunk,
        "state": "dispatched",
        "attempts": attempt,
        "lease_until": lease_until,
        "check_at": check_at,
        "dispatched_at": now,
    }


def _shard(chunk: ChunkItem) -> int:
    return keys.counter_shard(chunk["chunk_id"])


def check_later(table: Table, chunk: ChunkItem, *, check_at: int) -> None:
    """Ask RunPod about a dispatched chunk again at `check_at` (it was still running)."""
    table.update(
        keys.chunk(chunk["batch_id"], int(chunk["chunk_id"])),
        "SET check_at = :check, gsi2sk = :order",
        condition="#state = :dispatched AND attempts = :attempt",
        names={"#state": "state"},
        values={
            ":check": check_at,
            ":order": keys.dispatched_order(check_at, chunk["batch_id"], chunk["chunk_id"]),
            ":dispatched": "dispatched",
            ":attempt": chunk["attempts"],
        },
    )


def tries(chunk: ChunkItem) -> int:
    """How many of the chunk's dispatches reached a worker (refunded ones did not)."""
    return int(chunk["attempts"]) - int(chunk.get("refunds", 0))


def set_job(
    table: Table,
    chunk: ChunkItem,
    job_id: str,
    *,
    endpoint_id: str,
    check_at: int,
    webhook: bool = True,
) -> None:
    """Record the RunPod job (and the endpoint it runs on: status and cancel must ask that one),
    whether RunPod will post its result (`webhook`; without, only the sweep's checks find it)
    and when the sweep asks about it if no result has come by then."""
    table.update(
        keys.chunk(chunk["batch_id"], int(chunk["chunk_id"])),
        "SET job_id = :job, runpod_endpoint_id = :endpoint, check_at = :check, gsi2sk = :order, "
        "webhook = :webhook",
        condition="#state = :dispatched AND attempts = :attempt",
        names={"#state": "state"},
        values={
            ":job": job_id,
            ":endpoint": endpoint_id,
            ":check": check_at,
            ":order": keys.dispatched_order(check_at, chunk["batch_id"], chunk["chunk_id"]),
            ":dispatched": "dispatched",
            ":attempt": chunk["attempts"],
            ":webhook": webhook,
        },
    )


def save_progress(table: Table, chunk: ChunkItem, *, completed: int, failed: int, now: int) -> None:
    """A running chunk's requests answered so far (its worker's latest report), kept only while
    the chunk is dispatched at this attempt, and moved onto its batch's counters by the change
    since its last report: a finished or retried chunk ignores it, and a report that crossed
    another one is refused (StateConflict via TransactionConflict) rather than counted twice."""
    seen_completed = int(chunk.get("progress_completed", 0))
    seen_failed = int(chunk.get("progress_failed", 0))
    table.transact(
        [
            _chunk_update(
                table,
                chunk,
                "SET progress_completed = :completed, progress_failed = :failed, "
                "progress_at = :now",
                expect_state="dispatched",
                values={":completed": completed, ":failed": failed, ":now": now},
                extra_condition=_progress_seen(chunk),
                extra_values=_progress_seen_values(chunk),
            ),
            add_to_batch(
                table,
                chunk["batch_id"],
                {
                    "progress_completed": completed - seen_completed,
                    "progress_failed": failed - seen_failed,
                },
                shard=_shard(chunk),
            ),
        ]
    )


def _progress_seen(chunk: ChunkItem) -> str:
    """The chunk's progress is still what this writer read (so the batch's sum stays exact)."""
    if "progress_completed" in chunk:
        return "progress_completed = :seen_completed AND progress_failed = :seen_failed"
    return "attribute_not_exists(progress_completed)"


def _progress_seen_values(chunk: ChunkItem) -> dict[str, Any]:
    if "progress_completed" in chunk:
        return {
            ":seen_completed": int(chunk.get("progress_completed", 0)),
            ":seen_failed": int(chunk.get("progress_failed", 0)),
        }
    return {}


def _progress_back(chunk: ChunkItem) -> BatchCounters:
    """What leaving `dispatched` takes back from the batch's progress sums."""
    completed = int(chunk.get("progress_completed", 0))
    failed = int(chunk.get("progress_failed", 0))
    back: BatchCounters = {}
    if completed:
        back["progress_completed"] = -completed
    if failed:
        back["progress_failed"] = -failed
    return back


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
                    ":queue": keys.pending_queue(
                        endpoint_of(chunk, ""), priority, str(chunk.get("tenant_id", ""))
                    ),
                    ":order": keys.pending_order(
                        chunk["batch_id"],
                        chunk["chunk_id"],
                        int(chunk.get("group_order", chunk["chunk_id"])),
                    ),
                },
                extra_condition=_progress_seen(chunk),
                extra_values=_progress_seen_values(chunk),
            ),
            add_to_batch(
                table,
                chunk["batch_id"],
                {"chunks_in_flight": -1, **_progress_back(chunk)},
                shard=_shard(chunk),
            ),
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
    transaction. A dispatched chunk's last progress report leaves the batch's sums with it."""
    deltas: dict[str, Any] = dict(batch_deltas)
    if expect_state == "dispatched":
        for name, value in _progress_back(chunk).items():
            deltas[name] = deltas.get(name, 0) + value
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
                expression + " REMOVE gsi2pk, gsi2sk, lease_until, check_at",
                expect_state=expect_state,
                values=values,
                names=names,
                extra_condition=_progress_seen(chunk) if expect_state == "dispatched" else None,
                extra_values=_progress_seen_values(chunk) if expect_state == "dispatched" else None,
            ),
            add_to_batch(
                table, chunk["batch_id"], cast(BatchCounters, deltas), shard=_shard(chunk)
            ),
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
