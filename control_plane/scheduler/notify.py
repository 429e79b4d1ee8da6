"""The tick's event webhooks: fan new events out to the tenant's endpoints, then send the
deliveries that are due, at least once each, without ever holding the tick up.

- Bounded: at most FAN_OUT_PER_TICK events and DELIVERIES_PER_TICK deliveries a tick, sent
  by SEND_THREADS threads at once; each attempt stops after `HOTBATCH_EVENT_DELIVERY_TIMEOUT_S`,
  and the tick waits for the whole round at most SEND_BUDGET_ROUNDS of those: a dead or slow
  endpoint costs the tick a few seconds once, then backs off.
- Retried: a failed attempt (no answer, a timeout, anything but 2xx; redirects are not
  followed) is due again after 30 s, 1 min, 2 min, … up to 6 h between attempts, for 72 h
  after the event (OpenAI's window), then the delivery is `failed`. Every attempt is logged
  on the delivery item: status, latency, error.
- At least once: an attempt is claimed before it is sent (the delivery's due time moves a lease
  ahead), so a tick that dies mid-send leaves it to a later tick, which sends it again.
  Receivers dedupe by `webhook-id` (the event id), as Standard Webhooks asks.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from control_plane.notify import send, signing
from control_plane.scheduler.context import TickContext
from control_plane.store import Item
from control_plane.store import events as event_store
from control_plane.store import webhook_endpoints as endpoint_store

log = logging.getLogger("control_plane.notify")

FAN_OUT_PER_TICK = 50
DELIVERIES_PER_TICK = 16
SEND_THREADS = 8
SEND_BUDGET_ROUNDS = 2
CLAIM_LEASE_S = 120
RETRY_WINDOW_S = 72 * 3600
BACKOFF_FIRST_S = 30
BACKOFF_MAX_S = 6 * 3600


@dataclass
class Send:
    delivery: Item
    url: str
    payload: str
    headers: dict[str, str]


def run(ctx: TickContext) -> dict[str, int]:
    report = {"fanned_out": fan_out(ctx)}
    report.update(deliver(ctx))
    return report


def backoff_s(attempt: int) -> int:
    """The wait after failed attempt `attempt` (1, 2, …)."""
    return int(min(BACKOFF_FIRST_S * 2 ** (attempt - 1), BACKOFF_MAX_S))


def fan_out(ctx: TickContext) -> int:
    """One delivery per subscribed endpoint for each new event; an event for a tenant with no
    endpoint for its type is simply done."""
    table = ctx.aws.table
    endpoints: dict[str, list[Item]] = {}
    done = 0
    for event in event_store.new_events(table, limit=FAN_OUT_PER_TICK):
        tenant = event["tenant_id"]
        if tenant not in endpoints:
            endpoints[tenant] = endpoint_store.tenant_endpoints(
                table, tenant, limit=endpoint_store.MAX_PER_TENANT
            )
        targets = [e["id"] for e in endpoints[tenant] if event["type"] in e["event_types"]]
        done += event_store.fan_out(table, event, targets, now=ctx.now)
    return done


def deliver(ctx: TickContext) -> dict[str, int]:
    table = ctx.aws.table
    claimed = [
        mine
        for due in event_store.due_deliveries(table, now=ctx.now, limit=DELIVERIES_PER_TICK)
        if (mine := event_store.claim_delivery(table, due, now=ctx.now, lease_s=CLAIM_LEASE_S))
    ]
    counts: dict[str, int] = {}
    sends: list[Send] = []
    for delivery in claimed:
        prepared = _prepare(ctx, delivery)
        if isinstance(prepared, Send):
            sends.append(prepared)
        else:
            _finish(ctx, delivery, send.Attempt(None, 0, prepared), counts, dropped=True)
    for prepared, attempt in zip(sends, _send_all(ctx, sends), strict=True):
        _finish(ctx, prepared.delivery, attempt, counts)
    return counts


def _prepare(ctx: TickContext, delivery: Item) -> Send | str:
    """What to send, or why nothing will be (the endpoint or the event is gone)."""
    table = ctx.aws.table
    endpoint = endpoint_store.get_endpoint(table, delivery["endpoint_id"])
    event = event_store.get_event(table, delivery["event_id"])
    if endpoint is None:
        return "dropped: the endpoint was deleted"
    if event is None:
        return "dropped: the event expired"
    if event["type"] not in endpoint["event_types"]:
        return "dropped: the endpoint no longer takes this event type"
    at = int(time.time())  # signed when sent: receivers refuse timestamps 5 minutes off
    headers = signing.headers(
        message_id=event["id"],
        payload=event["payload"],
        signing_secrets=signing.secrets_of(endpoint, at),
        at=at,
    )
    return Send(delivery=delivery, url=endpoint["url"], payload=event["payload"], headers=headers)


def _send_all(ctx: TickContext, sends: list[Send]) -> list[send.Attempt]:
    if not sends:
        return []
    timeout = ctx.settings.event_delivery_timeout_s
    budget = timeout * SEND_BUDGET_ROUNDS + 1.0
    pool = ThreadPoolExecutor(min(SEND_THREADS, len(sends)), thread_name_prefix="notify")
    futures = [
        pool.submit(
            send.post,
            item.url,
            item.payload,
            item.headers,
            timeout_s=timeout,
            allow_private=ctx.settings.event_webhook_private_urls,
        )
        for item in sends
    ]
    done, _ = wait(futures, timeout=budget)
    # Never wait on a straggler: it ends by its own timeout, and its delivery is retried.
    pool.shutdown(wait=False, cancel_futures=True)
    late = send.Attempt(None, int(budget * 1000), "timed out (the tick's send budget ran out)")
    return [future.result() if future in done else late for future in futures]


def _finish(
    ctx: TickContext,
    delivery: Item,
    attempt: send.Attempt,
    counts: dict[str, int],
    *,
    dropped: bool = False,
) -> None:
    number = int(delivery["attempts"])
    entry: dict[str, Any] = {
        "attempt": number,
        "at": ctx.now,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
    }
    next_at: int | None = None
    if attempt.ok:
        state = event_store.DELIVERED
    elif dropped:
        state = event_store.DROPPED
    else:
        next_at = ctx.now + backoff_s(number)
        within = next_at - int(delivery["created_at"]) <= RETRY_WINDOW_S
        state = event_store.PENDING if within else event_store.FAILED
        if not within:
            next_at = None
    recorded = event_store.record_attempt(
        ctx.aws.table, delivery, entry=entry, state=state, next_at=next_at
    )
    outcome = state if recorded else "lost_claim"
    counts[outcome] = counts.get(outcome, 0) + 1
    log.info(
        "webhook delivery",
        extra={
            "event_id": delivery["event_id"],
            "webhook_endpoint_id": delivery["endpoint_id"],
            "tenant_id": delivery["tenant_id"],
            "outcome": outcome,
            **entry,
        },
    )
