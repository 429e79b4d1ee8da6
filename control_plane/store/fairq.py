"""An endpoint's fair queue: one entry per (priority, tenant) that has pending chunks there.

`FAIRQ#{endpoint}` / `Q#{rank}#{vtime:016d}#{tenant}` sorts the entries by priority and then
by virtual time (the requests the tenant was served at that priority, start-time fair
queuing), so the head of one Query is the next tenant to serve; `M#{rank}#{tenant}` says where
a tenant's entry stands, to move it by name. Only the endpoint's dispatcher writes here, one
run at a time (its SQS FIFO message group), so a move needs no condition, and a run's moves go
in one unconditional batch write. A run killed mid-way may leave a tenant without its entry (or
with its old one): its batches' periodic re-check finds chunks waiting and enrolls it again.
"""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.store import keys
from control_plane.store.table import Item, Table, to_attrs


@dataclass(frozen=True)
class Entry:
    rank: str
    vtime: int
    tenant_id: str


def _entry_item(endpoint_id: str, entry: Entry) -> Item:
    return {
        **keys.fair_entry(endpoint_id, entry.rank, entry.vtime, entry.tenant_id),
        "rank": entry.rank,
        "vtime": entry.vtime,
        "tenant_id": entry.tenant_id,
    }


def _member_item(endpoint_id: str, entry: Entry) -> Item:
    return {
        **keys.fair_member(endpoint_id, entry.rank, entry.tenant_id),
        "vtime": entry.vtime,
    }


def member(table: Table, endpoint_id: str, rank: str, tenant_id: str) -> Entry | None:
    item = table.get(keys.fair_member(endpoint_id, rank, tenant_id))
    if item is None:
        return None
    return Entry(rank=rank, vtime=int(item["vtime"]), tenant_id=tenant_id)


def head(table: Table, endpoint_id: str, *, limit: int, after: Entry | None = None) -> list[Entry]:
    """The next entries in serving order (highest priority, least served first)."""
    start = None
    if after is not None:
        start = keys.fair_entry(endpoint_id, after.rank, after.vtime, after.tenant_id)
    items, _ = table.query_page(
        index=None,
        key_name="pk",
        key_value=keys.fair_queue(endpoint_id),
        limit=limit,
        newest_first=False,
        start_key=start,
        sort_condition=("sk", "begins_with", "Q#"),
        consistent=True,
    )
    return [
        Entry(rank=str(item["rank"]), vtime=int(item["vtime"]), tenant_id=str(item["tenant_id"]))
        for item in items
    ]


def enroll(table: Table, endpoint_id: str, entry: Entry) -> None:
    table.transact(
        [
            {"Put": {"TableName": table.name, "Item": to_attrs(_entry_item(endpoint_id, entry))}},
            {"Put": {"TableName": table.name, "Item": to_attrs(_member_item(endpoint_id, entry))}},
        ]
    )


def settle(
    table: Table,
    endpoint_id: str,
    *,
    moved: list[tuple[Entry, Entry]],
    retired: list[Entry],
) -> None:
    """Served tenants' entries move to their new virtual times; tenants with nothing pending
    at a priority leave the queue (they come back at the queue's virtual clock, with no credit
    for the time they were away)."""
    puts: list[Item] = []
    deletes = []
    for before, after in moved:
        if before == after:
            continue
        deletes.append(keys.fair_entry(endpoint_id, before.rank, before.vtime, before.tenant_id))
        puts += [_entry_item(endpoint_id, after), _member_item(endpoint_id, after)]
    for entry in retired:
        deletes.append(keys.fair_entry(endpoint_id, entry.rank, entry.vtime, entry.tenant_id))
        deletes.append(keys.fair_member(endpoint_id, entry.rank, entry.tenant_id))
    table.write_many(puts=puts, deletes=deletes)
