"""One tick: collect results, settle batches, dispatch, keep workers hot.

Run every minute by EventBridge Scheduler in AWS and every second or so by the local stack, and
kicked at once after a split and after each chunk result that arrives by webhook.
Two ticks at once are safe (every move is a conditional write); a tick killed anywhere leaves
state the next one finishes. Each chunk and each batch is one isolated step (`isolate.py`):
what fails on one is logged and skipped, and the others move on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import ValidationError

from control_plane import secrets
from control_plane.aws import Aws
from control_plane.errors import StateConflict
from control_plane.runpod import EndpointError, JobGone, RunPodClient
from control_plane.scheduler import dispatch, finalize, isolate, keephot, policy, record, upkeep
from control_plane.scheduler.context import TickContext
from control_plane.store import BatchItem, ChunkItem, TransactionConflict, keys
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from handler.contract import ChunkProgress

log = logging.getLogger("control_plane.tick")


def make_context(aws: Aws, *, now: int | None = None) -> TickContext:
    settings = aws.settings
    return TickContext(
        aws=aws,
        runpod=RunPodClient(
            base_url=settings.runpod_base_url,
            endpoint_id=settings.runpod_endpoint_id,
            api_key=secrets.runpod_api_key(settings),
        ),
        now=int(time.time()) if now is None else now,
        webhook_secret=secrets.webhook_secret(settings) if settings.public_url else "",
        profile=policy.PROFILES[settings.dispatch_profile],
    )


def run_tick(ctx: TickContext, *, kicked: bool = False) -> dict[str, Any]:
    """One tick. A kicked one (`control_plane/kick.py`) leaves keep-hot to the scheduled ticks,
    so kicks add no pings and no health samples."""
    table = ctx.aws.table
    before = policy.load(table, ctx.profile)
    state = before
    outcomes: dict[str, int] = {}
    for chunk in chunk_store.in_flight(table):
        outcome: str = "error"
        with isolate.step(ctx, "poll", batch_id=_batch_of(chunk), chunk_id=chunk.get("chunk_id")):
            outcome, state = poll_chunk(ctx, chunk, state)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "unreachable":
            break  # one failure per tick for the breaker, not one per chunk in flight
    seen, settled = settle_all(ctx)
    running = len(chunk_store.in_flight(table))
    state = dispatch.dispatch(ctx, state, running=running)
    keep_hot: dict[str, Any] = {"skipped": "kicked"}
    if not kicked:
        with isolate.step(ctx, "keep hot", batch_id=None):
            keep_hot = keephot.keep_hot(ctx, state)
    if isinstance(keep_hot.get("warm"), int):
        state = state.model_copy(update={"workers": keep_hot["warm"]})  # for the next dispatch
    failures = isolate.close(ctx, seen)
    policy.save(table, before, state, now=ctx.now)
    report = {
        "outcomes": outcomes,
        "batches": settled,
        "in_flight_before_dispatch": running,
        "window": state.window,
        "breaker": state.breaker,
        "keep_hot": keep_hot,
        "failures": failures,
    }
    # Webhooks, file checks, file expiry: after dispatch, and no failure of theirs stops a tick.
    with isolate.step(ctx, "upkeep", batch_id=None):
        report["upkeep"] = upkeep.run(ctx)
    log.info("tick", extra=report)
    return report


def settle_all(ctx: TickContext) -> tuple[list[BatchItem], dict[str, str]]:
    """Settle every unfinished batch, each read and moved on its own step. Returns the items
    read and each batch's status after this tick."""
    seen: list[BatchItem] = []
    settled: dict[str, str] = {}
    for batch_id in batch_store.active_batch_ids(ctx.aws.table):
        with isolate.step(ctx, "settle", batch_id=batch_id):
            batch = batch_store.get_batch(ctx.aws.table, batch_id)
            if batch is None:
                continue
            seen.append(batch)
            settled[batch_id] = finalize.settle(ctx, batch)["status"]
    return seen, settled


def _batch_of(chunk: ChunkItem) -> str:
    return chunk.get("batch_id") or keys.batch_id_of(str(chunk.get("pk", "")))


