"""Event webhooks sent to real HTTP receivers: a dead or slow endpoint costs the tick one
bounded wait and is retried later, while the healthy one gets its delivery; the body and the
signature are what `client.webhooks.unwrap` accepts, unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.ids import now_s
from control_plane.scheduler import notify
from control_plane.scheduler.context import TickContext
from control_plane.store import events as event_store
from tests.support.api import auth, create_batch, upload_id
from tests.support.receiver import Receiver, dead_url

pytestmark = pytest.mark.stack

TIMEOUT_S = 1.0
LOCAL = {"event_webhook_private_urls": True, "event_delivery_timeout_s": TIMEOUT_S}


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver(slow_s=6.0).start()
    yield server
    server.stop()


def at(aws: Aws, now: int) -> TickContext:
    unreachable = RunPodClient(base_url="http://127.0.0.1:9/v2", endpoint_id="none", api_key="x")
    return TickContext(aws=aws, runpod=unreachable, now=now)


def hook(client: TestClient, key: str, url: str) -> dict[str, Any]:
    reply = client.post(
        "/v1/webhook_endpoints",
        headers=auth(key),
        json={"name": url, "url": url, "event_types": ["batch.failed"]},
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


@pytest.mark.parametrize("settings", [LOCAL], indirect=True)
def test_dead_and_slow_endpoints_never_hold_the_tick(
    client: TestClient, key_a: str, aws: Aws, receiver: Receiver
) -> None:
    ok = hook(client, key_a, f"{receiver.url}/ok")
    hook(client, key_a, f"{receiver.url}/slow")
    hook(client, key_a, dead_url())
    reply = create_batch(client, key_a, upload_id(client, key_a, b"{oops\n"))
    batch_id = reply.json()["id"]
    (event,) = event_store.new_events(aws.table, limit=10)

    started, tick_at = time.monotonic(), now_s()
    report = notify.run(at(aws, tick_at))
    took = time.monotonic() - started
    assert report == {"fanned_out": 1, "delivered": 1, "pending": 2}
    assert took < TIMEOUT_S * notify.SEND_BUDGET_ROUNDS + 1.5  # the slow one answers after 6 s

    (got,) = receiver.on("/ok")
    unwrapped = OpenAI(api_key="unused").webhooks.unwrap(
        got.body, got.headers, secret=ok["signing_secret"]
    )
    assert unwrapped.type == "batch.failed" and unwrapped.data.id == batch_id
    assert got.headers["webhook-id"] == event["id"]
    logs = {d["endpoint_id"]: d for d in event_store.deliveries_of(aws.table, event["id"])}
    errors = sorted(d["attempt_log"][0]["error"] or "" for d in logs.values())
    assert (
        errors[0] == "" and errors[1].startswith("connection failed") and errors[2] == "timed out"
    )
    slow = next(d for d in logs.values() if d["attempt_log"][0]["error"] == "timed out")
    assert TIMEOUT_S * 1000 <= slow["attempt_log"][0]["latency_ms"] < TIMEOUT_S * 1000 + 1000
    assert slow["state"] == "pending" and slow["next_at"] == tick_at + notify.backoff_s(1)


@pytest.mark.parametrize("settings", [LOCAL], indirect=True)
def test_a_failed_attempt_is_sent_again_and_verifies_again(
    client: TestClient, key_a: str, aws: Aws, receiver: Receiver
) -> None:
    flaky = hook(client, key_a, f"{receiver.url}/flaky")
    create_batch(client, key_a, upload_id(client, key_a, b"{oops\n"))
    start = now_s()
    assert notify.run(at(aws, start))["pending"] == 1
    assert notify.run(at(aws, start + notify.backoff_s(1)))["delivered"] == 1
    first, second = receiver.on("/flaky")
    assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"]
    sdk = OpenAI(api_key="unused")
    for got in (first, second):
        sdk.webhooks.verify_signature(got.body, got.headers, secret=flaky["signing_secret"])


@pytest.mark.parametrize("settings", [LOCAL], indirect=True)
def test_the_sdks_test_call_sends_a_signed_sample_and_answers_the_status(
    client: TestClient, key_a: str, receiver: Receiver
) -> None:
    sdk = OpenAI(base_url="http://testserver/v1", api_key=key_a, http_client=client)
    good = sdk.webhooks.create(name="ok", url=f"{receiver.url}/ok", event_types=["batch.failed"])
    bad = sdk.webhooks.create(name="no", url=f"{receiver.url}/fail", event_types=["batch.failed"])
    result = sdk.webhooks.test(good.id, event_type="batch.expired")
    assert (result.object, result.success, result.status_code) == (
        "webhook_endpoint.test",
        True,
        200,
    )
    assert result.webhook_endpoint_id == good.id and result.event_type == "batch.expired"
    (got,) = receiver.on("/ok")
    event = sdk.webhooks.unwrap(got.body, got.headers, secret=good.signing_secret)
    assert event.type == "batch.expired" and event.data.id == "batch_test"
    assert sdk.webhooks.test(bad.id, event_type="batch.failed").status_code == 500
