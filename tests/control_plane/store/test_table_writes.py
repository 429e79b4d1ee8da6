"""Bulk writes under moto: paced when asked, so one partition key stays under DynamoDB's
per-key write limit, and the split's chunk items are always paced."""

from __future__ import annotations

import types

import pytest

from control_plane.clients.aws import Aws
from control_plane.models import ChunkRef
from control_plane.store import chunks as chunk_store
from control_plane.store import table as table_module


class FakeClock:
    """Time that only moves when the writer waits, so the pacing is exact."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def time(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(table_module, "time", types.SimpleNamespace(time=fake.time))
    monkeypatch.setattr(table_module, "pause", fake.pause)
    return fake


@pytest.mark.parametrize("per_s", [None, 50.0])
def test_bulk_puts_are_paced_only_when_a_rate_is_given(
    aws: Aws, clock: FakeClock, per_s: float | None
) -> None:
    rows = [{"pk": "PACED#one", "sk": f"{i:05d}", "n": i} for i in range(100)]
    assert aws.table.put_many(rows, per_s=per_s) == 100
    if per_s is None:
        assert clock.waits == []
    else:
        # Four calls of 25; after each, the writer is ahead by 25/50 s.
        assert clock.waits == pytest.approx([0.5] * 4)
    written, _ = aws.table.query_page(
        index=None, key_name="pk", key_value="PACED#one", limit=1000, newest_first=False
    )
    assert len(written) == 100


def test_a_splits_chunk_items_go_in_under_the_per_key_limit(aws: Aws, clock: FakeClock) -> None:
    refs = [
        ChunkRef(index=i, key=f"k/{i}", requests=10, bytes=100, first_line=10 * i + 1)
        for i in range(1000)
    ]
    written = chunk_store.put_chunks(
        aws.table,
        batch_id="batch_paced",
        tenant_id="tenant-p",
        endpoint_id="ep",
        priority="normal",
        chunks=refs,
        created_at=1,
    )
    assert written == 1000
    # Each chunk is a write on its batch's key and on its tenant's pending-index key.
    rate = written / sum(clock.waits)
    assert 500 < rate < 1000
    assert len(chunk_store.list_chunks(aws.table, batch_id="batch_paced")) == 1000


def test_many_gets_come_back_in_key_order_100_a_call(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = aws.table
    table.put_many({"pk": "P", "sk": f"S{n:04d}", "n": n} for n in range(0, 250, 2))
    keys = [{"pk": "P", "sk": f"S{n:04d}"} for n in (249, 0, 3, 0, *range(4, 248))]
    calls: list[int] = []
    real = table.client.batch_get_item

    def counted(**kwargs: object) -> object:
        calls.append(len(kwargs["RequestItems"][table.name]["Keys"]))  # type: ignore[index]
        return real(**kwargs)

    monkeypatch.setattr(table.client, "batch_get_item", counted)
    found = table.get_many(keys)
    assert [None if item is None else item["n"] for item in found[:4]] == [None, 0, None, 0]
    assert [item["n"] for item in found[4:] if item is not None] == list(range(4, 248, 2))
    assert calls == [100, 100, 47]  # 247 distinct keys, the repeated one asked once
