"""The split job (`run_split`) under moto: idempotent reruns, the tenant's counters, files of
unknown length, and a 200,000-request file."""

from __future__ import annotations

import time
from typing import Any

import pytest

from control_plane.clients.aws import Aws
from control_plane.ids import now_s
from control_plane.layout import chunk_input_key as chunk_key
from control_plane.models import CreateBatchBody
from control_plane.services import batches as batch_service
from control_plane.split.job import run_split
from control_plane.store import BatchItem, ChunkItem
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store import files as file_store
from tests.support.api import BUCKET, stored_file
from tests.support.lines import CHAT, jsonl

TENANT = "tenant-a"


def admitted(aws: Aws, file_id: str) -> str:
    """A batch admitted in `validating` with no split run yet."""
    body = CreateBatchBody(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    return batch_service.create_batch(aws, tenant_id=TENANT, body=body).id


def counters(aws: Aws) -> tuple[int, int]:
    item = batch_store.tenant_stats(aws.table, TENANT)
    return int(item["active_batches"]), int(item["queued_requests"])


def chunk_bodies(aws: Aws, batch_id: str) -> dict[str, bytes]:
    listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"batches/{batch_id}/")
    return {
        o["Key"]: aws.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        for o in listed.get("Contents", [])
    }


def without_times(items: list[ChunkItem]) -> list[dict[str, object]]:
    return [{k: v for k, v in item.items() if k != "created_at"} for item in items]


@pytest.mark.parametrize("settings", [{"chunk_max_requests": 10}], indirect=True)
def test_running_the_split_twice_changes_nothing_the_second_time(aws: Aws) -> None:
    batch_id = admitted(aws, stored_file(aws, jsonl(25), line_count=25))

    first = run_split(aws, batch_id)
    chunks, bodies = (
        chunk_store.list_chunks(aws.table, batch_id=batch_id),
        chunk_bodies(aws, batch_id),
    )
    second = run_split(aws, batch_id)

    assert first["status"] == "in_progress" and second == first
    assert chunk_store.list_chunks(aws.table, batch_id=batch_id) == chunks
    assert [c["requests"] for c in chunks] == [10, 10, 5]
    assert chunk_bodies(aws, batch_id) == bodies
    assert list(bodies) == [chunk_key(batch_id, i) for i in range(3)]
    assert (second["n_total"], second["chunk_count"], second["queued"]) == (25, 3, 25)
    assert counters(aws) == (1, 25)


@pytest.mark.parametrize("settings", [{"chunk_max_requests": 10}], indirect=True)
def test_a_retried_split_racing_the_first_writes_the_same_chunks_and_loses(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = admitted(aws, stored_file(aws, jsonl(25), line_count=None))
    validating = batch_store.get_batch_item(aws.table, batch_id=batch_id, tenant_id=None)
    first = run_split(aws, batch_id)
    chunks, bodies = (
        chunk_store.list_chunks(aws.table, batch_id=batch_id),
        chunk_bodies(aws, batch_id),
    )

    # The retry read the batch before the first run moved it on.
    def stale(table: Any, *, batch_id: str, tenant_id: str | None) -> BatchItem:
        return validating.copy()

    monkeypatch.setattr(batch_store, "get_batch_item", stale)
    second = run_split(aws, batch_id)

    assert second["status"] == "in_progress"
    assert second["in_progress_at"] == first["in_progress_at"]
    assert without_times(chunk_store.list_chunks(aws.table, batch_id=batch_id)) == without_times(
        chunks
    )
    assert chunk_bodies(aws, batch_id) == bodies
    assert second["n_total"] == 25 and second["queued"] == 25
    assert counters(aws) == (1, 25)


def test_a_file_of_unknown_length_is_counted_by_the_split(aws: Aws) -> None:
    batch_id = admitted(aws, stored_file(aws, jsonl(12), line_count=None))
    assert counters(aws) == (1, 0)

    item = run_split(aws, batch_id)

    assert item["status"] == "in_progress" and item["n_total"] == 12
    assert counters(aws) == (1, 12)


@pytest.mark.parametrize("settings", [{"max_queued_requests": 10}], indirect=True)
def test_a_file_of_unknown_length_beyond_max_queued_requests_fails_the_batch(aws: Aws) -> None:
    batch_id = admitted(aws, stored_file(aws, jsonl(11), line_count=None))

    item = run_split(aws, batch_id)

    assert item["status"] == "failed"
    (error,) = item["errors"]
    assert error["code"] == "request_limit_exceeded"
    assert "max_queued_requests=10" in error["message"]
    assert item["queued"] == 0 and counters(aws) == (0, 0)


def test_an_input_file_deleted_before_the_split_fails_the_batch(aws: Aws) -> None:
    file_id = stored_file(aws, jsonl(3), line_count=3)
    batch_id = admitted(aws, file_id)
    file_store.delete_file(aws.table, file_id=file_id)

    item = run_split(aws, batch_id)

    assert item["status"] == "failed"
    assert [(e["code"], e["param"]) for e in item["errors"]] == [
        ("invalid_input_file", "input_file_id")
    ]
    assert file_id in item["errors"][0]["message"]
    assert counters(aws) == (0, 0)


def test_the_split_of_a_finished_batch_does_nothing(aws: Aws) -> None:
    batch_id = admitted(aws, stored_file(aws, jsonl(3), line_count=3))
    item = batch_store.get_batch_item(aws.table, batch_id=batch_id, tenant_id=None)
    failed = batch_store.transition(aws.table, item, expect={"validating"}, to="failed", at=now_s())

    assert run_split(aws, batch_id) == failed
    assert chunk_store.list_chunks(aws.table, batch_id=batch_id) == []
    assert chunk_bodies(aws, batch_id) == {}


LARGE = 200_000


@pytest.mark.parametrize("settings", [{"max_requests_per_batch": LARGE}], indirect=True)
def test_a_200k_request_file_splits_into_200_chunks(aws: Aws) -> None:
    batch_id = admitted(aws, stored_file(aws, jsonl(LARGE), line_count=LARGE))

    started = time.monotonic()
    item = run_split(aws, batch_id)
    elapsed = time.monotonic() - started

    assert item["status"] == "in_progress"
    assert (item["n_total"], item["chunk_count"]) == (LARGE, 200)
    chunks = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    assert [c["chunk_id"] for c in chunks] == [f"{n:05d}" for n in range(200)]
    assert all(c["requests"] == 1000 and c["state"] == "pending" for c in chunks)
    assert [c["first_line"] for c in chunks] == [1 + 1000 * n for n in range(200)]
    assert counters(aws) == (1, LARGE)
    assert elapsed < 120, f"the 200K split took {elapsed:.1f}s"
