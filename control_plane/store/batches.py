"""Batch items: the OpenAI batch object flattened so its counters can be updated atomically,
plus the tenant's admission counters that move with every batch that starts or ends.

Timeline of one batch item and the tenant item beside it:
  create      put batch (validating) + tenant active_batches += 1, queued += known lines
  split ok    validating → in_progress, queued adjusted to the exact request count
  results     counters added with each chunk's result (`add_to_batch`, in the chunk's
              transaction); bisect and redrive reserve chunk numbers (`chunk_seq`)
  end         → failed | completed | expired | cancelled, tenant counters given back
  redrive     completed → in_progress with new chunks, tenant counters taken again
Every step is a conditional write naming the state it expects, in one transaction with the
tenant counters where they move, so a retried or concurrent writer can never apply it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from control_plane.errors import LimitExceeded, NotFound, StateConflict
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
from control_plane.store import keys
from control_plane.store.items import BatchCounters, BatchItem
from control_plane.store.table import Item, Table, TransactionConflict, to_attrs


@dataclass(frozen=True)
class Limits:
    max_active_batches: int
    max_queued_requests: int


def create_batch(
    table: Table, *, tenant_id: str, batch: Batch, queued: int, limits: Limits, extra: Item
) -> None:
    """Store a new batch and take its share of the tenant's limits in one transaction."""
    item: dict[str, Any] = {
        **keys.batch(batch.id),
        "gsi1pk": keys.tenant_listing(tenant_id, keys.BATCH_LISTING),
        "gsi1sk": batch.id,
        "gsi2pk": keys.ACTIVE_BATCHES,
        "gsi2sk": batch.id,
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
        item["metadata"] = batch.metadata
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


def get_batch(table: Table, batch_id: str) -> BatchItem | None:
    return cast(BatchItem | None, table.get(keys.batch(batch_id)))


def get_batch_item(table: Table, *, batch_id: str, tenant_id: str | None) -> BatchItem:
    """The batch's item; another tenant's batch is as absent as a missing one (404)."""
    item = get_batch(table, batch_id)
    if item is None or (tenant_id is not None and item["tenant_id"] != tenant_id):
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
    data = [batch_from_item(cast(BatchItem, item)) for item in items]
    return CursorPage[Batch](
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
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
) -> BatchItem:
    """Move the batch from one of `expect` to `to`, stamping `{to}_at`, setting `sets`.

    Entering a terminal state gives the tenant's counters back; `queued` re-counts the batch's
    share of queued requests (the split learns the exact count), checked against `limits`.
    Raises `StateConflict` with the current item when the batch is no longer in `expect`, and
    `LimitExceeded` when the new count does not fit.
    """
    names = {"#status": "status"}
    values: dict[str, Any] = {":to": to, ":at": at, ":queued_before": item["queued"]}
    assignments = ["#status = :to", f"{to}_at = :at"]
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
    try:
        table.transact([{"Update": update}, tenant_update])
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
        request_counts=BatchRequestCounts(
            total=item.get("n_total", 0),
            completed=item.get("n_completed", 0),
            failed=item.get("n_failed", 0),
        ),
        usage=BatchUsage(
            input_tokens=item.get("tok_input", 0),
            input_tokens_details=InputTokensDetails(cached_tokens=item.get("tok_cached", 0)),
            output_tokens=item.get("tok_output", 0),
            output_tokens_details=OutputTokensDetails(
                reasoning_tokens=item.get("tok_reasoning", 0)
            ),
            total_tokens=item.get("tok_input", 0) + item.get("tok_output", 0),
        ),
        metadata=item.get("metadata"),
        priority=item.get("priority", "normal"),
        # The stored counter only; the services add cost, rates and ETA (control_plane/metering).
        hotbatch=BatchFigures(engine_seconds=float(item.get("engine_s", 0.0))),
    )


def active_batches(table: Table, *, limit: int = 100_000) -> list[BatchItem]:
    """Unfinished batches (the sparse gsi2 `ACTIVE` queue), oldest first."""
    items, _ = table.query_page(
        index="gsi2",
        key_name="gsi2pk",
        key_value=keys.ACTIVE_BATCHES,
        limit=limit,
        newest_first=False,
    )
    return cast(list[BatchItem], items)


def add_to_batch(
    table: Table, batch_id: str, deltas: BatchCounters, *, require_status: str | None = None
) -> dict[str, Any]:
    """A transaction part: add `deltas` to the batch's counters (optionally only while it is in
    `require_status` and still dispatching)."""
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
        "SET split_restarted_at = :now",
        condition="#status = :validating",
        names={"#status": "status"},
        values={":now": at, ":validating": "validating"},
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
                    ":active": keys.ACTIVE_BATCHES,
                    ":id": batch["id"],
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
