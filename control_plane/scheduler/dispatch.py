"""One endpoint's dispatcher: the only writer of its window, breaker and fair queue.

It runs on its endpoint's events (SQS FIFO, one message group per endpoint, so one run per
endpoint at a time): results free slots and feed the window and the throughput averages, new
work enrolls a tenant in the fair queue, a top-up re-reads RunPod's own count of queued and
running jobs. Then it fills the window: the fair queue's next chunks are claimed (a conditional
transaction each, so nothing is sent twice), presigned and queued on RunPod, `dispatch_threads`
at a time and at most `dispatch_runs_per_s` a second. What it cannot send in one run (the cap,
a 429) it leaves to a top-up event of its own.

A run's work grows with the events it got and the chunks it sends, never with the fleet, the
tenants or the batches.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from control_plane.clients import queues
from control_plane.clients.runpod import EndpointError
from control_plane.layout import error_key, output_key
from control_plane.messages import DispatchEvent, ResultEvent, TopUpEvent, WorkEvent
from control_plane.models import TERMINAL_STATUSES
from control_plane.observability import count
from control_plane.scheduler import fair, isolate, policy
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.policy import SchedulerState
from control_plane.store import BatchItem, ChunkItem, TransactionConflict
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store.table import Table
from control_plane.webhooks import PROGRESS_PATH
from handler.contract import ProcessChunkInput

log = logging.getLogger("control_plane.dispatch")

# Chunks one run sends at most; the rest go in the next run (a top-up event of its own).
MAX_PER_RUN = 200
# The sweep re-reads an endpoint's workersMax this often.
WORKERS_MAX_EVERY_S = 600
# A claimed chunk whose job id is not stored after this long: its dispatcher died mid-way.
DISPATCH_GRACE_S = 60


def run(ctx: TickContext, events: Sequence[DispatchEvent]) -> dict[str, Any]:
    """Handle one batch of events, endpoint by endpoint (a batch may hold several groups)."""
    by_endpoint: dict[str, list[DispatchEvent]] = {}
    for event in events:
        by_endpoint.setdefault(event.endpoint_id, []).append(event)
    return {endpoint: run_endpoint(ctx, endpoint, evs) for endpoint, evs in by_endpoint.items()}


def run_endpoint(ctx: TickContext, endpoint_id: str, events: list[DispatchEvent]) -> dict[str, Any]:
    table, profile = ctx.aws.table, ctx.profile
    concurrency = ctx.settings.worker_concurrency
    before = policy.load(table, profile, endpoint_id)
    state = _apply(ctx, endpoint_id, before, events)
    top = policy.ceiling(profile, state, concurrency)
    state = policy.within(state, top)
    floor = policy.worker_floor(state, concurrency)
    state, allowed = policy.admit(state, profile, now=ctx.now, floor=floor, ceiling=top)
    room = allowed - state.in_flight if state.breaker == "closed" else allowed
    room = min(room, MAX_PER_RUN)
    sent, state, stopped = _fill(ctx, endpoint_id, state, room)
    state = state.model_copy(update={"in_flight": state.in_flight + sent})
    default = endpoint_id == ctx.runpod.endpoint_id
    if not policy.save(table, before, state, now=ctx.now, endpoint_id=endpoint_id, mirror=default):
        log.warning(
            "dispatch state not saved: another writer moved it", extra={"endpoint": endpoint_id}
        )
    if stopped or (sent >= MAX_PER_RUN):
        # More room than one run may fill, or RunPod asked us to slow down: carry on shortly.
        queues.send_dispatch(
            ctx.aws.queues, TopUpEvent(endpoint_id=endpoint_id, at=ctx.now, reason="continue")
        )
    return {
        "events": len(events),
        "window": state.window,
        "in_flight": state.in_flight,
        "breaker": state.breaker,
        "sent": sent,
        "room": room,
    }


def _apply(
    ctx: TickContext, endpoint_id: str, state: SchedulerState, events: list[DispatchEvent]
) -> SchedulerState:
    top = policy.ceiling(ctx.profile, state, ctx.settings.worker_concurrency)
    topup = False
    waiting: set[tuple[str, str]] = set()  # (tenant, priority) with new pending chunks
    for event in events:
        if isinstance(event, ResultEvent):
            state = _on_result(ctx, state, event, top)
            if event.requeued:
                waiting.add((event.tenant_id, event.priority))
        elif isinstance(event, WorkEvent):
            waiting.add((event.tenant_id, event.priority))
        elif isinstance(event, TopUpEvent):
            topup = True
            if event.workers_max is not None:
                state = _new_ceiling(ctx, state, event.workers_max, event.at)
    for tenant_id, priority in sorted(waiting):
        _enroll(ctx, endpoint_id, tenant_id, priority, state)
    if topup and state.breaker != "open":
        state = _recount(ctx, endpoint_id, state)
    return state


def _new_ceiling(
    ctx: TickContext, state: SchedulerState, workers_max: int, at: int
) -> SchedulerState:
    """The endpoint's workersMax, as the sweep read it: when it changed (or was first read), a
    profile that starts full (window_start 0) opens the window to the new ceiling at once."""
    changed = workers_max != state.workers_max
    state = state.model_copy(update={"workers_max": workers_max, "workers_max_at": at})
    top = policy.ceiling(ctx.profile, state, ctx.settings.worker_concurrency)
    if changed and ctx.profile.window_start == 0 and state.breaker == "closed":
        state = state.model_copy(update={"window": top})
    return state


def _on_result(
    ctx: TickContext, state: SchedulerState, event: ResultEvent, top: int
) -> SchedulerState:
    state = state.model_copy(update={"in_flight": max(0, state.in_flight - 1)})
    if event.outcome == "cancelled":
        return state  # stopped by a cancel or an expiry: says nothing of the workers
    if event.outcome in ("done", "dead"):
        state = policy.on_success(state, ctx.profile, seconds=event.seconds, ceiling=top)
        if event.outcome == "done":
            state = policy.on_throughput(
                state, requests=event.requests, tokens=event.tokens, busy_s=event.busy_s
            )
        return state
    return policy.on_chunk_failure(state, ctx.profile)


def _enroll(
    ctx: TickContext, endpoint_id: str, tenant_id: str, priority: str, state: SchedulerState
) -> None:
    with isolate.step(ctx, "enroll", batch_id=None):
        fair.enroll(
            ctx.aws.table,
            endpoint_id,
            tenant_id=tenant_id,
            priority=priority,
            vclock=state.vclock,
        )


def _recount(ctx: TickContext, endpoint_id: str, state: SchedulerState) -> SchedulerState:
    """RunPod's own count of this endpoint's queued and running jobs replaces the estimate
    (results whose events were lost, jobs RunPod dropped)."""
    try:
        health = ctx.runpod_for(endpoint_id).health()
    except EndpointError as exc:
        log.warning("RunPod health read failed", extra={"endpoint": endpoint_id, "error": str(exc)})
        return state
    jobs = health.get("jobs") or {}
    workers = health.get("workers") or {}
    in_flight = int(jobs.get("inQueue", 0)) + int(jobs.get("inProgress", 0))
    warm = int(workers.get("idle", 0)) + int(workers.get("running", 0))
    return state.model_copy(update={"in_flight": in_flight, "workers": warm})


def _fill(
    ctx: TickContext, endpoint_id: str, state: SchedulerState, room: int
) -> tuple[int, SchedulerState, bool]:
    """Send up to `room` chunks: (sent, state, stopped early by the endpoint)."""
    if room <= 0:
        return 0, state, False
    table = ctx.aws.table
    picked = fair.pick(table, endpoint_id, room=room, now=ctx.now, vclock=state.vclock)
    state = state.model_copy(update={"vclock": picked.vclock})
    batches: dict[str, BatchItem | None] = {}
    for chunk in picked.chunks:  # the batch items, read once each before the threads start
        with isolate.step(ctx, "read batch", batch_id=chunk["batch_id"]):
            _batch(table, batches, chunk["batch_id"])
    every = progress_every_s(ctx, state.window)
    started = time.time()  # the wall clock (a monotonic one would not follow a simulation's)
    outcomes = ctx.parallel(
        lambda chunk: _send(ctx, endpoint_id, chunk, batches, every), picked.chunks
    )
    fair.commit(table, endpoint_id, picked)
    # A batch dispatched from without a failure has recovered (isolate.close resets its count).
    ctx.seen.extend(batch for batch in batches.values() if batch is not None)
    sent = sum(1 for outcome in outcomes if outcome == "sent")
    failures = [outcome for outcome in outcomes if isinstance(outcome, EndpointError)]
    limited = [f for f in failures if f.status == 429]
    if sent:
        state = policy.on_endpoint_success(state)
    elif failures and len(limited) < len(failures):
        state = policy.on_endpoint_failure(state, ctx.profile, now=ctx.now)
    _pace(ctx, sent, started)
    return sent, state, bool(limited)


def _pace(ctx: TickContext, sent: int, started: float) -> None:
    """Keep /run under `dispatch_runs_per_s` (RunPod allows 100/s per endpoint)."""
    least = sent / ctx.settings.dispatch_runs_per_s
    spent = time.time() - started
    if least > spent:
        ctx.pause(least - spent)


def _send(
    ctx: TickContext,
    endpoint_id: str,
    chunk: ChunkItem,
    batches: dict[str, BatchItem | None],
    progress_every: int,
) -> str | EndpointError:
    """Claim one chunk and queue it on RunPod: "sent", "skipped", or the endpoint's error;
    whatever else goes wrong is counted on its batch (`isolate`) and skips it."""
    with isolate.step(ctx, "dispatch", batch_id=chunk["batch_id"], chunk_id=chunk["chunk_id"]):
        return _dispatch_chunk(ctx, endpoint_id, chunk, batches, progress_every)
    return "skipped"


def _dispatch_chunk(
    ctx: TickContext,
    endpoint_id: str,
    chunk: ChunkItem,
    batches: dict[str, BatchItem | None],
    progress_every: int,
) -> str | EndpointError:
    table = ctx.aws.table
    if chunk["batch_id"] not in batches:
        return "skipped"  # its batch could not be read: counted on it, tried again next run
    batch = batches[chunk["batch_id"]]
    if batch is None or batch["status"] in TERMINAL_STATUSES:
        _drop(table, chunk)  # left over by a batch that ended: keep the queue clear
        return "skipped"
    if batch["status"] != "in_progress" or ctx.now >= int(batch["window_expires_at"]):
        # Validating, cancelling or finalizing; or past its window, which its batch handler
        # is about to expire: not for dispatch.
        return "skipped"
    try:
        # Checked after DISPATCH_GRACE_S until the job id is stored: a run killed between the
        # claim and /run leaves a chunk that the sweep fails and retries a minute later.
        claimed = chunk_store.claim(
            table,
            chunk,
            lease_until=ctx.now + ctx.lease_s(),
            check_at=ctx.now + DISPATCH_GRACE_S,
            now=ctx.now,
        )
    except TransactionConflict:
        return "skipped"  # the batch stopped dispatching, or the chunk moved
    try:
        webhook = ctx.webhook_url(claimed["batch_id"], claimed["chunk_id"], claimed["attempts"])
        job_id = ctx.runpod_for(endpoint_id).run(
            _job_input(ctx, claimed, batch, progress_every).model_dump(exclude_none=True),
            webhook=webhook,
            execution_timeout_s=ctx.profile.execution_timeout_s,
            ttl_s=ctx.lease_s() + 3600,
            low_priority=batch.get("priority") == "backfill",
        )
    except EndpointError as exc:
        log.warning(
            "dispatch failed",
            extra={
                "batch_id": claimed["batch_id"],
                "chunk_id": claimed["chunk_id"],
                "error": str(exc),
            },
        )
        _give_back(ctx, claimed, batch, f"dispatch failed: {exc}")
        return exc
    except Exception:
        # Not the endpoint's doing (a batch item missing a field, a bug): the chunk goes back
        # unspent and the isolation step logs and counts the failure on its batch.
        _give_back(ctx, claimed, batch, "dispatch error")
        raise
    chunk_store.set_job(
        table,
        claimed,
        job_id,
        endpoint_id=endpoint_id,
        check_at=ctx.now + ctx.check_after_s(webhook=webhook is not None),
        webhook=webhook is not None,
    )
    count("ChunksDispatched")
    log.info(
        "chunk dispatched",
        extra={
            "batch_id": claimed["batch_id"],
            "chunk_id": claimed["chunk_id"],
            "attempt": claimed["attempts"],
            "job_id": job_id,
            "endpoint_id": endpoint_id,
            "requests": claimed["requests"],
        },
    )
    return "sent"


def _give_back(ctx: TickContext, claimed: ChunkItem, batch: BatchItem, reason: str) -> None:
    chunk_store.release(
        ctx.aws.table,
        claimed,
        not_before=ctx.now,
        reason=reason,
        priority=str(batch.get("priority", "normal")),
        refund_attempt=True,
    )


def _drop(table: Table, chunk: ChunkItem) -> None:
    try:
        chunk_store.finish(
            table,
            chunk,
            state="cancelled",
            expect_state="pending",
            sets={},
            batch_deltas={"chunks_open": -1},
        )
    except TransactionConflict:
        pass  # someone else moved it


def _batch(table: Table, cache: dict[str, BatchItem | None], batch_id: str) -> BatchItem | None:
    if batch_id not in cache:
        cache[batch_id] = batch_store.get_batch(table, batch_id)
    return cache[batch_id]


def progress_every_s(ctx: TickContext, window: int) -> int:
    """How often a chunk's worker reports progress: `progress_poll_s`, stretched so that the
    endpoint's running chunks send at most `progress_writes_per_s` reports together."""
    every = ctx.settings.progress_poll_s
    if every <= 0:
        return 0
    return max(every, math.ceil(window / ctx.settings.progress_writes_per_s))


