"""The fair queue on moto: which chunks an endpoint's dispatcher picks, from tenants' own pending
queues, and how the queue moves. Chunk items are put straight into the store (what the split
and a retry leave), so each test says exactly who waits with what."""

from __future__ import annotations

from collections import Counter

from control_plane.clients.aws import Aws
from control_plane.models import ChunkRef
from control_plane.scheduler import fair
from control_plane.store import chunks as chunk_store
from control_plane.store import fairq
from control_plane.store.keys import PRIORITY_RANK

ENDPOINT = "ep"


def waiting(
    aws: Aws, tenant: str, batch_id: str, count: int, *, priority: str = "normal", first: int = 0
) -> None:
    """`count` pending chunks of 10 requests for `tenant`, and the tenant in the fair queue."""
    refs = [
        ChunkRef(index=n, key=f"batches/{batch_id}/{n}", requests=10, bytes=100, first_line=1)
        for n in range(first, first + count)
    ]
    chunk_store.put_chunks(
        aws.table,
        batch_id=batch_id,
        tenant_id=tenant,
        endpoint_id=ENDPOINT,
        priority=priority,
        chunks=refs,
        created_at=1000,
    )
    fair.enroll(aws.table, ENDPOINT, tenant_id=tenant, priority=priority, vclock={})


def picked_tenants(aws: Aws, room: int, *, now: int = 2000) -> list[str]:
    """Pick `room` chunks and commit the pick, as a dispatcher run does once it sent them; the
    chunks leave their queues as a claim would take them."""
    pick = fair.pick(aws.table, ENDPOINT, room=room, now=now, vclock={})
    fair.commit(aws.table, ENDPOINT, pick)
    for chunk in pick.chunks:
        chunk_store.finish(
            aws.table,
            chunk,
            state="done",
            expect_state="pending",
            sets={},
            batch_deltas={"chunks_open": -1},
        )
    return [str(chunk["tenant_id"]) for chunk in pick.chunks]


def test_a_tenant_with_a_huge_backlog_gets_no_more_than_one_with_a_small_one(aws: Aws) -> None:
    waiting(aws, "big", "batch_a", 40)
    waiting(aws, "small", "batch_b", 4)
    first = picked_tenants(aws, 6)
    assert Counter(first) == {"big": 3, "small": 3}  # turn about, not oldest batch first
    second = picked_tenants(aws, 6)
    assert Counter(second) == {"big": 5, "small": 1}  # the small tenant had one chunk left


def test_a_tenant_that_starts_waiting_does_not_wait_behind_the_served_ones(aws: Aws) -> None:
    waiting(aws, "big", "batch_a", 40)
    assert picked_tenants(aws, 10) == ["big"] * 10
    # A new tenant enters at the queue's virtual clock: served next, without credit for the
    # time it was not waiting (it does not get the next ten in a row either).
    vclock = fair.pick(aws.table, ENDPOINT, room=1, now=2000, vclock={}).vclock
    fair.enroll(aws.table, ENDPOINT, tenant_id="new", priority="normal", vclock=vclock)
    waiting(aws, "new", "batch_n", 5)
    assert Counter(picked_tenants(aws, 4)) == {"new": 2, "big": 2}


def test_high_goes_before_normal_and_backfill_only_when_nothing_else_waits(aws: Aws) -> None:
    waiting(aws, "a", "batch_a", 3, priority="backfill")
    waiting(aws, "b", "batch_b", 3, priority="normal")
    waiting(aws, "c", "batch_c", 2, priority="high")
    pick = fair.pick(aws.table, ENDPOINT, room=8, now=2000, vclock={})
    assert [chunk["priority"] for chunk in pick.chunks] == ["high"] * 2 + ["normal"] * 3 + [
        "backfill"
    ] * 3


def test_chunks_in_backoff_are_passed_over_and_keep_their_tenant_waiting(aws: Aws) -> None:
    waiting(aws, "a", "batch_a", 2)
    (chunk, later) = chunk_store.list_chunks(aws.table, batch_id="batch_a")
    # The first chunk failed and waits out its backoff in the tenant's queue.
    aws.table.update(
        {"pk": chunk["pk"], "sk": chunk["sk"]}, "SET not_before = :nb", values={":nb": 5000}
    )
    assert [
        c["chunk_id"] for c in fair.pick(aws.table, ENDPOINT, room=5, now=2000, vclock={}).chunks
    ] == [later["chunk_id"]]
    picked_tenants(aws, 5)  # takes the ready one; the tenant stays for its waiting chunk
    assert fairq.member(aws.table, ENDPOINT, PRIORITY_RANK["normal"], "a") is not None
    assert picked_tenants(aws, 5, now=6000) == ["a"]  # the backoff is over


def test_a_tenant_with_nothing_pending_leaves_the_queue_and_comes_back_at_the_clock(
    aws: Aws,
) -> None:
    waiting(aws, "a", "batch_a", 2)
    assert picked_tenants(aws, 5) == ["a", "a"]
    assert picked_tenants(aws, 5) == []  # found empty: retired
    assert fairq.head(aws.table, ENDPOINT, limit=10) == []
    waiting(aws, "a", "batch_b", 1)
    assert picked_tenants(aws, 5) == ["a"]


def test_the_queue_is_read_a_page_at_a_time_and_still_serves_the_least_served(aws: Aws) -> None:
    for n in range(30):  # more tenants than one page of the head holds for this room
        waiting(aws, f"t{n:02d}", f"batch_{n:02d}", 2)
    first = picked_tenants(aws, 30)
    assert sorted(first) == [f"t{n:02d}" for n in range(30)]  # everyone once
    second = picked_tenants(aws, 30)
    assert sorted(second) == [f"t{n:02d}" for n in range(30)]  # and everyone again
    assert picked_tenants(aws, 30) == []
