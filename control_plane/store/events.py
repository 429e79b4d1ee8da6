"""Event outbox items and their deliveries (at least once, to each of a tenant's endpoints).

Timeline of one event:
  transition  a batch enters a final state: the event item is put in the same transaction
              (`batch_event_put`), in gsi2 `EVENTS#new` — recorded exactly once per transition
  fan-out     the tick puts one delivery per subscribed endpoint and takes the event out of
              `EVENTS#new`, in one transaction (a second tick's fan-out loses the condition)
  attempt     the tick claims a due delivery (`attempts` moves on, the due time moves a lease
              ahead, so a tick that dies mid-send leaves it to be retried), sends, then records
              the attempt: delivered, due again after a backoff, or failed for good
Events and deliveries expire by TTL a week after the event, well after the last retry.
"""

from __future__ import annotations

from typing import Any

from control_plane.errors import StateConflict
from control_plane.ids import new_id
from control_plane.notify.models import Event, EventData
from control_plane.store import keys
from control_plane.store.table import Item, Table, TransactionConflict, to_attrs

EVENT_TTL_S = 7 * 24 * 3600
PENDING, DELIVERED, FAILED, DROPPED = "pending", "delivered", "failed", "dropped"


def batch_event_put(
    table_name: str, *, tenant_id: str, batch_id: str, status: str, at: int
) -> dict[str, Any]:
    """A transaction part: the `batch.{status}` event of a batch entering a final state."""
    event = Event(
        id=new_id("event"), created_at=at, type=f"batch.{status}", data=EventData(id=batch_id)
    )
    item = {
        **keys.event(event.id),
        "gsi2pk": keys.NEW_EVENTS,
        "gsi2sk": event.id,
        "id": event.id,
        "tenant_id": tenant_id,
        "type": event.type,
        "created_at": at,
        # The exact bytes every attempt sends (and signs), whichever tick sends them.
        "payload": event.model_dump_json(),
        "expires_at": at + EVENT_TTL_S,
    }
    return {"Put": {"TableName": table_name, "Item": to_attrs(item)}}


def get_event(table: Table, event_id: str) -> Item | None:
    return table.get(keys.event(event_id))


def new_events(table: Table, *, limit: int) -> list[Item]:
    """Events not yet fanned out, oldest first."""
    items, _ = table.query_page(
        index="gsi2",
        key_name="gsi2pk",
        key_value=keys.NEW_EVENTS,
        limit=limit,
        newest_first=False,
    )
    return items


def fan_out(table: Table, event: Item, endpoint_ids: list[str], *, now: int) -> bool:
    """One pending delivery per endpoint, due now, and the event out of the new queue, at
    once. False when another tick fanned it out first."""
    taken = {
        "Update": {
            "TableName": table.name,
            "Key": to_attrs(keys.event(event["id"])),
            "UpdateExpression": "SET deliveries = :n REMOVE gsi2pk, gsi2sk",
            "ConditionExpression": "gsi2pk = :new",
            "ExpressionAttributeValues": to_attrs(
                {":n": len(endpoint_ids), ":new": keys.NEW_EVENTS}
            ),
        }
    }
    puts = [
        {
            "Put": {
                "TableName": table.name,
                "Item": to_attrs(
                    {
                        **keys.delivery(event["id"], endpoint_id),
                        "gsi2pk": keys.DUE_DELIVERIES,
                        "gsi2sk": keys.delivery_order(now, event["id"], endpoint_id),
                        "event_id": event["id"],
                        "endpoint_id": endpoint_id,
                        "tenant_id": event["tenant_id"],
                        "state": PENDING,
                        "attempts": 0,
                        "created_at": now,
                        "next_at": now,
                        "attempt_log": [],
                        "expires_at": int(event["created_at"]) + EVENT_TTL_S,
                    }
                ),
            }
        }
        for endpoint_id in endpoint_ids
    ]
    try:
        table.transact([taken, *puts])
    except TransactionConflict:
        return False
    return True


def due_deliveries(table: Table, *, now: int, limit: int) -> list[Item]:
    """Pending deliveries whose time has come, the longest waiting first."""
    items, _ = table.query_page(
        index="gsi2",
        key_name="gsi2pk",
        key_value=keys.DUE_DELIVERIES,
        limit=limit,
        newest_first=False,
        sort_condition=("gsi2sk", "<=", keys.due_before(now)),
    )
    return items


def claim_delivery(table: Table, delivery: Item, *, now: int, lease_s: int) -> Item | None:
    """Take the next attempt of a due delivery: `attempts` + 1 and due again only after the
    lease, so no other tick sends it meanwhile. None when another tick took it."""
    seen = int(delivery["attempts"])
    try:
        return table.update(
            keys.delivery(delivery["event_id"], delivery["endpoint_id"]),
            "SET attempts = :next, gsi2sk = :leased, last_attempt_at = :now",
            condition="#state = :pending AND attempts = :seen",
            names={"#state": "state"},
            values={
                ":next": seen + 1,
                ":seen": seen,
                ":pending": PENDING,
                ":now": now,
                ":leased": keys.delivery_order(
                    now + lease_s, delivery["event_id"], delivery["endpoint_id"]
                ),
            },
        )
    except StateConflict:
        return None


def record_attempt(
    table: Table, delivery: Item, *, entry: dict[str, Any], state: str, next_at: int | None
) -> bool:
    """Log the attempt this tick claimed and move the delivery on: pending again at `next_at`,
    or out of the queue as delivered / failed / dropped. False when the claim was lost (a
    slower tick than the lease): the attempt is then simply not logged."""
    values: dict[str, Any] = {
        ":entry": [entry],
        ":empty": [],
        ":mine": int(delivery["attempts"]),
        ":pending": PENDING,
        ":state": state,
    }
    expression = (
        "SET attempt_log = list_append(if_not_exists(attempt_log, :empty), :entry), "
        "#state = :state, last_status = :status"
    )
    values[":status"] = entry.get("status_code")
    if state == PENDING:
        assert next_at is not None
        expression += ", next_at = :next, gsi2sk = :due"
        values[":next"] = next_at
        values[":due"] = keys.delivery_order(next_at, delivery["event_id"], delivery["endpoint_id"])
    else:
        expression += ", finished_at = :at REMOVE gsi2pk, gsi2sk"
        values[":at"] = int(entry["at"])
    try:
        table.update(
            keys.delivery(delivery["event_id"], delivery["endpoint_id"]),
            expression,
            condition="#state = :pending AND attempts = :mine",
            names={"#state": "state"},
            values=values,
        )
    except StateConflict:
        return False
    return True


def deliveries_of(table: Table, event_id: str) -> list[Item]:
    items, _ = table.query_page(
        index=None,
        key_name="pk",
        key_value=keys.event(event_id)["pk"],
        limit=1000,
        newest_first=False,
        sort_condition=("sk", "begins_with", keys.DELIVERY_PREFIX),
    )
    return items
