"""Tenant B's event webhook endpoints must never cost tenant A a delivery, nor show B anything
of the network the sender runs in. Each test plays B's attack and checks that A's delivery in
the same round is sent and recorded, and what B itself sees: its own attempt recorded as a
failure, and `/test` a 400 whose reason names no address.

In the rounds on a public deployment, A's endpoint answers through a stand-in for `send.post`
(a public https receiver cannot run here); B's sends go through the real one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.ids import new_id, now_s
from control_plane.notify import send, signing
from control_plane.scheduler import notify
from control_plane.scheduler.context import TickContext
from control_plane.store import events as event_store
from control_plane.store import webhook_endpoints as endpoint_store
from tests.control_plane.notify.fakes import (
    CLOSED_PORT,
    TRICKLE_S,
    TRICKLED,
    RawReceiver,
    fake_dns,
)
from tests.support.api import auth, create_batch, upload_id
from tests.support.receiver import Receiver

A_URL = "https://a.example.com/hooks"
NOT_PUBLIC = "refused: the host does not resolve to a public address"
DEADLINE_S = 0.5
LOCAL = {"event_webhook_private_urls": True, "event_delivery_timeout_s": DEADLINE_S}


def at(aws: Aws, now: int) -> TickContext:
    unreachable = RunPodClient(base_url="http://127.0.0.1:9/v2", endpoint_id="none", api_key="x")
    return TickContext(aws=aws, runpod=unreachable, now=now)


def hook(client: TestClient, key: str, url: str) -> str:
    reply = client.post(
        "/v1/webhook_endpoints",
        headers=auth(key),
        json={"name": "hook", "url": url, "event_types": ["batch.failed"]},
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def stored_hook(aws: Aws, tenant_id: str, url: str) -> str:
    """An endpoint written as an older release stored it, whatever its URL."""
    now = now_s()
    item = {
        "id": new_id("webhook_endpoint"),
        "name": "stored",
        "url": url,
        "event_types": ["batch.failed"],
        "created_at": now,
        "updated_at": now,
        "secret": signing.new_secret(),
    }
    endpoint_store.create_endpoint(aws.table, tenant_id=tenant_id, item=item, max_per_tenant=20)
    return str(item["id"])


def failed_batch(client: TestClient, key: str) -> None:
    """A batch the split fails at once, so its tenant has a `batch.failed` event to deliver."""
    assert create_batch(client, key, upload_id(client, key, b"{oops\n")).status_code == 200


def new_event_ids(aws: Aws, tenant_id: str) -> list[str]:
    """The tenant's events not fanned out yet (ask before the round that fans them out)."""
    found = [
        str(e["id"])
        for e in event_store.new_events(aws.table, limit=50)
        if e["tenant_id"] == tenant_id
    ]
    assert found, f"no new event for {tenant_id}"
    return found


def deliveries(aws: Aws, event_ids: list[str]) -> list[dict[str, Any]]:
    return [d for e in event_ids for d in event_store.deliveries_of(aws.table, e)]


def errors(aws: Aws, event_ids: list[str]) -> list[str | None]:
    """The error of each delivery's latest attempt."""
    return [d["attempt_log"][-1]["error"] for d in deliveries(aws, event_ids)]


def a_answers(monkeypatch: pytest.MonkeyPatch, *, others_raise: bool = False) -> list[str]:
    """A's endpoint (on `A_URL`'s host) answers 200; every other send is the real `post`, or
    raises when `others_raise`. Returns the URLs A was sent to."""
    real, to_a = send.post, []

    def post(url: str, payload: str, headers: dict[str, str], **kwargs: Any) -> send.Attempt:
        if urlsplit(url).hostname == urlsplit(A_URL).hostname:
            to_a.append(url)
            return send.Attempt(200, 1)
        if others_raise:
            raise RuntimeError("a bug in the sender")
        return real(url, payload, headers, **kwargs)

    monkeypatch.setattr(send, "post", post)
    return to_a


def probe(client: TestClient, key: str, endpoint_id: str) -> str:
    """`/test` on the endpoint, which must be a 400 `webhook_endpoint_unreachable` (never a
    500); its message."""
    reply = client.post(
        f"/v1/webhook_endpoints/{endpoint_id}/test",
        headers=auth(key),
        json={"event_type": "batch.failed"},
    )
    assert reply.status_code == 400, reply.text
    error: dict[str, Any] = reply.json()["error"]
    assert error["code"] == "webhook_endpoint_unreachable", error
    return str(error["message"])


