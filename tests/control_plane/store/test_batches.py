"""The batch items under moto: conditional transitions and the tenant's counters that move
with them."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from control_plane.clients.aws import Aws
from control_plane.errors import LimitExceeded, StateConflict
from control_plane.ids import new_id, now_s
from control_plane.models import Batch
from control_plane.store import BatchItem, Table, keys
from control_plane.store import batches as batch_store
from tests.support.lines import CHAT

TENANT = "tenant-s"
LIMITS = batch_store.Limits(max_active_batches=10, max_queued_requests=100)


def admit(aws: Aws, *, queued: int = 5, tenant_id: str = TENANT) -> BatchItem:
    """A new `validating` batch holding `queued` of the tenant's requests; its item."""
    now = now_s()
    batch = Batch(
        id=new_id("batch"),
        endpoint=CHAT,
        input_file_id=new_id("file"),
        completion_window="24h",
        status="validating",
        created_at=now,
        expires_at=now + 86400,
    )
    batch_store.create_batch(
        aws.table,
        tenant_id=tenant_id,
        batch=batch,
        queued=queued,
        limits=LIMITS,
        extra={},
        due_at=now + 60,
    )
    return batch_store.get_batch_item(aws.table, batch_id=batch.id, tenant_id=tenant_id)


def counters(aws: Aws, tenant_id: str = TENANT) -> tuple[int, int]:
    item = batch_store.tenant_stats(aws.table, tenant_id)
    return int(item["active_batches"]), int(item["queued_requests"])


def test_admission_takes_the_tenants_counters(aws: Aws) -> None:
    admit(aws, queued=5)
    admit(aws, queued=7)
    assert counters(aws) == (2, 12)
    assert counters(aws, "someone-else") == (0, 0)


def test_second_writer_of_the_same_transition_gets_state_conflict_with_the_winner(
    aws: Aws,
) -> None:
    stale = admit(aws)

    won = batch_store.transition(
        aws.table, stale, expect={"validating"}, to="in_progress", at=now_s(), sets={"n_total": 5}
    )
    with pytest.raises(StateConflict) as lost:
        batch_store.transition(
            aws.table, stale, expect={"validating"}, to="in_progress", at=now_s() + 1
        )

    assert won["status"] == "in_progress"
    assert lost.value.item is not None
    assert lost.value.item["status"] == "in_progress"
    assert lost.value.item["in_progress_at"] == won["in_progress_at"]
    assert lost.value.item["n_total"] == 5


def test_racing_terminal_transitions_give_the_counters_back_exactly_once(aws: Aws) -> None:
    admit(aws, queued=3)
    stale = admit(aws, queued=5)
    assert counters(aws) == (2, 8)

    batch_store.transition(aws.table, stale, expect={"validating"}, to="failed", at=now_s())
    with pytest.raises(StateConflict) as lost:
        batch_store.transition(aws.table, stale, expect={"validating"}, to="cancelled", at=now_s())

    assert lost.value.item is not None and lost.value.item["status"] == "failed"
    assert counters(aws) == (1, 3)
    current = batch_store.get_batch_item(aws.table, batch_id=stale["id"], tenant_id=None)
    assert current["queued"] == 0 and "cancelled_at" not in current


class OneCallAtATime:
    """The boto3 client with each call made whole before the next, as DynamoDB applies each
    request atomically. moto does not: a failed transaction restores a snapshot of the whole
    table, undoing whatever another thread wrote meanwhile."""

    def __init__(self, client: Any) -> None:
        self._client, self._lock = client, threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(**kwargs: Any) -> Any:
            with self._lock:
                return method(**kwargs)

        return call


