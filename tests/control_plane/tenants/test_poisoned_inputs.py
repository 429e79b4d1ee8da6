"""One tenant's input file must never wedge its own batch in `validating` for ever (holding a
slot and rerunning the split every 20 minutes) nor touch another tenant's batch: every line the
JSON parser accepts splits or fails on its own line, error messages stay small, and a split
that keeps dying fails its batch with a clear error."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.scheduler import finalize
from control_plane.scheduler.context import TickContext
from control_plane.split import job as split_job
from control_plane.split.launch import SPLIT_STALE_S
from control_plane.split.stream import MAX_CUSTOM_ID_CHARS, split_s3_object
from control_plane.store import batches as batch_store
from control_plane.store import keys
from tests.support.api import auth, create_batch, upload_id
from tests.support.lines import CHAT, request_line


def _deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def _batch(client: TestClient, key: str, lines: list[str]) -> dict[str, Any]:
    file_id = upload_id(client, key, ("\n".join(lines) + "\n").encode())
    reply = create_batch(client, key, file_id)
    assert reply.status_code == 200, reply.text
    got = client.get(f"/v1/batches/{reply.json()['id']}", headers=auth(key))
    assert got.status_code == 200
    body: dict[str, Any] = got.json()
    return body


def _neighbour(client: TestClient, key_a: str) -> None:
    """Tenant A's batch, created beside B's, goes on as if B were not there."""
    a = _batch(client, key_a, [request_line(f"a-{i}") for i in range(3)])
    assert a["status"] == "in_progress" and a["request_counts"]["total"] == 3


def test_a_line_nested_past_orjsons_writer_still_splits(
    client: TestClient, key_a: str, key_b: str
) -> None:
    # orjson reads 1,024 levels but writes 254: prefix grouping re-serialises the tools and
    # raised, so every split of the file crashed.
    deep = request_line("b-deep", tools=[{"type": "function", "function": _deep(300)}])
    b = _batch(client, key_b, [deep, request_line("b-plain")])
    assert b["status"] == "in_progress" and b["request_counts"]["total"] == 2
    _neighbour(client, key_a)
    assert client.get(f"/v1/batches/{b['id']}", headers=auth(key_a)).status_code == 404


def test_huge_quoted_values_fail_the_batch_on_their_lines_with_short_messages(
    client: TestClient, key_a: str, key_b: str
) -> None:
    # 100 errors each quoting a 300 KB url once made the batch item pass DynamoDB's 400 KB,
    # so failing the batch raised and it stayed `validating`.
    huge = "/v1/" + "u" * 300_000
    lines = [request_line(f"b-{i}", url=huge) for i in range(5)]
    lines.append(request_line("m-1", model="m" * 300_000))
    b = _batch(client, key_b, lines)
    assert b["status"] == "failed"
    errors = b["errors"]["data"]
    assert [e["line"] for e in errors] == [1, 2, 3, 4, 5, 6]
    assert {e["code"] for e in errors} == {"mismatched_url", "invalid_model"}
    assert all(len(e["message"]) < 300 for e in errors)
    assert "…" in errors[0]["message"]
    _neighbour(client, key_a)


def test_a_custom_id_over_the_cap_is_refused_on_its_line(
    client: TestClient, key_a: str, key_b: str
) -> None:
    long_id = "c" * (MAX_CUSTOM_ID_CHARS + 1)
    b = _batch(client, key_b, [request_line("ok"), request_line(long_id)])
    assert b["status"] == "failed"
    [error] = b["errors"]["data"]
    assert error["code"] == "invalid_custom_id" and error["line"] == 2
    assert error["param"] == "custom_id" and str(MAX_CUSTOM_ID_CHARS) in error["message"]
    fits = _batch(client, key_b, [request_line("c" * MAX_CUSTOM_ID_CHARS)])
    assert fits["status"] == "in_progress"
    _neighbour(client, key_a)


def _settle_later(aws: Aws, batch_id: str, *, at: int) -> dict[str, Any]:
    unreachable = RunPodClient(base_url="http://127.0.0.1:9/v2", endpoint_id="none", api_key="x")
    item = batch_store.get_batch(aws.table, batch_id)
    assert item is not None
    return dict(finalize.settle(TickContext(aws=aws, runpod=unreachable, now=at), item))


def test_a_split_that_always_crashes_fails_its_batch_after_its_restarts(
    client: TestClient, aws: Aws, key_a: str, key_b: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_split = split_s3_object
    poisoned: set[str] = set()

    def split(*args: Any, **kwargs: Any) -> Any:
        if kwargs["batch_id"] in poisoned:
            raise TypeError("a bug this file finds")
        return real_split(*args, **kwargs)

    monkeypatch.setattr(split_job, "split_s3_object", split)
    file_id = upload_id(client, key_b, (request_line("b-1") + "\n").encode())
    reply = create_batch(client, key_b, file_id, metadata={"k": "v"})
    batch_id = reply.json()["id"]
    # The first split ran in the background already: poison the reruns only, and put the
    # batch back as a crashed first split leaves it.
    poisoned.add(batch_id)
    aws.table.update(
        keys.batch(batch_id),
        "SET #s = :v REMOVE n_total",
        names={"#s": "status"},
        values={":v": "validating"},
    )
    now = int(time.time())
    for _ in range(finalize.MAX_SPLIT_RESTARTS):
        now += SPLIT_STALE_S + 1
        with pytest.raises(TypeError):  # the rerun crashes, as the first did
            _settle_later(aws, batch_id, at=now)
    assert _settle_later(aws, batch_id, at=now + SPLIT_STALE_S + 1)["status"] == "failed"
    b = client.get(f"/v1/batches/{batch_id}", headers=auth(key_b)).json()
    assert b["status"] == "failed"
    [error] = b["errors"]["data"]
    assert error["code"] == "validation_failed" and "3 times" in error["message"]
    _neighbour(client, key_a)


def test_a_split_still_validating_at_its_window_fails_its_batch(
    client: TestClient, aws: Aws, key_a: str, key_b: str
) -> None:
    file_id = upload_id(client, key_b, (request_line("b-1") + "\n").encode())
    batch_id = create_batch(client, key_b, file_id).json()["id"]
    aws.table.update(
        keys.batch(batch_id),
        "SET #s = :v",
        names={"#s": "status"},
        values={":v": "validating"},
    )
    item = batch_store.get_batch(aws.table, batch_id)
    assert item is not None
    window = int(item["window_expires_at"])
    after = _settle_later(aws, batch_id, at=window + 1)
    assert after["status"] == "failed"
    assert "completion window" in after["errors"][0]["message"]
    _neighbour(client, key_a)


def test_a_chat_line_json_dumps_refuses_is_still_one_line(client: TestClient, key_b: str) -> None:
    # The deep body also survives inside the messages (the system prompt is grouped on).
    body = {
        "model": "tiny",
        "messages": [{"role": "system", "content": _deep(400)}, {"role": "user", "content": "q"}],
    }
    line = json.dumps({"custom_id": "deep", "method": "POST", "url": CHAT, "body": body})
    b = _batch(client, key_b, [line])
    assert b["status"] == "in_progress"
