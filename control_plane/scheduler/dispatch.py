"""Send pending chunks to RunPod, highest priority first, within the in-flight window (never
below what keeps every warm worker's concurrency slots full while the breaker is closed)."""

from __future__ import annotations

import logging

from control_plane import routing
from control_plane.layout import error_key, output_key
from control_plane.models import TERMINAL_STATUSES
from control_plane.observability import count
from control_plane.runpod import EndpointError
from control_plane.scheduler import isolate, policy
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.policy import SchedulerState
from control_plane.store import BatchItem, ChunkItem, TransactionConflict
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store.table import Table
from handler.contract import ProcessChunkInput

log = logging.getLogger("control_plane.dispatch")


def dispatch(ctx: TickContext, state: SchedulerState, *, running: int) -> SchedulerState:
    """Fill the window: claim each chunk (a conditional transaction, so two ticks never send
    one chunk twice), presign its URLs and queue it on RunPod. An endpoint failure stops this
    tick's dispatching and gives the chunk back without spending one of its attempts."""
    floor = policy.worker_floor(state, ctx.settings.worker_concurrency)
    state, allowed = policy.admit(state, ctx.profile, now=ctx.now, floor=floor)
    room = allowed - running if state.breaker == "closed" else allowed
    if room <= 0:
        return state
    table = ctx.aws.table
    batches: dict[str, BatchItem | None] = {}
    for chunk in chunk_store.pending(table, limit=room * 4 + 16):
        if room <= 0:
            break
        if int(chunk.get("not_before", 0)) > ctx.now:
            continue
        sent = False
        with isolate.step(
            ctx, "dispatch", batch_id=chunk["batch_id"], chunk_id=chunk.get("chunk_id")
        ):
            sent, failure = _dispatch_chunk(ctx, chunk, batches)
            if failure is not None:
                return policy.on_endpoint_failure(state, ctx.profile, now=ctx.now)
        if sent:
            state = policy.on_endpoint_success(state)
            room -= 1
    return state


def _dispatch_chunk(
    ctx: TickContext, chunk: ChunkItem, batches: dict[str, BatchItem | None]
) -> tuple[bool, EndpointError | None]:
    """Claim one chunk and queue it on RunPod: (sent, the endpoint's error if it refused)."""
    table = ctx.aws.table
    batch = _batch(table, batches, chunk["batch_id"])
    if batch is None or batch["status"] in TERMINAL_STATUSES:
        _drop(table, chunk)  # left over by a batch that ended: keep the queue clear
        return False, None
    if batch["status"] != "in_progress":
        return False, None  # cancelling or finalizing: the finalizer settles its chunks
    # Before the claim: a model the map no longer routes leaves the chunk pending, and the
    # tick's isolation counts the error on its batch (which fails if it lasts).
    endpoint_id = routing.endpoint_for(ctx.settings, batch.get("model"))
    try:
        claimed = chunk_store.claim(table, chunk, lease_until=ctx.now + ctx.lease_s(), now=ctx.now)
    except TransactionConflict:
        return False, None  # another tick took it, or the batch just stopped
    try:
        job_id = ctx.runpod_for(endpoint_id).run(
            _job_input(ctx, claimed, batch).model_dump(),
            webhook=ctx.webhook_url(claimed["batch_id"], claimed["chunk_id"], claimed["attempts"]),
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
        return False, exc
    except Exception:
        # Not the endpoint's doing (a batch item missing a field, a bug): the chunk goes back
        # unspent and the tick's isolation logs and counts the failure on its batch.
        _give_back(ctx, claimed, batch, "dispatch error")
        raise
    chunk_store.set_job(table, claimed, job_id, endpoint_id=endpoint_id)
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
    return True, None


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


def _job_input(ctx: TickContext, chunk: ChunkItem, batch: BatchItem) -> ProcessChunkInput:
    batch_id, chunk_id, attempt = chunk["batch_id"], chunk["chunk_id"], int(chunk["attempts"])
    return ProcessChunkInput(
        action="process_chunk",
        batch_id=batch_id,
        chunk_id=chunk_id,
        attempt=attempt,
        endpoint=batch["endpoint"],
        input_url=ctx.presign("GET", chunk["input_key"]),
        output_url=ctx.presign("PUT", output_key(batch_id, chunk_id, attempt)),
        error_url=ctx.presign("PUT", error_key(batch_id, chunk_id, attempt)),
    )
