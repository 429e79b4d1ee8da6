"""`/v1/batches` through the app under moto: admission, the split it starts, validation failures,
limits, cancel. TestClient runs the split (a background task) before it returns the reply."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane import layout
from control_plane.clients.aws import Aws
from control_plane.ids import new_id, now_s
from control_plane.models import CreateBatchBody, FileObject
from control_plane.services import batches as batch_service
from control_plane.split.job import run_split
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store import endpoint, keys
from control_plane.store import files as file_store
from control_plane.store import health as health_store
from tests.support.api import BUCKET, auth, create_batch, stored_file, tick, upload_id
from tests.support.lines import CHAT, COMPLETIONS, jsonl, request_line


def new_batch(client: TestClient, key: str, content: bytes, **body: Any) -> dict[str, Any]:
    """Upload `content` and create a batch from it; the reply (status `validating`)."""
    reply = create_batch(client, key, upload_id(client, key, content), **body)
    assert reply.status_code == 200, reply.text
    batch: dict[str, Any] = reply.json()
    return batch


def retrieve(client: TestClient, key: str, batch_id: str) -> dict[str, Any]:
    reply = client.get(f"/v1/batches/{batch_id}", headers=auth(key))
    assert reply.status_code == 200, reply.text
    batch: dict[str, Any] = reply.json()
    return batch


def stats(aws: Aws, tenant_id: str = "tenant-a") -> tuple[int, int]:
    item = batch_store.tenant_stats(aws.table, tenant_id)
    return int(item["active_batches"]), int(item["queued_requests"])


def chunk_objects(aws: Aws, batch_id: str) -> list[str]:
    listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"batches/{batch_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


# --- create and the split it starts ---


def test_create_answers_validating_at_once(client: TestClient, key_a: str) -> None:
    file_id = upload_id(client, key_a, jsonl(3))
    before = now_s()
    batch = create_batch(client, key_a, file_id).json()
    assert batch["id"].startswith("batch_") and batch["object"] == "batch"
    assert batch["status"] == "validating"
    assert (batch["endpoint"], batch["input_file_id"]) == (CHAT, file_id)
    assert batch["completion_window"] == "24h"
    assert before <= batch["created_at"] <= now_s()
    assert batch["expires_at"] == batch["created_at"] + 24 * 3600
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert batch["priority"] == "normal" and batch["metadata"] is None


def test_each_created_batch_is_an_arrival_for_the_keep_hot_forecast(
    client: TestClient, key_a: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = now_s()
    created = [new_batch(client, key_a, jsonl(2))["created_at"] for _ in range(2)]
    assert health_store.arrivals_since(aws.table, since=before) == created

    def broken(table: Any, at: int) -> None:
        raise RuntimeError("throttled")

    # The history is an aid: a batch whose arrival cannot be noted is created all the same.
    monkeypatch.setattr(health_store, "record_arrival", broken)
    assert new_batch(client, key_a, jsonl(2))["status"] == "validating"
    assert len(health_store.arrivals_since(aws.table, since=before)) == 2


def test_split_moves_the_batch_to_in_progress_with_counts_and_model(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    batch = new_batch(client, key_a, jsonl(7))
    current = retrieve(client, key_a, batch["id"])
    assert current["status"] == "in_progress"
    assert current["in_progress_at"] >= batch["created_at"]
    assert current["request_counts"] == {"total": 7, "completed": 0, "failed": 0}
    assert current["model"] == "tiny"
    assert current["errors"] is None
    assert stats(aws) == (1, 7)


@pytest.mark.parametrize("settings", [{"chunk_max_requests": 4}], indirect=True)
def test_split_writes_chunk_items_and_objects_that_concatenate_to_the_input(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    content = jsonl(10)
    batch_id = new_batch(client, key_a, content)["id"]

    items = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    objects = chunk_objects(aws, batch_id)

    expected_keys = [f"batches/{batch_id}/chunks/{n:05d}/input.jsonl" for n in range(3)]
    assert [i["input_key"] for i in items] == expected_keys == objects
    assert [(i["requests"], i["first_line"], i["state"]) for i in items] == [
        (4, 1, "pending"),
        (4, 5, "pending"),
        (2, 9, "pending"),
    ]
    bodies = [aws.s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in objects]
    assert [i["bytes"] for i in items] == [len(b) for b in bodies]
    assert b"".join(bodies) == content
    assert retrieve(client, key_a, batch_id)["request_counts"]["total"] == 10


def test_blank_lines_are_skipped_and_line_numbers_stay_those_of_the_file(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    lines = [request_line("a"), "", "  ", request_line("b"), request_line("c")]
    batch_id = new_batch(client, key_a, "\n".join(lines).encode())["id"]
    (item,) = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    assert (item["requests"], item["first_line"]) == (3, 1)
    assert retrieve(client, key_a, batch_id)["request_counts"]["total"] == 3


def test_completions_endpoint_is_accepted_with_matching_lines(
    client: TestClient, key_a: str
) -> None:
    content = "\n".join(request_line(f"r{i}", url=COMPLETIONS) for i in range(2)).encode()
    batch = new_batch(client, key_a, content, endpoint="/v1/completions")
    assert retrieve(client, key_a, batch["id"])["status"] == "in_progress"


def test_list_pages_newest_first_with_limit_and_after(client: TestClient, key_a: str) -> None:
    ids = []
    for index in range(5):
        ids.append(new_batch(client, key_a, jsonl(1, prefix=f"b{index}-"))["id"])
        time.sleep(0.002)  # ids order by millisecond
    ids.reverse()
    seen: list[list[str]] = []
    more: list[bool] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = client.get("/v1/batches", params=params, headers=auth(key_a)).json()
        assert page["object"] == "list"
        seen.append([b["id"] for b in page["data"]])
        more.append(page["has_more"])
        assert (page["first_id"], page["last_id"]) == (seen[-1][0], seen[-1][-1])
        if not page["has_more"]:
            break
        params["after"] = page["last_id"]
    assert seen == [ids[0:2], ids[2:4], ids[4:]]
    assert more == [True, True, False]


def test_metadata_round_trips(client: TestClient, key_a: str) -> None:
    metadata = {"project": "eval", "run": "42", "k" * 64: "v" * 512}
    batch = new_batch(client, key_a, jsonl(1), metadata=metadata)
    listed = client.get("/v1/batches", headers=auth(key_a)).json()["data"][0]
    assert batch["metadata"] == retrieve(client, key_a, batch["id"])["metadata"] == metadata
    assert listed["metadata"] == metadata


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
    ],
    ids=["17-pairs", "long-key", "long-value"],
)
def test_metadata_beyond_openais_limits_is_a_400(
    client: TestClient, key_a: str, aws: Aws, metadata: dict[str, str]
) -> None:
    reply = create_batch(client, key_a, upload_id(client, key_a, jsonl(1)), metadata=metadata)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "metadata"
    assert stats(aws) == (0, 0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("endpoint", "/v1/moderations"),
        ("endpoint", "/v1/audio/speech"),
        ("completion_window", "48h"),
        ("priority", "urgent"),
    ],
)
def test_an_unsupported_create_parameter_is_a_400_naming_it(
    client: TestClient, key_a: str, aws: Aws, field: str, value: str
) -> None:
    reply = create_batch(client, key_a, upload_id(client, key_a, jsonl(1)), **{field: value})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == field and field in error["message"]
    assert client.get("/v1/batches", headers=auth(key_a)).json()["data"] == []


def test_high_priority_round_trips_and_ranks_its_chunks_first(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    batch = new_batch(client, key_a, jsonl(2), priority="high")
    assert batch["priority"] == "high"
    assert retrieve(client, key_a, batch["id"])["priority"] == "high"
    (item,) = chunk_store.list_chunks(aws.table, batch_id=batch["id"])
    # The tenant's high-priority queue on the endpoint: the fair queue serves it first.
    endpoint = aws.settings.runpod_endpoint_id
    assert item["gsi2pk"] == keys.pending_queue(endpoint, "high", "tenant-a")


def test_unknown_input_file_is_a_404(client: TestClient, key_a: str) -> None:
    reply = create_batch(client, key_a, new_id("file"))
    assert reply.status_code == 404
    assert reply.json()["error"]["param"] == "input_file_id"


def test_an_unknown_batch_is_a_404_to_retrieve_and_cancel(client: TestClient, key_a: str) -> None:
    batch_id = new_id("batch")
    assert client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).status_code == 404
    cancel = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a))
    assert cancel.status_code == 404 and cancel.json()["error"]["code"] == "not_found"


# --- validation failures ---


def without_custom_id() -> str:
    line = json.loads(request_line("x"))
    del line["custom_id"]
    return json.dumps(line)


@pytest.mark.parametrize(
    ("bad", "code", "param"),
    [
        ("{not json", "invalid_json_line", None),
        (without_custom_id(), "missing_custom_id", "custom_id"),
        (request_line("r0"), "duplicate_custom_id", "custom_id"),
        (request_line("x", url=COMPLETIONS), "mismatched_url", "url"),
        (request_line("x", method="GET"), "invalid_method", "method"),
        (request_line("x", body="say hi"), "invalid_body", "body"),
    ],
)
def test_a_bad_line_fails_the_batch_with_its_code_and_line(
    client: TestClient, key_a: str, aws: Aws, bad: str, code: str, param: str | None
) -> None:
    content = "\n".join([request_line("r0"), "", bad, request_line("r1")]).encode()
    batch_id = new_batch(client, key_a, content)["id"]

    batch = retrieve(client, key_a, batch_id)

    assert batch["status"] == "failed" and batch["failed_at"] is not None
    error = batch["errors"]["data"][0]
    assert (error["code"], error["line"], error["param"]) == (code, 3, param)
    assert "3" in error["message"]
    assert chunk_store.list_chunks(aws.table, batch_id=batch_id) == []
    assert chunk_objects(aws, batch_id) == []
    assert stats(aws) == (0, 0)


@pytest.mark.parametrize("settings", [{"max_requests_per_batch": 3}], indirect=True)
def test_a_file_with_more_lines_than_a_batch_may_hold_is_refused_at_create(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    reply = create_batch(client, key_a, upload_id(client, key_a, jsonl(4)))
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "max_requests_per_batch"
    assert "max_requests_per_batch=3" in error["message"] and "4" in error["message"]
    assert client.get("/v1/batches", headers=auth(key_a)).json()["data"] == []
    assert stats(aws) == (0, 0)


@pytest.mark.parametrize("settings", [{"max_requests_per_batch": 3}], indirect=True)
def test_too_many_tasks_in_a_file_of_unknown_length_fails_the_batch(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    reply = create_batch(client, key_a, stored_file(aws, jsonl(5), line_count=None))
    assert reply.status_code == 200, reply.text

    batch = retrieve(client, key_a, reply.json()["id"])

    assert batch["status"] == "failed"
    error = batch["errors"]["data"][0]
    assert (error["code"], error["line"]) == ("too_many_tasks", 4)
    assert "3" in error["message"]
    assert stats(aws) == (0, 0)


def test_an_input_object_with_no_requests_fails_the_batch_as_empty_file(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    batch_id = create_batch(client, key_a, stored_file(aws, b"\n\n", line_count=None)).json()["id"]
    batch = retrieve(client, key_a, batch_id)
    assert batch["status"] == "failed"
    assert [e["code"] for e in batch["errors"]["data"]] == ["empty_file"]


# --- limits ---


@pytest.mark.parametrize("settings", [{"max_active_batches": 2}], indirect=True)
def test_max_active_batches_is_a_429_naming_the_limit(
    client: TestClient, key_a: str, key_b: str, aws: Aws
) -> None:
    file_id = upload_id(client, key_a, jsonl(1))
    for _ in range(2):
        assert create_batch(client, key_a, file_id).status_code == 200

    reply = create_batch(client, key_a, file_id)

    assert reply.status_code == 429
    error = reply.json()["error"]
    assert (error["code"], error["type"]) == ("max_active_batches", "rate_limit_exceeded")
    assert "max_active_batches=2" in error["message"]
    assert stats(aws) == (2, 2)
    assert len(client.get("/v1/batches", headers=auth(key_a)).json()["data"]) == 2
    # the limit is per tenant
    assert create_batch(client, key_b, upload_id(client, key_b, jsonl(1))).status_code == 200


@pytest.mark.parametrize("settings", [{"max_queued_requests": 5}], indirect=True)
def test_max_queued_requests_is_a_429_naming_the_limit(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    new_batch(client, key_a, jsonl(3))

    reply = create_batch(client, key_a, upload_id(client, key_a, jsonl(3, prefix="s")))

    assert reply.status_code == 429
    error = reply.json()["error"]
    assert error["code"] == "max_queued_requests"
    assert "max_queued_requests=5" in error["message"]
    assert stats(aws) == (1, 3)
    assert create_batch(client, key_a, upload_id(client, key_a, jsonl(2))).status_code == 200
    assert stats(aws) == (2, 5)


@pytest.mark.parametrize("settings", [{"max_queued_requests": 5}], indirect=True)
def test_a_first_batch_larger_than_max_queued_requests_is_a_429(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    reply = create_batch(client, key_a, upload_id(client, key_a, jsonl(6)))
    assert reply.status_code == 429, reply.text
    assert reply.json()["error"]["code"] == "max_queued_requests"
    assert stats(aws) == (0, 0)


@pytest.mark.parametrize("settings", [{"max_active_batches": 1}], indirect=True)
def test_a_failed_batch_gives_its_slot_back(client: TestClient, key_a: str, aws: Aws) -> None:
    failed = new_batch(client, key_a, b"{not json\n")
    assert retrieve(client, key_a, failed["id"])["status"] == "failed"
    assert stats(aws) == (0, 0)
    assert create_batch(client, key_a, upload_id(client, key_a, jsonl(2))).status_code == 200
    assert stats(aws) == (1, 2)


@pytest.mark.parametrize("settings", [{"max_active_batches": 1}], indirect=True)
def test_a_cancelled_batch_gives_its_slot_back(client: TestClient, key_a: str, aws: Aws) -> None:
    file_id = upload_id(client, key_a, jsonl(2))
    first = create_batch(client, key_a, file_id).json()
    assert create_batch(client, key_a, file_id).status_code == 429

    cancel = client.post(f"/v1/batches/{first['id']}/cancel", headers=auth(key_a))
    assert cancel.json()["status"] == "cancelling"
    assert stats(aws) == (1, 2)  # held until the tick has settled the cancel
    tick(aws)

    assert retrieve(client, key_a, first["id"])["status"] == "cancelled"
    assert stats(aws) == (0, 0)
    assert create_batch(client, key_a, file_id).status_code == 200


def test_new_batches_wait_while_the_endpoint_is_known_down(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    file_id = upload_id(client, key_a, jsonl(1))
    endpoint.set_endpoint_state(aws.table, state="open", reason="5 chunks failed in a row")

    refused = create_batch(client, key_a, file_id)

    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "endpoint_unavailable" and "5 chunks failed" in error["message"]
    assert stats(aws) == (0, 0)
    endpoint.set_endpoint_state(aws.table, state="closed")
    assert create_batch(client, key_a, file_id).status_code == 200


# --- cancel ---


def test_cancel_of_an_idle_in_progress_batch_ends_at_the_next_tick(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    batch_id = new_batch(client, key_a, jsonl(3))["id"]
    assert stats(aws) == (1, 3)

    reply = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a))
    assert reply.status_code == 200 and reply.json()["status"] == "cancelling"
    tick(aws)

    batch = retrieve(client, key_a, batch_id)
    assert batch["status"] == "cancelled"
    assert batch["cancelling_at"] is not None and batch["cancelled_at"] is not None
    assert batch["cancelled_at"] >= batch["cancelling_at"]
    assert all(
        c["state"] == "cancelled" for c in chunk_store.list_chunks(aws.table, batch_id=batch_id)
    )
    assert stats(aws) == (0, 0)


def test_cancel_twice_answers_the_same_cancelled_batch(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    batch_id = new_batch(client, key_a, jsonl(3))["id"]
    first = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a))
    second = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a))
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    tick(aws)
    third = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a))
    assert third.status_code == 200 and third.json()["status"] == "cancelled"
    assert stats(aws) == (0, 0)


def test_cancel_with_chunks_in_flight_stays_cancelling_and_keeps_the_slot(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    batch_id = new_batch(client, key_a, jsonl(3))["id"]
    (chunk, *_) = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    chunk_store.claim(aws.table, chunk, lease_until=now_s() + 600, check_at=now_s(), now=now_s())

    batch = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a)).json()

    assert batch["status"] == "cancelling" and batch["cancelled_at"] is None
    assert stats(aws) == (1, 3)


def test_cancel_of_a_failed_batch_is_a_409(client: TestClient, key_a: str) -> None:
    batch_id = new_batch(client, key_a, b"{not json\n")["id"]
    reply = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key_a))
    assert reply.status_code == 409
    error = reply.json()["error"]
    assert error["code"] == "batch_not_cancellable" and "failed" in error["message"]
    assert retrieve(client, key_a, batch_id)["status"] == "failed"


def test_a_batch_cancelled_while_validating_ends_cancelled_without_chunks(
    aws: Aws, key_a: str
) -> None:
    file = FileObject(
        id=new_id("file"), bytes=1, created_at=now_s(), filename="in.jsonl", purpose="batch"
    )
    aws.s3.put_object(Bucket=BUCKET, Key=layout.file_key(file.id), Body=jsonl(4))
    file_store.put_file(aws.table, tenant_id="tenant-a", file=file, line_count=4)
    body = CreateBatchBody(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    batch = batch_service.create_batch(aws, tenant_id="tenant-a", body=body)
    assert stats(aws) == (1, 4)

    cancelling = batch_service.cancel_batch(aws, tenant_id="tenant-a", batch_id=batch.id)
    assert cancelling.status == "cancelling"  # a split may be running: it finishes the cancel

    item = run_split(aws, batch.id)

    assert item["status"] == "cancelled" and item["cancelled_at"] is not None
    assert stats(aws) == (0, 0)
    assert chunk_store.list_chunks(aws.table, batch_id=batch.id) == []
    assert chunk_objects(aws, batch.id) == []