def a_is_delivered(aws: Aws, event_ids: list[str], to_a: list[str]) -> None:
    (delivery,) = deliveries(aws, event_ids)
    assert delivery["state"] == "delivered" and delivery["attempts"] == 1
    assert to_a == [A_URL]


def test_an_unusable_port_is_refused_and_one_stored_costs_only_bs_own_delivery(
    client: TestClient, key_a: str, key_b: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    to_a = a_answers(monkeypatch)
    evil = "https://evil.example.com:99999/x"
    for url in (evil, "https://evil.example.com:8443/x", "https://evil.example.com:22/x"):
        reply = client.post(
            "/v1/webhook_endpoints",
            headers=auth(key_b),
            json={"name": "evil", "url": url, "event_types": ["batch.failed"]},
        )
        assert reply.status_code == 400, reply.text
        assert (
            reply.json()["error"]["param"] == "url" and "port" in reply.json()["error"]["message"]
        )
    stored = stored_hook(aws, "tenant-b", evil)  # from before the check
    hook(client, key_a, A_URL)
    failed_batch(client, key_b)
    failed_batch(client, key_a)
    a_events, b_events = new_event_ids(aws, "tenant-a"), new_event_ids(aws, "tenant-b")

    report = notify.run(at(aws, now_s()))

    assert report == {"fanned_out": 2, "delivered": 1, "pending": 1}
    a_is_delivered(aws, a_events, to_a)
    (b_delivery,) = deliveries(aws, b_events)
    assert b_delivery["state"] == "pending" and b_delivery["attempts"] == 1
    assert errors(aws, b_events) == ["refused: the URL's port must be a number from 1 to 65535"]
    assert "port must be a number" in probe(client, key_b, stored)


def test_a_send_that_raises_for_b_costs_only_bs_own_delivery(
    client: TestClient, key_a: str, key_b: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    to_a = a_answers(monkeypatch, others_raise=True)
    hook(client, key_b, "https://b.example.com/hooks")
    hook(client, key_a, A_URL)
    failed_batch(client, key_b)
    failed_batch(client, key_a)
    a_events, b_events = new_event_ids(aws, "tenant-a"), new_event_ids(aws, "tenant-b")

    assert notify.run(at(aws, now_s())) == {"fanned_out": 2, "delivered": 1, "pending": 1}
    a_is_delivered(aws, a_events, to_a)
    assert errors(aws, b_events) == ["internal error"]


@pytest.fixture()
def trickle() -> Iterator[RawReceiver]:
    server = RawReceiver(answer=TRICKLED, byte_every_s=TRICKLE_S).start()
    yield server
    server.stop()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def notify_threads() -> int:
    return sum(t.name.startswith("notify") for t in threading.enumerate())


@pytest.mark.stack
@pytest.mark.parametrize("settings", [LOCAL], indirect=True)
def test_a_trickling_receiver_of_b_is_cut_at_the_deadline_and_leaves_no_thread_or_socket(
    client: TestClient,
    key_a: str,
    key_b: str,
    aws: Aws,
    trickle: RawReceiver,
    receiver: Receiver,
) -> None:
    hook(client, key_a, f"{receiver.url}/ok")
    b_paths = [f"/{n}" for n in range(5)]
    for path in b_paths:
        hook(client, key_b, trickle.url(path))
    failed_batch(client, key_b)
    b_events = new_event_ids(aws, "tenant-b")
    start = now_s()
    # B's sends come due again 30 s later (the backoff); A has a new event each round. Were
    # sends not cut, two rounds would leave 10 threads and sockets behind, more than a pool has.
    for tick_at in (start, start + 30):
        failed_batch(client, key_a)
        a_events = new_event_ids(aws, "tenant-a")
        started = time.monotonic()
        report = notify.run(at(aws, tick_at))
        took = time.monotonic() - started
        assert report == {"fanned_out": 1 + (tick_at == start), "delivered": 1, "pending": 5}
        # Each send's own deadline, plus the table's work; never the tick's budget (2 s here).
        assert took < 2 * DEADLINE_S + 0.5, took
        (a_delivery,) = deliveries(aws, a_events)
        assert a_delivery["state"] == "delivered"
        assert trickle.wait_all_closed(within_s=0.5)
        assert notify_threads() <= notify.SEND_THREADS
    assert len(receiver.on("/ok")) == 2 and trickle.accepted == 2 * len(b_paths)
    for delivery in deliveries(aws, b_events):
        assert [e["error"] for e in delivery["attempt_log"]] == ["timed out"] * 2
        assert all(
            DEADLINE_S * 1000 <= e["latency_ms"] < (DEADLINE_S + 0.5) * 1000
            for e in delivery["attempt_log"]
        )


# B's names resolve to internal addresses in the forms `ipaddress.is_global` lets through.
WRAPPED_INTERNAL = {
    "nat64.b.example.com": "64:ff9b::a9fe:a9fe",  # 169.254.169.254, the metadata service
    "6to4.b.example.com": "2002:a00:5::1",  # 10.0.0.5
    "compat.b.example.com": "::a00:5",
    "mapped.b.example.com": "::ffff:10.0.0.5",
    "teredo.b.example.com": "2001:0:4136:e378:8000:63bf:f5ff:fffa",  # client 10.0.0.5
    "multicast4.b.example.com": "224.0.0.251",
    "multicast6.b.example.com": "ff0e::1",
    "sitelocal.b.example.com": "fec0::1",
}


def test_bs_names_resolving_inside_through_ipv6_wrappings_are_refused_unconnected(
    client: TestClient, key_a: str, key_b: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    to_a = a_answers(monkeypatch)
    asked = fake_dns(monkeypatch, {name: [address] for name, address in WRAPPED_INTERNAL.items()})
    b_hooks = [hook(client, key_b, f"https://{name}/h") for name in WRAPPED_INTERNAL]
    hook(client, key_a, A_URL)
    failed_batch(client, key_b)
    failed_batch(client, key_a)
    a_events, b_events = new_event_ids(aws, "tenant-a"), new_event_ids(aws, "tenant-b")

    report = notify.run(at(aws, now_s()))

    assert report == {"fanned_out": 2, "delivered": 1, "pending": len(WRAPPED_INTERNAL)}
    a_is_delivered(aws, a_events, to_a)
    assert errors(aws, b_events) == [NOT_PUBLIC] * len(WRAPPED_INTERNAL)
    assert set(asked) == set(WRAPPED_INTERNAL)  # names resolved; no address connected to
    for endpoint_id in b_hooks:
        message = probe(client, key_b, endpoint_id)
        assert message.endswith(f": {NOT_PUBLIC}."), message
        assert not any(address in message for address in WRAPPED_INTERNAL.values())


def test_bs_test_calls_tell_nothing_of_addresses_ports_or_internal_names(
    client: TestClient, key_a: str, key_b: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    to_a = a_answers(monkeypatch)
    fake_dns(
        monkeypatch,
        {
            "closed.b.example.com": ["1.1.1.1"],
            "1.1.1.1": [("127.0.0.1", CLOSED_PORT)],  # a public address with nothing on 443
            "inside.b.example.com": ["10.0.0.5"],
        },
    )
    closed = hook(client, key_b, "https://closed.b.example.com/h")
    inside = hook(client, key_b, "https://inside.b.example.com/h")
    nowhere = hook(client, key_b, "https://nowhere.b.example.com/h")
    hook(client, key_a, A_URL)
    failed_batch(client, key_b)
    failed_batch(client, key_a)
    a_events, b_events = new_event_ids(aws, "tenant-a"), new_event_ids(aws, "tenant-b")

    assert notify.run(at(aws, now_s())) == {"fanned_out": 2, "delivered": 1, "pending": 3}
    a_is_delivered(aws, a_events, to_a)
    assert sorted(map(str, errors(aws, b_events))) == ["connection failed", NOT_PUBLIC, NOT_PUBLIC]
    assert probe(client, key_b, closed) == (
        "The test event could not be delivered to https://closed.b.example.com/h: "
        "connection failed."
    )
    # An internal name and one that does not resolve read the same: no DNS oracle.
    assert probe(client, key_b, inside) == (
        f"The test event could not be delivered to https://inside.b.example.com/h: {NOT_PUBLIC}."
    )
    assert probe(client, key_b, nowhere) == (
        f"The test event could not be delivered to https://nowhere.b.example.com/h: {NOT_PUBLIC}."
    )
