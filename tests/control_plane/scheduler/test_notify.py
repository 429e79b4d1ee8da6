"""Event webhooks on the tick's side, in process: the event written with the batch's final
transition, fan-out to the subscribed endpoints, signed bodies the `openai` SDK unwraps,
backoff, the retry window and the per-tick bound. The endpoint's HTTP answer is a stand-in
here (`send.post` replaced); api/test_webhooks_stack.py sends to real receivers."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.errors import StateConflict
from control_plane.ids import now_s
from control_plane.notify import send, signing
from control_plane.scheduler import notify
from control_plane.scheduler.context import TickContext
from control_plane.store import batches as batch_store
from control_plane.store import events as event_store
from control_plane.store import webhook_endpoints as endpoint_store
from tests.support.api import auth, create_batch, tick, upload_id
from tests.support.lines import jsonl

Sent = list[tuple[str, str, dict[str, str]]]


def at(aws: Aws, now: int) -> TickContext:
    unreachable = RunPodClient(base_url="http://127.0.0.1:9/v2", endpoint_id="none", api_key="x")
    return TickContext(aws=aws, runpod=unreachable, now=now)


def answering(monkeypatch: pytest.MonkeyPatch, *statuses: int | None) -> Sent:
    """Endpoints answer `statuses` in turn (None: no answer), then 200; returns what was sent."""
    sent: Sent = []
    queue = list(statuses)

    def post(url: str, payload: str, headers: dict[str, str], **_: Any) -> send.Attempt:
        sent.append((url, payload, headers))
        status = queue.pop(0) if queue else 200
        return send.Attempt(status, 3, None if status else "connection failed")

    monkeypatch.setattr(send, "post", post)
    return sent


def endpoint(client: TestClient, key: str, url: str, types: list[str]) -> dict[str, Any]:
    reply = client.post(
        "/v1/webhook_endpoints",
        headers=auth(key),
        json={"name": "app", "url": url, "event_types": types},
    )
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def failed_batch(client: TestClient, key: str) -> str:
    """A batch the split fails at once (its only line is not JSON)."""
    reply = create_batch(client, key, upload_id(client, key, b"{oops\n"))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def unwrap(payload: str, headers: dict[str, str], secret: str) -> Any:
    return OpenAI(api_key="unused").webhooks.unwrap(payload, headers, secret=secret)


def test_signed_headers_are_what_the_sdk_verifies() -> None:
    secret, old = signing.new_secret(), signing.new_secret()
    payload = (
        '{"id":"evt_1","object":"event","created_at":1,"type":"batch.completed",'
        '"data":{"id":"batch_1"}}'
    )
    headers = signing.headers(
        message_id="evt_1", payload=payload, signing_secrets=[secret, old], at=now_s()
    )
    event = unwrap(payload, headers, secret)
    assert event.type == "batch.completed" and event.data.id == "batch_1"
    assert unwrap(payload, headers, old).id == "evt_1"  # a rotated-out secret still verifies
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(payload, headers, signing.new_secret())
    with pytest.raises(openai.InvalidWebhookSignatureError):
        unwrap(payload.replace("batch_1", "batch_2"), headers, secret)
    stale = signing.headers(
        message_id="evt_1", payload=payload, signing_secrets=[secret], at=now_s() - 600
    )
    with pytest.raises(openai.InvalidWebhookSignatureError, match="too old"):
        unwrap(payload, stale, secret)


def test_a_final_transition_records_its_event_exactly_once(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    batch_id = failed_batch(client, key_a)
    batch = batch_store.get_batch(aws.table, batch_id)
    assert batch is not None and batch["status"] == "failed"
    events = event_store.new_events(aws.table, limit=10)
    assert [(e["type"], e["tenant_id"]) for e in events] == [("batch.failed", "tenant-a")]
    body = events[0]["payload"]  # OpenAI's event body, byte for byte what will be sent
    assert body == (
        f'{{"id":"{events[0]["id"]}","object":"event","created_at":{batch["failed_at"]},'
        f'"type":"batch.failed","data":{{"id":"{batch_id}"}}}}'
    )
    with pytest.raises(StateConflict):  # a retried or racing writer loses the condition …
        batch_store.transition(aws.table, batch, expect={"validating"}, to="failed", at=1)
    assert len(event_store.new_events(aws.table, limit=10)) == 1  # … and records nothing


def test_events_go_to_the_tenants_subscribed_endpoints_signed_for_the_sdk(
    client: TestClient, key_a: str, key_b: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = answering(monkeypatch)
    cancels = endpoint(client, key_a, "https://a.example.com/cancels", ["batch.cancelled"])
    everything = endpoint(
        client,
        key_a,
        "https://a.example.com/all",
        ["batch.completed", "batch.failed", "batch.cancelled"],
    )
    endpoint(client, key_b, "https://b.example.com/all", ["batch.failed", "batch.cancelled"])

    failed = failed_batch(client, key_a)
    running = create_batch(client, key_a, upload_id(client, key_a, jsonl(3))).json()["id"]
    assert client.post(f"/v1/batches/{running}/cancel", headers=auth(key_a)).status_code == 200
    tick(aws)  # cancels the batch (nothing ran) and delivers what has happened so far
    tick(aws)

    got = {(u, unwrap(b, h, secret=_secret(u, cancels, everything)).type) for u, b, h in sent}
    assert got == {
        ("https://a.example.com/all", "batch.failed"),
        ("https://a.example.com/all", "batch.cancelled"),
        ("https://a.example.com/cancels", "batch.cancelled"),
    }
    by_type = {unwrap(b, h, _secret(u, cancels, everything)).type: (b, h) for u, b, h in sent}
    cancelled = unwrap(*by_type["batch.cancelled"], secret=everything["signing_secret"])
    assert cancelled.data.id == running and cancelled.object == "event"
    assert unwrap(*by_type["batch.failed"], secret=everything["signing_secret"]).data.id == failed
    assert len(sent) == 3  # delivered once each: nothing is due any more
    assert event_store.due_deliveries(aws.table, now=now_s() + 10**6, limit=10) == []


def _secret(url: str, *endpoints: dict[str, Any]) -> str:
    return next(str(e["signing_secret"]) for e in endpoints if e["url"] == url)


def deliveries(aws: Aws, event_id: str) -> list[dict[str, Any]]:
    return event_store.deliveries_of(aws.table, event_id)


def test_a_failing_endpoint_is_retried_with_backoff_and_every_attempt_logged(
    client: TestClient, key_a: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = answering(monkeypatch, 500, None, 503)
    endpoint(client, key_a, "https://a.example.com/h", ["batch.failed"])
    failed_batch(client, key_a)
    (event,) = event_store.new_events(aws.table, limit=10)
    start = now_s()
    assert notify.run(at(aws, start)) == {"fanned_out": 1, "pending": 1}
    assert notify.run(at(aws, start + 29)) == {"fanned_out": 0}  # not due before 30 s
    assert notify.run(at(aws, start + 30))["pending"] == 1  # second try, next after 60 s
    assert notify.run(at(aws, start + 89)) == {"fanned_out": 0}
    assert notify.run(at(aws, start + 90))["pending"] == 1  # third, next after 120 s
    assert notify.run(at(aws, start + 210))["delivered"] == 1
    (delivery,) = deliveries(aws, event["id"])
    assert delivery["state"] == "delivered" and delivery["attempts"] == 4
    log = delivery["attempt_log"]
    assert [(e["attempt"], e["status_code"], e["error"]) for e in log] == [
        (1, 500, None),
        (2, None, "connection failed"),
        (3, 503, None),
        (4, 200, None),
    ]
    assert [e["at"] - start for e in log] == [0, 30, 90, 210]
    assert all(e["latency_ms"] == 3 for e in log)
    assert len(sent) == 4 and len({h["webhook-id"] for _, _, h in sent}) == 1
    assert {p for _, p, _ in sent} == {event["payload"]}  # the same bytes every time


def test_backoff_doubles_up_to_six_hours_and_gives_up_after_72_hours(
    client: TestClient, key_a: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert [notify.backoff_s(n) for n in (1, 2, 3, 10, 11, 50)] == [
        30,
        60,
        120,
        15360,
        21600,
        21600,
    ]
    answering(monkeypatch, *([500] * 100))
    endpoint(client, key_a, "https://a.example.com/h", ["batch.failed"])
    failed_batch(client, key_a)
    (event,) = event_store.new_events(aws.table, limit=10)
    now = now_s()
    outcome: dict[str, int] = notify.run(at(aws, now))
    while outcome.get("pending"):
        (delivery,) = deliveries(aws, event["id"])
        now = int(delivery["next_at"])
        outcome = notify.run(at(aws, now))
    (delivery,) = deliveries(aws, event["id"])
    assert outcome == {"fanned_out": 0, "failed": 1} and delivery["state"] == "failed"
    assert 72 * 3600 - 6 * 3600 < now - int(delivery["created_at"]) <= 72 * 3600
    assert delivery["attempts"] == len(delivery["attempt_log"]) == 21
    assert "gsi2pk" not in delivery  # out of the queue for good


def test_a_deleted_endpoint_drops_its_delivery(
    client: TestClient, key_a: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = answering(monkeypatch)
    hook = endpoint(client, key_a, "https://a.example.com/h", ["batch.failed"])
    failed_batch(client, key_a)
    notify.fan_out(at(aws, now_s()))
    assert (
        client.delete(f"/v1/webhook_endpoints/{hook['id']}", headers=auth(key_a)).status_code == 200
    )
    assert notify.deliver(at(aws, now_s())) == {"dropped": 1}
    assert sent == []


def test_one_tick_sends_a_bounded_number_and_a_claim_is_taken_once(
    client: TestClient, key_a: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = answering(monkeypatch)
    endpoint(client, key_a, "https://a.example.com/h", ["batch.failed"])
    for _ in range(notify.DELIVERIES_PER_TICK + 4):
        failed_batch(client, key_a)
    now = now_s()
    report = notify.run(at(aws, now))
    assert report == {
        "fanned_out": notify.DELIVERIES_PER_TICK + 4,
        "delivered": notify.DELIVERIES_PER_TICK,
    }
    assert len(sent) == notify.DELIVERIES_PER_TICK
    (due,) = event_store.due_deliveries(aws.table, now=now, limit=100)[:1]
    mine = event_store.claim_delivery(aws.table, due, now=now, lease_s=60)
    assert mine is not None and mine["attempts"] == 1
    assert event_store.claim_delivery(aws.table, due, now=now, lease_s=60) is None  # taken
    assert notify.run(at(aws, now)) == {"fanned_out": 0, "delivered": 3}  # the claimed one waits
    assert notify.run(at(aws, now + 61)) == {"fanned_out": 0, "delivered": 1}  # lease over


def test_events_for_a_tenant_without_endpoints_are_done_at_fan_out(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    failed_batch(client, key_a)
    assert notify.run(at(aws, now_s())) == {"fanned_out": 1}
    assert event_store.new_events(aws.table, limit=10) == []
    assert event_store.due_deliveries(aws.table, now=now_s(), limit=10) == []


def test_a_delivery_that_cannot_be_prepared_or_recorded_fails_alone(
    client: TestClient, key_a: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = answering(monkeypatch)
    broken = endpoint(client, key_a, "https://a.example.com/broken", ["batch.failed"])
    unrecorded = endpoint(client, key_a, "https://a.example.com/unrecorded", ["batch.failed"])
    endpoint(client, key_a, "https://a.example.com/fine", ["batch.failed"])
    # A secret that cannot sign (an item damaged by hand, say) and a write that fails.
    endpoint_store.update_endpoint(aws.table, broken["id"], {"secret": "whsec_!"})
    record = event_store.record_attempt

    def record_attempt(table: Any, delivery: dict[str, Any], **kwargs: Any) -> bool:
        if delivery["endpoint_id"] == unrecorded["id"]:
            raise RuntimeError("the table is throttling")
        return record(table, delivery, **kwargs)

    monkeypatch.setattr(event_store, "record_attempt", record_attempt)
    failed_batch(client, key_a)
    (event,) = event_store.new_events(aws.table, limit=10)
    report = notify.run(at(aws, now_s()))
    assert report == {"fanned_out": 1, "pending": 1, "unrecorded": 1, "delivered": 1}
    assert sorted(u for u, _, _ in sent) == [
        "https://a.example.com/fine",
        "https://a.example.com/unrecorded",
    ]
    logs = {d["endpoint_id"]: d["attempt_log"] for d in deliveries(aws, event["id"])}
    assert [e["error"] for e in logs[broken["id"]]] == ["internal error"]
    assert logs[unrecorded["id"]] == []  # its claim lapses and a later tick sends it again
