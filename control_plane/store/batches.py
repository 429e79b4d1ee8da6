"""Batch items: the OpenAI batch object flattened so its counters can be updated atomically,
plus the tenant's admission counters that move with every batch that starts or ends.

Timeline of one batch item and the tenant item beside it:
  create      put batch (validating) + tenant active_batches += 1, queued += known lines
  split ok    validating → in_progress, queued adjusted to the exact request count
  results     counters added with each chunk's result (`add_to_batch`, in the chunk's
              transaction); bisect and redrive reserve chunk numbers (`chunk_seq`)
  end         → failed | completed | expired | cancelled, tenant counters given back
              and the `batch.{status}` event recorded (store/events.py)
  redrive     completed → in_progress with new chunks, tenant counters taken again
Every step is a conditional write naming the state it expects, in one transaction with the
tenant counters where they move, so a retried or concurrent writer can never apply it twice.

What a client sends is stored so that no value can change the item's shape: the metadata map is
one JSON string (`metadata_json`), decoded on read (items written before keep a map, still read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import orjson

from control_plane.errors import LimitExceeded, NotFound, StateConflict, Unreadable
from control_plane.models import (
    TERMINAL_STATUSES,
    Batch,
    BatchError,
    BatchErrors,
    BatchFigures,
    BatchRequestCounts,
    BatchUsage,
    CursorPage,
    InputTokensDetails,
    OutputTokensDetails,
)
from control_plane.store import events, keys
from control_plane.store.items import BatchCounters, BatchItem
from control_plane.store.table import (
    UNREADABLE,
    UNREADABLE_OBJECT,
    Item,
    Table,
    TransactionConflict,
    to_attrs,
)

log = logging.getLogger("control_plane.store")

# What a batch needs to be failed when the rest of its item cannot be read.
CORE_ATTRIBUTES = ("id", "tenant_id", "status", "queued")


@dataclass(frozen=True)
class Limits:
    max_active_batches: int
    max_queued_requests: int


def create_batch(
    table: Table,
    *,
    tenant_id: str,
    batch: Batch,
    queued: int,
    limits: Limits,
    extra: Item,
    due_at: int,
) -> None:
    """Store a new batch and take its share of the tenant's limits in one transaction; the
    sweep looks at it at `due_at` unless it moved on before (a split that died)."""
    item: dict[str, Any] = {
        **keys.batch(batch.id),
        "gsi1pk": keys.tenant_listing(tenant_id, keys.BATCH_LISTING),
        "gsi1sk": batch.id,
        "gsi2pk": keys.DUE_BATCHES,
        "gsi2sk": keys.due_order(due_at, batch.id),
        "tenant_id": tenant_id,
        "id": batch.id,
        "endpoint": batch.endpoint,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "priority": batch.priority,
        "created_at": batch.created_at,
        "window_expires_at": batch.expires_at,
        "queued": queued,
        **extra,
    }
    if batch.metadata is not None:
        item["metadata_json"] = orjson.dumps(batch.metadata).decode()
    if queued > limits.max_queued_requests:
        # The tenant condition below passes while the tenant item has no counter yet (its
        # first batch), so a batch larger than the whole allowance is refused here.
        raise _which_limit(table, tenant_id, queued, limits)
    operations = [
        {
            "Put": {
                "TableName": table.name,
                "Item": to_attrs(item),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        },
        _take_limits(table.name, tenant_id, queued, limits),
    ]
    try:
        table.transact(operations)
    except TransactionConflict as exc:
        if 1 in exc.failed_parts:
            raise _which_limit(table, tenant_id, queued, limits) from exc
        raise


def _take_limits(table_name: str, tenant_id: str, queued: int, limits: Limits) -> dict[str, Any]:
    return {
        "Update": {
            "TableName": table_name,
            "Key": to_attrs(keys.tenant(tenant_id)),
            "UpdateExpression": "ADD active_batches :one, queued_requests :q",
            "ConditionExpression": (
                "(attribute_not_exists(active_batches) OR active_batches < :max_active) AND "
                "(attribute_not_exists(queued_requests) OR queued_requests <= :room)"
            ),
            "ExpressionAttributeValues": to_attrs(
                {
                    ":one": 1,
                    ":q": queued,
                    ":max_active": limits.max_active_batches,
                    ":room": limits.max_queued_requests - queued,
                }
            ),
        }
    }


def _which_limit(table: Table, tenant_id: str, queued: int, limits: Limits) -> LimitExceeded:
    stats = table.get(keys.tenant(tenant_id)) or {}
    if int(stats.get("active_batches", 0)) >= limits.max_active_batches:
        return LimitExceeded(
            "max_active_batches",
            limits.max_active_batches,
            "Too many unfinished batches for this tenant; wait for one to finish",
        )
    return LimitExceeded(
        "max_queued_requests",
        limits.max_queued_requests,
        f"This batch's {queued} requests would exceed the requests this tenant may have "
        f"queued ({int(stats.get('queued_requests', 0))} queued now)",
    )


def tenant_stats(table: Table, tenant_id: str) -> Item:
    return table.get(keys.tenant(tenant_id)) or {"active_batches": 0, "queued_requests": 0}


# The counters chunks add to their batch's shards (`keys.COUNTER_PREFIX`); META holds what the
# split and redrive set. A reader sees their sums.
SUMMED = (
    "n_completed",
    "n_failed",
    "tok_input",
    "tok_output",
    "tok_cached",
    "tok_reasoning",
    "engine_s",
    "chunks_open",
    "chunks_in_flight",
    "progress_completed",
    "progress_failed",
)


def get_batch(table: Table, batch_id: str) -> BatchItem | None:
    """The batch's item with its counters summed over its shards, in one strongly consistent
    Query of the `META…` items (raises `Unreadable` when the item cannot be parsed)."""
    try:
        items, _ = table.query_page(
            index=None,
            key_name="pk",
            key_value=keys.batch(batch_id)["pk"],
            limit=keys.COUNTER_SHARDS + 1,
            newest_first=False,
            sort_condition=("sk", "begins_with", keys.META),
            consistent=True,
        )
    except UNREADABLE as exc:
        log.error("unreadable batch item", extra={"batch_id": batch_id, "error": repr(exc)[:500]})
        raise Unreadable("batch", batch_id) from exc
    meta = next((item for item in items if item["sk"] == keys.META), None)
    if meta is None:
        if table.get(keys.batch(batch_id), attributes=["pk"]) is not None:
            raise Unreadable("batch", batch_id)  # left out of the page: it does not parse
        return None
    return _summed(meta, [item for item in items if item["sk"] != keys.META])


def _summed(meta: Item, shards: list[Item]) -> BatchItem:
    summed: dict[str, Any] = dict(meta)
    for shard in shards:
        for name in SUMMED:
            if name in shard:
                summed[name] = summed.get(name, 0) + shard[name]
    if "engine_s" in summed:
        summed["engine_s"] = round(float(summed["engine_s"]), 6)
    return cast(BatchItem, summed)


def counters(table: Table, batch_id: str) -> BatchItem:
    """Only the summed counters of a batch (its shards and META's own), for a caller that
    already holds the rest of the item (a listing)."""
    items, _ = table.query_page(
        index=None,
        key_name="pk",
        key_value=keys.batch(batch_id)["pk"],
        limit=keys.COUNTER_SHARDS,
        newest_first=False,
        sort_condition=("sk", "begins_with", keys.COUNTER_PREFIX),
    )
    return _summed({"id": batch_id}, items)


def get_batch_item(table: Table, *, batch_id: str, tenant_id: str | None) -> BatchItem:
    """The batch's item; another tenant's batch is as absent as a missing one (404). One that
    cannot be read is `Unreadable` — for its own tenant only, so nobody learns it exists."""
    try:
        item = get_batch(table, batch_id)
    except Unreadable:
        owner = table.get(keys.batch(batch_id), attributes=["tenant_id"])
        if owner is not None and tenant_id in (None, owner.get("tenant_id")):
            raise
        raise NotFound("batch", batch_id, param="batch_id") from None
    if item is None or (tenant_id is not None and item.get("tenant_id") != tenant_id):
        raise NotFound("batch", batch_id, param="batch_id")
    return item


def list_batches(
    table: Table, *, tenant_id: str, limit: int, after: str | None
) -> CursorPage[Batch]:
    listing = keys.tenant_listing(tenant_id, keys.BATCH_LISTING)
    start = (
        keys.listing_start(keys.batch(after), tenant_id, keys.BATCH_LISTING, after)
        if after
        else None
    )
    items, has_more = table.query_page(
        index="gsi1", key_name="gsi1pk", key_value=listing, limit=limit, start_key=start
    )
    data: list[Batch] = []
    for item in items:
        try:
            shards = counters(table, str(item["id"]))
            data.append(batch_from_item(_summed(item, [dict(shards)])))
        except Unreadable:
            continue  # logged by batch_from_item; the rest of the listing still answers
    return CursorPage[Batch](
        data=data,
        first_id=data[0].id if data else "",
        last_id=data[-1].id if data else "",
        has_more=has_more,
    )


def transition(
    table: Table,
    item: BatchItem,
    *,
    expect: set[str],
    to: str,
    at: int,
    sets: dict[str, Any] | None = None,
    queued: int | None = None,
    limits: Limits | None = None,
    due_at: int | None = None,
) -> BatchItem:
    """Move the batch from one of `expect` to `to`, stamping `{to}_at`, setting `sets` (and,
    for an unfinished state, when the sweep next looks at it: `due_at`).

    Entering a terminal state gives the tenant's counters back; `queued` re-counts the batch's
    share of queued requests (the split learns the exact count), checked against `limits`.
    Raises `StateConflict` with the current item when the batch is no longer in `expect`, and
    `LimitExceeded` when the new count does not fit.
    """
    names = {"#status": "status"}
    values: dict[str, Any] = {":to": to, ":at": at, ":queued_before": item["queued"]}
    assignments = ["#status = :to", f"{to}_at = :at"]
    if due_at is not None and to not in TERMINAL_STATUSES:
        sets = {**(sets or {}), "gsi2sk": keys.due_order(due_at, item["id"])}
    for index, (name, value) in enumerate((sets or {}).items()):
        names[f"#f{index}"] = name
        values[f":v{index}"] = value
        assignments.append(f"#f{index} = :v{index}")
    expected = []
    for index, status in enumerate(sorted(expect)):
        values[f":e{index}"] = status
        expected.append(f":e{index}")
    condition = f"#status IN ({', '.join(expected)})"
    terminal = to in TERMINAL_STATUSES
    if terminal or queued is not None:
        # The tenant's counters move by what this item holds: it must not change under us.
        condition += " AND queued = :queued_before"
    else:
        del values[":queued_before"]
    delta = 0
    if terminal:
        delta = -int(item["queued"])
        assignments.append("queued = :zero")
        values[":zero"] = 0
        expression = "SET " + ", ".join(assignments) + " REMOVE gsi2pk, gsi2sk"
    else:
        if queued is not None:
            delta = queued - int(item["queued"])
            assignments.append("queued = :queued_after")
            values[":queued_after"] = queued
        expression = "SET " + ", ".join(assignments)
    if not terminal and delta == 0:
        updated = table.update(
            keys.batch(item["id"]), expression, condition=condition, names=names, values=values
        )
        return cast(BatchItem, updated)
    update = {
        "TableName": table.name,
        "Key": to_attrs(keys.batch(item["id"])),
        "UpdateExpression": expression,
        "ConditionExpression": condition,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": to_attrs(values),
    }
    tenant_update = _move_tenant(table.name, item["tenant_id"], delta, terminal, limits)
    operations = [{"Update": update}, tenant_update]
    if terminal:
        # The `batch.{status}` webhook event, recorded with the transition itself: exactly once.
        operations.append(
            events.batch_event_put(
                table.name, tenant_id=item["tenant_id"], batch_id=item["id"], status=to, at=at
            )
        )
    try:
        table.transact(operations)
    except TransactionConflict as exc:
        if 0 in exc.failed_parts:
            raise StateConflict(table.get(keys.batch(item["id"]))) from exc
        assert limits is not None  # only a limited increase can fail on the tenant side
        raise _which_limit(table, item["tenant_id"], delta, limits) from exc
    return get_batch_item(table, batch_id=item["id"], tenant_id=None)


def _move_tenant(
    table_name: str, tenant_id: str, delta: int, terminal: bool, limits: Limits | None
) -> dict[str, Any]:
    values: dict[str, Any] = {":d": delta, ":batches": -1 if terminal else 0}
    update: dict[str, Any] = {
        "TableName": table_name,
        "Key": to_attrs(keys.tenant(tenant_id)),
        "UpdateExpression": "ADD queued_requests :d, active_batches :batches",
    }
    if delta > 0 and limits is not None:
        values[":room"] = limits.max_queued_requests - delta
        update["ConditionExpression"] = "queued_requests <= :room"
    update["ExpressionAttributeValues"] = to_attrs(values)
    return {"Update": update}


def batch_from_item(item: BatchItem) -> Batch:
    """The OpenAI batch object of an item; `Unreadable` (logged with its ids) when the item
    does not make one."""
    try:
        return _batch_of(item)
    except UNREADABLE_OBJECT as exc:
        batch_id = str(item.get("id") or item.get("pk", "?"))
        log.error(
            "unreadable batch item",
            extra={
                "batch_id": batch_id,
                "tenant_id": item.get("tenant_id"),
                "error": repr(exc)[:500],
            },
        )
        raise Unreadable("batch", batch_id) from exc


def metadata_of(item: BatchItem) -> dict[str, str] | None:
    if "metadata_json" in item:
        decoded = orjson.loads(item["metadata_json"])
        if decoded is not None and not (
            isinstance(decoded, dict) and all(isinstance(v, str) for v in decoded.values())
        ):
            raise ValueError("metadata_json is not an object of strings")
        return cast(dict[str, str] | None, decoded)
    return item.get("metadata")  # written before metadata_json


def _counts(item: BatchItem) -> BatchRequestCounts:
    """Finished chunks' counts, plus, while the batch runs, what its running chunks' workers
    reported answered so far (summed on its counters as reports arrive), so request_counts move
    between chunk results. A chunk that finished between two reads never counts past the total."""
    total = int(item.get("n_total", 0))
    completed, failed = int(item.get("n_completed", 0)), int(item.get("n_failed", 0))
    if item.get("status") == "in_progress":
        completed = min(completed + int(item.get("progress_completed", 0)), total)
        failed = min(failed + int(item.get("progress_failed", 0)), total - completed)
    return BatchRequestCounts(total=total, completed=completed, failed=failed)


def _batch_of(item: BatchItem) -> Batch:
    errors = item.get("errors")
    return Batch(
        id=item["id"],
        endpoint=item["endpoint"],
        model=item.get("model"),
        errors=BatchErrors(data=[BatchError.model_validate(e) for e in errors]) if errors else None,
        input_file_id=item["input_file_id"],
        completion_window=item["completion_window"],
        status=item["status"],
        output_file_id=item.get("output_file_id"),
        error_file_id=item.get("error_file_id"),
        created_at=item["created_at"],
        in_progress_at=item.get("in_progress_at"),
        expires_at=item.get("window_expires_at"),
        finalizing_at=item.get("finalizing_at"),
        completed_at=item.get("completed_at"),
        failed_at=item.get("failed_at"),
        expired_at=item.get("expired_at"),
        cancelling_at=item.get("cancelling_at"),
        cancelled_at=item.get("cancelled_at"),
        request_counts=_counts(item),
        usage=BatchUsage(
            input_tokens=item.get("tok_input", 0),
            input_tokens_details=InputTokensDetails(cached_tokens=item.get("tok_cached", 0)),
            output_tokens=item.get("tok_output", 0),
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=item.get("tok_reasoning", 0)
            ),
            total_tokens=item.get("tok_input", 0) + item.get("tok_output", 0),
        ),
        metadata=metadata_of(item),
        priority=item.get("priority", "normal"),
        # The stored counter only; the services add cost, rates and ETA (control_plane/metering).
        hotbatch=BatchFigures(engine_seconds=float(item.get("engine_s", 0.0))),
    )


def due_batch_ids(table: Table, *, now: int, limit: int) -> list[str]:
    """Unfinished batches whose next look has come (`keys.due_order`), most overdue first."""
    items, _ = table.query_page(
        index="gsi2",
        key_name="gsi2pk",
        key_value=keys.DUE_BATCHES,
        limit=limit,
        newest_first=False,
        sort_condition=("gsi2sk", "<=", keys.due_before(now)),
        attributes=["pk"],
    )
    return [keys.batch_id_of(str(item["pk"])) for item in items]


def set_due(table: Table, batch_id: str, *, due_at: int) -> None:
    """When the sweep next looks at an unfinished batch (a finished one is in no queue)."""
    try:
        table.update(
            keys.batch(batch_id),
            "SET gsi2sk = :due",
            condition="attribute_exists(gsi2pk)",
            values={":due": keys.due_order(due_at, batch_id)},
            returns="NONE",
        )
    except StateConflict:
        pass  # it finished meanwhile


def add_to_batch(
    table: Table, batch_id: str, deltas: BatchCounters, *, shard: int | None = None
) -> dict[str, Any]:
    """A transaction part: add `deltas` to the batch's counters: to counter shard `shard`
    (a chunk's moves: `keys.counter_shard`), or to META itself."""
    key = keys.batch(batch_id) if shard is None else keys.batch_counter(batch_id, shard)
    names = {f"#c{i}": name for i, name in enumerate(deltas)}
    values: dict[str, Any] = {f":c{i}": delta for i, delta in enumerate(deltas.values())}
    return {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(key),
            "UpdateExpression": "ADD " + ", ".join(f"#c{i} :c{i}" for i in range(len(deltas))),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": to_attrs(values),
        }
    }


def require_dispatching(table: Table, batch_id: str) -> dict[str, Any]:
    """A transaction part: the batch is in progress and still dispatching (an expiring batch
    stays in_progress while its chunks are settled, with `stop_dispatch` set)."""
    return {
        "ConditionCheck": {
            "TableName": table.name,
            "Key": to_attrs(keys.batch(batch_id)),
            "ConditionExpression": "#status = :required AND attribute_not_exists(stop_dispatch)",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": to_attrs({":required": "in_progress"}),
        }
    }


def reserve_chunk_numbers(table: Table, batch_id: str, count: int) -> int:
    """Take `count` fresh chunk numbers (bisection halves, redriven chunks); return the first.
    Numbers are never reused, so a retried caller only leaves a gap."""
    after = table.update(keys.batch(batch_id), "ADD chunk_seq :n", values={":n": count})
    return int(after["chunk_seq"]) - count


def mark_split_restarted(table: Table, batch_id: str, *, at: int) -> BatchItem:
    """Stamp a restart of a stale split, only while the batch is still validating (raises
    StateConflict with the current item otherwise)."""
    updated = table.update(
        keys.batch(batch_id),
        "SET split_restarted_at = :now ADD split_restarts :one",
        condition="#status = :validating",
        names={"#status": "status"},
        values={":now": at, ":validating": "validating", ":one": 1},
    )
    return cast(BatchItem, updated)


def stop_dispatch(table: Table, batch_id: str) -> BatchItem:
    """No more dispatches for this batch (its completion window ran out); idempotent."""
    updated = table.update(keys.batch(batch_id), "SET stop_dispatch = :yes", values={":yes": True})
    return cast(BatchItem, updated)


def reopen_for_redrive(
    table: Table,
    batch: BatchItem,
    *,
    new_chunks: list[dict[str, Any]],
    requests: int,
    generation: int,
    now: int,
) -> None:
    """completed → in_progress with `new_chunks` (transaction parts) holding `requests`
    redriven requests, in one transaction with the tenant's counters. Redrive `generation`
    must follow the last one: two redrives at once cannot both win (TransactionConflict)."""
    update = {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.batch(batch["id"])),
            "UpdateExpression": (
                "SET #status = :progress, redrives = :generation, queued = :requests, "
                "gsi2pk = :active, gsi2sk = :id REMOVE finalizing_at "
                "ADD chunks_open :chunks, n_failed :minus"
            ),
            "ConditionExpression": (
                "#status = :completed AND (attribute_not_exists(redrives) OR redrives = :seen)"
            ),
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": to_attrs(
                {
                    ":progress": "in_progress",
                    ":completed": "completed",
                    ":generation": generation,
                    ":seen": generation - 1,
                    ":requests": requests,
                    ":active": keys.DUE_BATCHES,
                    ":id": keys.due_order(now, batch["id"]),
                    ":chunks": len(new_chunks),
                    ":minus": -requests,
                }
            ),
        }
    }
    tenant = {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.tenant(batch["tenant_id"])),
            "UpdateExpression": "ADD active_batches :one, queued_requests :requests",
            "ExpressionAttributeValues": to_attrs({":one": 1, ":requests": requests}),
        }
    }
    table.transact([update, tenant, *new_chunks])