def poll_chunk(
    ctx: TickContext, chunk: ChunkItem, state: policy.SchedulerState
) -> tuple[record.Outcome, policy.SchedulerState]:
    """Ask RunPod about a dispatched chunk: every tick without webhooks, and only once its
    lease has run out with them (the webhook is the fast path, polling the safety net)."""
    lease_over = ctx.now >= int(chunk.get("lease_until", 0))
    job_id = chunk.get("job_id")
    if not job_id:
        if ctx.now - int(chunk.get("dispatched_at", 0)) < 60:
            return "running", state  # the dispatching tick is between claim and /run
        # That tick died before recording the job id; the attempt counts, its keys are spent.
        return record.fail_chunk(ctx, chunk, "dispatch did not finish", state)
    if ctx.webhooks and not lease_over and not _progress_due(ctx, chunk):
        return "running", state
    try:
        job = ctx.runpod_for(chunk.get("runpod_endpoint_id")).status(job_id)
    except JobGone:
        return record.fail_chunk(ctx, chunk, f"RunPod no longer knows job {job_id}", state)
    except EndpointError as exc:
        log.warning("status poll failed", extra={"job_id": job_id, "error": str(exc)})
        return "unreachable", policy.on_endpoint_failure(state, ctx.profile, now=ctx.now)
    state = policy.on_endpoint_answer(state)
    outcome, state = record.record_job(ctx, chunk, job, state)
    if outcome == "running" and not lease_over:
        _keep_progress(ctx, chunk, job)
    if outcome == "running" and lease_over:
        try:
            ctx.runpod_for(chunk.get("runpod_endpoint_id")).cancel(job_id)
        except (EndpointError, JobGone):
            pass  # it is being failed either way; a late result no longer matches
        return record.fail_chunk(
            ctx, chunk, f"lease expired with the job {job.get('status')}", state
        )
    return outcome, state


def _progress_due(ctx: TickContext, chunk: ChunkItem) -> bool:
    """With webhooks a running chunk is asked about only for its progress, every
    `progress_poll_s` (RunPod's /status shows a worker's last progress report)."""
    every = ctx.settings.progress_poll_s
    last = int(chunk.get("progress_at", chunk.get("dispatched_at", 0)))
    return every > 0 and ctx.now - last >= every


def _keep_progress(ctx: TickContext, chunk: ChunkItem, job: dict[str, Any]) -> None:
    """Store what the chunk's worker reported answered so far, so request_counts move while
    it runs. A report of another attempt (a late one) is not this chunk's progress."""
    try:
        progress = ChunkProgress.model_validate(job.get("output"))
    except ValidationError:
        progress = None
    if progress is not None and (progress.chunk_id, progress.attempt) != (
        chunk["chunk_id"],
        chunk["attempts"],
    ):
        progress = None
    stored = (int(chunk.get("progress_completed", 0)), int(chunk.get("progress_failed", 0)))
    try:
        if progress is not None and (progress.completed, progress.failed) != stored:
            chunk_store.save_progress(
                ctx.aws.table,
                chunk,
                completed=min(progress.completed, int(chunk.get("requests", progress.requests))),
                failed=progress.failed,
                now=ctx.now,
            )
        elif ctx.webhooks:
            chunk_store.progress_checked(ctx.aws.table, chunk, now=ctx.now)
    except StateConflict:
        pass  # finished or retried meanwhile: its result or its next attempt counts instead


def record_webhook(
    aws: Aws, *, batch_id: str, chunk_id: str, attempt: int, job: dict[str, Any]
) -> record.Outcome:
    """A RunPod webhook (signature already checked): record it like a poll would."""
    ctx = make_context(aws)
    chunk = chunk_store.get_chunk(aws.table, batch_id=batch_id, chunk_id=chunk_id)
    if chunk is None or int(chunk.get("attempts", 0)) != attempt:
        return "stale"
    before = policy.load(aws.table, ctx.profile)
    try:
        outcome, state = record.record_job(ctx, chunk, job, before)
    except TransactionConflict:
        return "stale"
    policy.save(aws.table, before, state, now=ctx.now)
    return outcome