def _job_input(
    ctx: TickContext, chunk: ChunkItem, batch: BatchItem, progress_every: int
) -> ProcessChunkInput:
    batch_id, chunk_id, attempt = chunk["batch_id"], chunk["chunk_id"], int(chunk["attempts"])
    progress_url = None
    if progress_every:
        progress_url = ctx.webhook_url(batch_id, chunk_id, attempt, path=PROGRESS_PATH)
    return ProcessChunkInput(
        action="process_chunk",
        batch_id=batch_id,
        chunk_id=chunk_id,
        attempt=attempt,
        endpoint=batch["endpoint"],
        input_url=ctx.presign("GET", chunk["input_key"]),
        output_url=ctx.presign("PUT", output_key(batch_id, chunk_id, attempt)),
        error_url=ctx.presign("PUT", error_key(batch_id, chunk_id, attempt)),
        progress_url=progress_url,
        progress_every_s=progress_every if progress_url else None,
        cache_salt=cache_salt(ctx.webhook_secret, batch["tenant_id"]),
    )


def cache_salt(secret: str, tenant_id: str) -> str:
    """The tenant's prefix-cache salt: keyed by the deployment's secret, so the salt (which the
    worker, RunPod's job store and its logs see) does not name the tenant. Without a secret
    (polling mode) it is still one salt per tenant."""
    return hmac.new(
        secret.encode(), f"hotbatch-cache-salt:{tenant_id}".encode(), hashlib.sha256
    ).hexdigest()