def note_tick_failure(table: Table, batch_id: str, *, reason: str, at: int) -> BatchItem | None:
    """Count one more consecutive tick that failed on this batch; return the batch's failure
    counters (`tick_failures`, `tick_failing_since`), None when there is no such batch. Only the
    counters are read back, so a batch whose item cannot be parsed is still counted."""
    try:
        table.update(
            keys.batch(batch_id),
            "ADD tick_failures :one SET last_tick_error = :reason, "
            "tick_failing_since = if_not_exists(tick_failing_since, :at)",
            condition="attribute_exists(pk)",
            values={":one": 1, ":reason": reason[:1000], ":at": at},
            returns="NONE",
        )
    except StateConflict:
        return None
    counters = table.get(keys.batch(batch_id), attributes=["tick_failures", "tick_failing_since"])
    return cast(BatchItem, {"id": batch_id, **(counters or {})})


def clear_tick_failures(table: Table, batch_id: str) -> None:
    """A tick went through this batch without a failure: the count starts again."""
    try:
        table.update(
            keys.batch(batch_id),
            "REMOVE tick_failures, tick_failing_since, last_tick_error",
            condition="attribute_exists(tick_failures)",
            returns="NONE",
        )
    except StateConflict:
        pass  # already cleared


def fail_unprocessable(table: Table, batch_id: str, *, message: str, at: int) -> BatchItem | None:
    """Fail a batch the tick cannot move on (an unreadable item, a bug, data that has gone),
    with one `errors` entry saying so, giving its tenant counters back. Reads only the few
    attributes that needs, so a batch whose other attributes are corrupt can still be failed.
    None when the batch is gone or already finished."""
    core = table.get(keys.batch(batch_id), attributes=CORE_ATTRIBUTES)
    if core is None or core.get("status") in TERMINAL_STATUSES:
        return None
    error = {"code": "batch_unprocessable", "line": None, "message": message, "param": None}
    try:
        transition(
            table,
            cast(BatchItem, {"id": batch_id, **core}),
            expect={str(core["status"])},
            to="failed",
            at=at,
            sets={"errors": [error]},
        )
    except StateConflict:
        return None  # it moved on after all (or another tick failed it first)
    except Unreadable:
        pass  # failed; only the read-back of the whole item did not parse
    return cast(BatchItem, core)
