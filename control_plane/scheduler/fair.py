"""Which chunks an endpoint runs next: strict priority (`high` > `normal` > `backfill`), and
within a priority the tenant that was served least (start-time fair queuing over the tenants
that have chunks pending; a tenant's own batches go oldest first).

The fair queue (`store/fairq.py`) holds one entry per (priority, tenant) in serving order, so a
pick reads its head and the chosen tenants' next chunks: the work grows with the chunks sent,
not with the tenants or batches waiting. A tenant that starts waiting enters at the queue's
virtual clock (the virtual time of the last tenant served), neither ahead of the tenants that
have been waiting nor with credit for the time it had nothing to run.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from control_plane.store import ChunkItem, Table, fairq
from control_plane.store import chunks as chunk_store
from control_plane.store.fairq import Entry
from control_plane.store.keys import PRIORITY_RANK

PRIORITY_OF_RANK = {rank: priority for priority, rank in PRIORITY_RANK.items()}
# Pending chunks read per tenant at a time; a pick rarely needs more from one tenant.
TENANT_PAGE = 16


def cost(chunk: ChunkItem) -> int:
    """What running a chunk counts against its tenant: its requests."""
    return max(1, int(chunk.get("requests", 1)))


@dataclass
class _Cursor:
    """One tenant's pending chunks at one priority, read a page at a time."""

    ready: list[ChunkItem] = field(default_factory=list)
    last: ChunkItem | None = None
    more: bool = True
    waiting: bool = False  # some chunk is held back by its retry backoff


@dataclass
class Pick:
    chunks: list[ChunkItem]
    moved: list[tuple[Entry, Entry]]  # entries served: before, after
    retired: list[Entry]  # entries with nothing left pending
    vclock: dict[str, int]


def enroll(
    table: Table, endpoint_id: str, *, tenant_id: str, priority: str, vclock: dict[str, int]
) -> bool:
    """Put a tenant with pending chunks in the queue at `priority` (nothing if it is in)."""
    rank = PRIORITY_RANK[priority]
    if fairq.member(table, endpoint_id, rank, tenant_id) is not None:
        return False
    fairq.enroll(table, endpoint_id, Entry(rank, vclock.get(rank, 0), tenant_id))
    return True


def pick(table: Table, endpoint_id: str, *, room: int, now: int, vclock: dict[str, int]) -> Pick:
    """Up to `room` chunks in serving order; the caller sends them, then `commit`s the pick."""
    result = Pick(chunks=[], moved=[], retired=[], vclock=dict(vclock))
    if room <= 0:
        return result
    page = max(8, room + 4)
    heap: list[tuple[str, int, str]] = []
    first: dict[tuple[str, str], Entry] = {}
    loaded = _load(table, endpoint_id, page, None, heap, first)
    last = loaded[-1] if loaded else None
    exhausted = len(loaded) < page
    cursors: dict[tuple[str, str], _Cursor] = {}
    served: dict[tuple[str, str], int] = {}
    while len(result.chunks) < room:
        if not exhausted and last is not None and (not heap or heap[0] > _key(last)):
            loaded = _load(table, endpoint_id, page, last, heap, first)
            exhausted = len(loaded) < page
            last = loaded[-1] if loaded else last
            continue
        if not heap:
            break
        rank, vtime, tenant = heapq.heappop(heap)
        cursor = cursors.setdefault((rank, tenant), _Cursor())
        chunk = _next_ready(table, endpoint_id, rank, tenant, cursor, now)
        if chunk is None:
            if not cursor.waiting and (rank, tenant) not in served:
                result.retired.append(first[(rank, tenant)])
            continue
        result.chunks.append(chunk)
        result.vclock[rank] = max(result.vclock.get(rank, 0), vtime)
        served[(rank, tenant)] = vtime + cost(chunk)
        heapq.heappush(heap, (rank, vtime + cost(chunk), tenant))
    for (rank, tenant), vtime in served.items():
        before = first[(rank, tenant)]
        result.moved.append((before, Entry(rank, vtime, tenant)))
    return result


def commit(table: Table, endpoint_id: str, picked: Pick) -> None:
    """Move the served entries to their new virtual times and drop the empty ones."""
    fairq.settle(table, endpoint_id, moved=picked.moved, retired=picked.retired)


def _key(entry: Entry) -> tuple[str, int, str]:
    return (entry.rank, entry.vtime, entry.tenant_id)


def _load(
    table: Table,
    endpoint_id: str,
    page: int,
    after: Entry | None,
    heap: list[tuple[str, int, str]],
    first: dict[tuple[str, str], Entry],
) -> list[Entry]:
    entries = fairq.head(table, endpoint_id, limit=page, after=after)
    for entry in entries:
        first.setdefault((entry.rank, entry.tenant_id), entry)
        heapq.heappush(heap, _key(entry))
    return entries


def _next_ready(
    table: Table, endpoint_id: str, rank: str, tenant: str, cursor: _Cursor, now: int
) -> ChunkItem | None:
    """The tenant's next chunk that may go now (one in retry backoff is passed over)."""
    while True:
        while cursor.ready:
            chunk = cursor.ready.pop(0)
            if int(chunk.get("not_before", 0)) > now:
                cursor.waiting = True
                continue
            return chunk
        if not cursor.more:
            return None
        items, cursor.more = chunk_store.pending_of(
            table,
            endpoint_id=endpoint_id,
            priority=PRIORITY_OF_RANK[rank],
            tenant_id=tenant,
            limit=TENANT_PAGE,
            after=cursor.last,
        )
        if items:
            cursor.last = items[-1]
        cursor.ready = list(items)
