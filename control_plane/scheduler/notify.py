"""The tick's event webhooks: fan new events out to the tenant's endpoints, then send the
deliveries that are due, at least once each, without ever holding the tick up.

- Bounded: at most FAN_OUT_PER_TICK events and DELIVERIES_PER_TICK deliveries a tick, sent
  by one pool of SEND_THREADS threads for the whole process (a warm Lambda runs tick after
  tick: a send still running when its round gives up holds one of these, never a new thread);
  each attempt ends within `HOTBATCH_EVENT_DELIVERY_TIMEOUT_S` of wall-clock time however
  slowly the endpoint answers, and the tick waits for the whole round at most
  SEND_BUDGET_ROUNDS of those: a dead or slow endpoint costs the tick a few seconds once, then
  backs off.
- Isolated: whatever one delivery's endpoint, event or send does (an unusable URL stored under
  older rules, a bug), that delivery's attempt is recorded as failed and the others of the
  round, every tenant's, are sent and recorded as usual.
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

# One pool for the process's lifetime, so sends still running when a round gives up can never
# add up to more than SEND_THREADS threads (and sockets) however many ticks a warm Lambda runs.
_pool = ThreadPoolExecutor(SEND_THREADS, thread_name_prefix="notify")


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
        try:
            prepared = _prepare(ctx, delivery)
        except Exception:  # one bad item costs its own attempt, not the round
            log.exception("webhook delivery could not be prepared", extra=_ids(delivery))
            _finish(ctx, delivery, send.Attempt(None, 0, "internal error"), counts)
            continue
        if isinstance(prepared, Send):
            sends.append(prepared)
        else:
            _finish(ctx, delivery, send.Attempt(None, 0, prepared), counts, dropped=True)
    for prepared, attempt in zip(sends, _send_all(ctx, sends), strict=True):
        _finish(ctx, prepared.delivery, attempt, counts)
    return counts


def _ids(delivery: Item) -> dict[str, str]:
    return {
        "event_id": str(delivery["event_id"]),
        "webhook_endpoint_id": str(delivery["endpoint_id"]),
        "tenant_id": str(delivery["tenant_id"]),
    }


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
    """Every send's attempt, in order; one that fails in any way is its own failed attempt."""
    if not sends:
        return []
    timeout = ctx.settings.event_delivery_timeout_s
    budget = timeout * SEND_BUDGET_ROUNDS + 1.0
    futures = [
        _pool.submit(
            send.post,
            item.url,
            item.payload,
            item.headers,
            timeout_s=timeout,
            allow_private=ctx.settings.event_webhook_private_urls,
            ids=_ids(item.delivery),
        )
        for item in sends
    ]
    done, _ = wait(futures, timeout=budget)
    late = send.Attempt(None, int(budget * 1000), "timed out (the tick's send budget ran out)")
    attempts = []
    for item, future in zip(sends, futures, strict=True):
        if future not in done:
            # Never wait on a straggler: one still queued is not sent at all, a running one
            # ends by its own deadline; either way the delivery is retried.
            future.cancel()
            attempts.append(late)
            continue
        try:
            attempts.append(future.result())
        except Exception:  # `post` does not raise; should it ever, only this send fails
            log.exception("webhook send raised", extra=_ids(item.delivery))
            attempts.append(send.Attempt(None, 0, "internal error"))
    return attempts


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
    try:
        recorded = event_store.record_attempt(
            ctx.aws.table, delivery, entry=entry, state=state, next_at=next_at
        )
        outcome = state if recorded else "lost_claim"
    except Exception:  # the others of the round are still recorded; the lease retries this one
        log.exception("webhook attempt not recorded", extra=_ids(delivery))
        outcome = "unrecorded"
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