def test_threads_racing_one_terminal_transition_have_exactly_one_winner(aws: Aws) -> None:
    batch_id = admit(aws, queued=4)["id"]
    table = Table(OneCallAtATime(aws.dynamodb), aws.table.name)
    results: list[str] = []
    everyone_has_read = threading.Barrier(6)

    def end(to: str) -> None:
        item = batch_store.get_batch_item(table, batch_id=batch_id, tenant_id=None)
        everyone_has_read.wait()
        try:
            batch_store.transition(table, item, expect={"validating"}, to=to, at=now_s())
            results.append("won")
        except StateConflict as exc:
            assert exc.item is not None
            results.append(f"lost to {exc.item['status']}")

    threads = [
        threading.Thread(target=end, args=("failed" if i % 2 else "cancelled",)) for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    final = batch_store.get_batch_item(aws.table, batch_id=batch_id, tenant_id=None)
    assert sorted(results) == [f"lost to {final['status']}"] * 5 + ["won"]
    assert counters(aws) == (0, 0)


def test_a_transition_from_an_item_whose_queued_count_moved_is_a_conflict(aws: Aws) -> None:
    stale = admit(aws, queued=5)
    batch_store.transition(
        aws.table, stale, expect={"validating"}, to="validating", at=now_s(), queued=8
    )
    assert counters(aws) == (1, 8)

    with pytest.raises(StateConflict):
        batch_store.transition(aws.table, stale, expect={"validating"}, to="failed", at=now_s())

    assert counters(aws) == (1, 8)  # nothing given back on the stale count


def test_recounting_queued_requests_moves_the_tenant_by_the_difference(aws: Aws) -> None:
    item = admit(aws, queued=0)
    moved = batch_store.transition(
        aws.table,
        item,
        expect={"validating"},
        to="in_progress",
        at=now_s(),
        queued=40,
        limits=LIMITS,
    )
    assert moved["queued"] == 40 and counters(aws) == (1, 40)
    batch_store.transition(aws.table, moved, expect={"in_progress"}, to="completed", at=now_s())
    assert counters(aws) == (0, 0)


def test_a_recount_beyond_max_queued_requests_raises_and_leaves_the_batch(aws: Aws) -> None:
    admit(aws, queued=60)
    item = admit(aws, queued=0)

    with pytest.raises(LimitExceeded) as refused:
        batch_store.transition(
            aws.table,
            item,
            expect={"validating"},
            to="in_progress",
            at=now_s(),
            queued=41,
            limits=LIMITS,
        )

    assert refused.value.limit == "max_queued_requests" and refused.value.value == 100
    current = batch_store.get_batch_item(aws.table, batch_id=item["id"], tenant_id=None)
    assert current["status"] == "validating" and current["queued"] == 0
    assert counters(aws) == (2, 60)


def test_admission_beyond_max_active_batches_raises_and_stores_nothing(aws: Aws) -> None:
    limits = batch_store.Limits(max_active_batches=1, max_queued_requests=100)
    admit(aws)
    batch = Batch(
        id=new_id("batch"),
        endpoint=CHAT,
        input_file_id=new_id("file"),
        completion_window="24h",
        status="validating",
        created_at=now_s(),
    )
    with pytest.raises(LimitExceeded) as refused:
        batch_store.create_batch(
            aws.table, tenant_id=TENANT, batch=batch, queued=1, limits=limits, extra={}, due_at=0
        )
    assert refused.value.limit == "max_active_batches" and refused.value.status_code == 429
    assert batch_store.get_batch(aws.table, batch.id) is None
    assert counters(aws) == (1, 5)


def test_unfinished_batches_wait_in_the_due_index_until_they_end(aws: Aws) -> None:
    item = admit(aws)
    assert item["gsi2pk"] == keys.DUE_BATCHES
    assert batch_store.due_batch_ids(aws.table, now=now_s(), limit=10) == []
    assert batch_store.due_batch_ids(aws.table, now=now_s() + 61, limit=10) == [item["id"]]
    batch_store.set_due(aws.table, item["id"], due_at=now_s() + 3600)
    assert batch_store.due_batch_ids(aws.table, now=now_s() + 61, limit=10) == []
    done = batch_store.transition(aws.table, item, expect={"validating"}, to="failed", at=now_s())
    assert "gsi2pk" not in done and "gsi2sk" not in done
    batch_store.set_due(aws.table, item["id"], due_at=0)  # a finished batch stays out
    assert batch_store.due_batch_ids(aws.table, now=now_s() + 7200, limit=10) == []
