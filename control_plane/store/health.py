"""Health items in the `HEALTH` partition: the ping round in flight (`PINGS`), the health
samples (`SAMPLE#{at:010d}`, one per tick, expiring by TTL), the batch arrivals of each day
(`ARRIVALS#{day:06d}`, what the `learned` keep-hot schedule forecasts from), plus the queue
figures a sample records.

Timeline of the `PINGS` item, written by the tick only, conditioned on the version it read:
  send     jobs = [ids of the round], sent_at = now, version + 1
  harvest  finished jobs leave `jobs`, the newest reading is kept, version + 1
A tick that loses the race cancels the round it has just sent, so rounds never pile up.
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel, Field

from control_plane.errors import StateConflict
from control_plane.store import chunks as chunk_store
from control_plane.store import fairq, keys
from control_plane.store.table import Item, Table

QUEUE_COUNT_CAP = 100_000
# The waiting (priority, tenant) entries a health sample reads: one per tenant and priority.
FAIR_ENTRIES_READ = 1000
PRIORITY_OF_RANK = {rank: priority for priority, rank in keys.PRIORITY_RANK.items()}
DAY_S = 86_400
# One day's arrivals stay one small item: past this many batches a day, later ones are not
# recorded (a forecast needs the recurring times, not every ad-hoc batch).
ARRIVALS_PER_DAY_CAP = 5_000
ARRIVALS_TTL_DAYS = 9  # a week of history and the day being forecast


class PingRound(BaseModel):
    jobs: list[str] = Field(default_factory=list)  # RunPod job ids of the round in flight
    sent_at: int = 0
    rounds: int = 0  # rounds sent so far
    last_reading: dict[str, Any] | None = None
    last_reading_at: int = 0
    work_read_until: int = 0  # work readings up to this second are in a sample already
    sent_cold: bool = False  # the round in flight went out with no worker warm
    cold_starts_s: list[float] = Field(default_factory=list)  # the last ones measured, oldest first
    version: int = 0


def load_pings(table: Table) -> PingRound:
    item = table.get(keys.keep_hot_pings())
    return PingRound() if item is None else PingRound.model_validate(item)


def save_pings(table: Table, before: PingRound, after: PingRound, *, now: int) -> bool:
    """Write `after` if no other tick moved the item since `before` was read."""
    if after == before:
        return True
    item = {**keys.keep_hot_pings(), **after.model_dump(), "updated_at": now}
    return table.put_versioned(item, seen=before.version)


def put_sample(table: Table, sample: Item) -> None:
    """`sample` carries `at` (its time) and `expires_at` (the TTL)."""
    table.put({**keys.health_sample(int(sample["at"]), secrets.token_hex(3)), **sample})


WORK_READING_TTL_S = 2 * 24 * 3600


def put_work_reading(table: Table, reading: dict[str, Any], *, at: int, chunk: str) -> None:
    """GPU readings a worker took while it ran a chunk (the next tick's sample takes them in)."""
    table.put(
        {**keys.work_reading(at, chunk), **reading, "at": at, "expires_at": at + WORK_READING_TTL_S}
    )


def work_readings_between(table: Table, *, after: int, until: int) -> list[Item]:
    """Work readings recorded in (after, until], oldest first (at most 200: a sample's worth)."""
    items = _health_items(
        table,
        keys.WORK_READING_PREFIX,
        sort_condition=("sk", ">", keys.work_reading(after)["sk"] + "~"),
        limit=200,
    )
    return [item for item in items if int(item["at"]) <= until]


def samples_since(table: Table, *, since: int, limit: int) -> list[Item]:
    """The newest `limit` samples taken at or after `since`, newest first."""
    return _health_items(
        table,
        keys.SAMPLE_PREFIX,
        sort_condition=("sk", ">=", keys.health_sample(since)["sk"]),
        limit=limit,
        newest_first=True,
    )


def queue_counts(table: Table, endpoint_id: str) -> tuple[int, int]:
    """(pending, dispatched) chunks of an endpoint, each counted up to QUEUE_COUNT_CAP: one
    count per tenant and priority waiting there, one per dispatched shard."""
    pending = 0
    for entry in fairq.head(table, endpoint_id, limit=FAIR_ENTRIES_READ):
        if pending >= QUEUE_COUNT_CAP:
            break
        queue = keys.pending_queue(endpoint_id, PRIORITY_OF_RANK[entry.rank], entry.tenant_id)
        pending += table.count(
            index="gsi2", key_name="gsi2pk", key_value=queue, cap=QUEUE_COUNT_CAP - pending
        )
    dispatched = chunk_store.count_dispatched(table, endpoint_id=endpoint_id, cap=QUEUE_COUNT_CAP)
    return pending, min(dispatched, QUEUE_COUNT_CAP)


def oldest_pending(table: Table, endpoint_id: str, priority: str) -> Item | None:
    """The pending chunk of `priority` that has waited longest on an endpoint: the oldest of
    each waiting tenant's first chunk (a tenant's queue sorts by batch id, which is by time)."""
    rank = keys.PRIORITY_RANK[priority]
    oldest: Item | None = None
    for entry in fairq.head(table, endpoint_id, limit=FAIR_ENTRIES_READ):
        if entry.rank != rank:
            continue
        items, _ = chunk_store.pending_of(
            table, endpoint_id=endpoint_id, priority=priority, tenant_id=entry.tenant_id, limit=1
        )
        if items and (oldest is None or items[0]["created_at"] < oldest["created_at"]):
            oldest = dict(items[0])
    return oldest


def record_arrival(table: Table, at: int) -> None:
    """Note that a batch was created at `at` (Unix seconds) in that day's arrivals item."""
    day = at // DAY_S
    try:
        table.update(
            keys.arrivals(day),
            "SET #at = list_append(if_not_exists(#at, :none), :one), expires_at = :expires",
            condition="attribute_not_exists(#at) OR size(#at) < :cap",
            names={"#at": "at"},
            values={
                ":none": [],
                ":one": [at],
                ":expires": (day + ARRIVALS_TTL_DAYS) * DAY_S,
                ":cap": ARRIVALS_PER_DAY_CAP,
            },
            returns="NONE",
        )
    except StateConflict:
        pass  # the day is full: its recurring times are in it already


def arrivals_since(table: Table, *, since: int) -> list[int]:
    """Batch creation times (Unix seconds) from the day of `since` on, oldest day first."""
    items = _health_items(
        table,
        keys.ARRIVALS_PREFIX,
        # ARRIVALS# sorts first in the partition: the days asked for, then other items.
        sort_condition=("sk", ">=", keys.arrivals(since // DAY_S)["sk"]),
        limit=16,
    )
    return [int(at) for item in items for at in item.get("at", [])]


def _health_items(
    table: Table,
    prefix: str,
    *,
    sort_condition: tuple[str, str, str],
    limit: int,
    newest_first: bool = False,
) -> list[Item]:
    """One page of the `HEALTH` partition from `sort_condition` on, only the `prefix` items."""
    items, _ = table.query_page(
        index=None,
        key_name="pk",
        key_value=keys.HEALTH,
        limit=limit,
        newest_first=newest_first,
        sort_condition=sort_condition,
    )
    return [item for item in items if str(item["sk"]).startswith(prefix)]
