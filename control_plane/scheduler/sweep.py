"""The scheduled sweep (the tick function, every minute): the safety nets and the clockwork.

One sweep runs at a time (a lease item; a sweep that finds it held skips). Each does a bounded
amount of work, whatever the fleet, the tenants or the batches:
- per RunPod endpoint: asks RunPod about the dispatched chunks whose check is overdue (with
  webhooks, only chunks whose result never came: `result_check_s` after dispatch, at most
  OVERDUE_PER_SHARD per shard), and sends the endpoint's dispatcher a top-up, with its
  workersMax when it is time to re-read it;
- the unfinished batches whose look is due (`BATCHES#due`: a stale split, a window's end, the
  periodic re-check) get a batch event, DUE_PER_SWEEP at most, the most overdue first;
- keep-hot and its health sample, event webhooks, file checks and file expiry, as before.
Everything else happens on events: a result, a split, a cancel reaches the one dispatcher or
the one batch it concerns (`dispatch.py`, `settle.py`).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from pydantic import ValidationError

from control_plane.clients import queues
from control_plane.clients.runpod import EndpointError, JobGone
from control_plane.errors import StateConflict
from control_plane.messages import RECHECK_S, BatchEvent, TopUpEvent
from control_plane.scheduler import isolate, keephot, policy, record, upkeep
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.dispatch import DISPATCH_GRACE_S, WORKERS_MAX_EVERY_S
from control_plane.services import routing
from control_plane.store import ChunkItem, TransactionConflict, lease
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from handler.contract import ChunkProgress

log = logging.getLogger("control_plane.tick")

LEASE_S = 240  # under the tick function's 300 s timeout: a killed sweep frees it soon
OVERDUE_PER_SHARD = 32
DUE_PER_SWEEP = 200


def run_sweep(ctx: TickContext, *, keep_hot: bool = True) -> dict[str, Any]:
    token = _take_lease(ctx)
    if token is None:
        return {"skipped": "another sweep holds the lease"}
    try:
        report: dict[str, Any] = {"endpoints": {}}
        for endpoint_id in routing.endpoint_ids(ctx.settings):
            with isolate.step(ctx, "sweep endpoint", batch_id=None):
                report["endpoints"][endpoint_id] = sweep_endpoint(ctx, endpoint_id)
        report["batches_due"] = due_batches(ctx)
        if keep_hot:
            state = policy.load(ctx.aws.table, ctx.profile, ctx.runpod.endpoint_id)
            with isolate.step(ctx, "keep hot", batch_id=None):
                report["keep_hot"] = keephot.keep_hot(ctx, state)
        with isolate.step(ctx, "upkeep", batch_id=None):
            report["upkeep"] = upkeep.run(ctx)
    finally:
        _release_lease(ctx, token)
    log.info("sweep", extra=report)
    return report


def _take_lease(ctx: TickContext) -> str | None:
    token = secrets.token_hex(8)
    return token if lease.take(ctx.aws.table, token=token, now=ctx.now, hold_s=LEASE_S) else None


def _release_lease(ctx: TickContext, token: str) -> None:
    lease.release(ctx.aws.table, token=token)


def sweep_endpoint(ctx: TickContext, endpoint_id: str) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    overdue = chunk_store.overdue(
        ctx.aws.table, endpoint_id=endpoint_id, now=ctx.now, limit=OVERDUE_PER_SHARD
    )
    for chunk in overdue:
        outcome = "error"
        with isolate.step(ctx, "check", batch_id=chunk["batch_id"], chunk_id=chunk["chunk_id"]):
            outcome = check_chunk(ctx, chunk)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "unreachable":
            break  # the endpoint is down: the next sweep asks again
    state = policy.load(ctx.aws.table, ctx.profile, endpoint_id)
    workers_max = None
    if ctx.now - state.workers_max_at >= WORKERS_MAX_EVERY_S:
        workers_max = ctx.runpod_for(endpoint_id).workers_max() or ctx.settings.workers_max
    queues.send_dispatch(
        ctx.aws.queues,
        TopUpEvent(endpoint_id=endpoint_id, at=ctx.now, workers_max=workers_max or None),
    )
    return {"checked": outcomes, "workers_max": workers_max}


def check_chunk(ctx: TickContext, chunk: ChunkItem) -> str:
    """Ask RunPod about a dispatched chunk whose check came due: record a result that never
    arrived by webhook, fail a chunk whose lease ran out, or check again later."""
    lease_over = ctx.now >= int(chunk.get("lease_until", 0))
    job_id = chunk.get("job_id")
    runpod = ctx.runpod_for(chunk.get("runpod_endpoint_id"))
    if not job_id:
        if ctx.now - int(chunk.get("dispatched_at", 0)) < DISPATCH_GRACE_S:
            _later(ctx, chunk, ctx.now + DISPATCH_GRACE_S)
            return "running"
        # Its dispatcher died before recording the job id: the attempt counts, its keys are spent.
        return _fail(ctx, chunk, "dispatch did not finish")
    try:
        job = runpod.status(job_id)
    except JobGone:
        return _fail(ctx, chunk, f"RunPod no longer knows job {job_id}")
    except EndpointError as exc:
        log.warning("status poll failed", extra={"job_id": job_id, "error": str(exc)})
        return "unreachable"
    recorded = record.record_job(ctx, chunk, job)
    if recorded.outcome != "running":
        record.announce(ctx, chunk, recorded)
        return recorded.outcome
    if lease_over:
        try:
            runpod.cancel(job_id)
        except (EndpointError, JobGone):
            pass  # it is being failed either way; a late result no longer matches
        return _fail(ctx, chunk, f"lease expired with the job {job.get('status')}")
    _keep_progress(ctx, chunk, job)
    again = ctx.check_after_s(webhook=chunk.get("webhook"))
    _later(ctx, chunk, min(int(chunk["lease_until"]), ctx.now + again))
    return "running"


def _fail(ctx: TickContext, chunk: ChunkItem, reason: str) -> str:
    recorded = record.fail_chunk(ctx, chunk, reason)
    record.announce(ctx, chunk, recorded)
    return recorded.outcome


def _later(ctx: TickContext, chunk: ChunkItem, when: int) -> None:
    try:
        chunk_store.check_later(ctx.aws.table, chunk, check_at=when)
    except StateConflict:
        pass  # recorded meanwhile


def _keep_progress(ctx: TickContext, chunk: ChunkItem, job: dict[str, Any]) -> None:
    """RunPod's /status shows the worker's last `progress_update`: keep it (the polling path;
    with a progress URL the worker posts it to the API itself)."""
    try:
        progress = ChunkProgress.model_validate(job.get("output"))
    except ValidationError:
        return
    if (progress.chunk_id, progress.attempt) != (chunk["chunk_id"], chunk["attempts"]):
        return  # another attempt's report
    stored = (int(chunk.get("progress_completed", 0)), int(chunk.get("progress_failed", 0)))
    completed = min(progress.completed, int(chunk.get("requests", progress.requests)))
    if (completed, progress.failed) == stored:
        return
    try:
        chunk_store.save_progress(
            ctx.aws.table, chunk, completed=completed, failed=progress.failed, now=ctx.now
        )
    except (StateConflict, TransactionConflict):
        pass  # finished or reported meanwhile: that count stands


def due_batches(ctx: TickContext) -> int:
    """Send each batch whose look is due an event, and push its next look out (the batch
    handler sets the right one when it runs)."""
    table = ctx.aws.table
    due = batch_store.due_batch_ids(table, now=ctx.now, limit=DUE_PER_SWEEP)
    for batch_id in due:
        queues.send_batch(
            ctx.aws.queues, BatchEvent(batch_id=batch_id, at=ctx.now, reason="recheck")
        )
        batch_store.set_due(table, batch_id, due_at=ctx.now + RECHECK_S)
    return len(due)
