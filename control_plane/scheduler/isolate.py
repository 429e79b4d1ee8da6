"""Failure isolation for the tick: whatever goes wrong with one batch or one chunk (an item that
cannot be read, an S3 object that has gone, a bug) is logged with its ids and skipped, and every
other batch keeps moving.

Each failure is counted on its batch item (`tick_failures`, one per tick however many steps
failed on it); a tick that goes through the batch cleanly resets the count. A batch that has
failed FAIL_AFTER_TICKS ticks in a row over at least FAIL_AFTER_S is failed with an `errors`
entry that says so, and its open chunks are stopped: it never waits silently. The span keeps a
transient outage (S3, a RunPod incident) from failing a batch that one good tick would finish:
the AWS tick runs every minute, the local one every second.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from control_plane.observability import count
from control_plane.scheduler import finalize
from control_plane.scheduler.context import TickContext
from control_plane.store import BatchItem
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store

log = logging.getLogger("control_plane.tick")

FAIL_AFTER_TICKS = 10
FAIL_AFTER_S = 15 * 60


@contextmanager
def step(
    ctx: TickContext, what: str, *, batch_id: str | None, chunk_id: str | None = None
) -> Iterator[None]:
    """Run one step of the tick for one batch (or chunk). An exception is logged with the ids,
    noted against the batch, and swallowed: the tick goes on with the next batch."""
    try:
        yield
    except Exception as exc:
        # Swallowed on purpose: one batch's failure must not stop the others' work; the count
        # on its item fails it if this keeps happening.
        reason = f"{what}: {type(exc).__name__}: {exc}"[:1000]
        log.exception(
            "tick step failed; skipped until the next tick",
            extra={"step": what, "batch_id": batch_id, "chunk_id": chunk_id, "error": reason},
        )
        count("TickStepFailures")
        if batch_id:
            ctx.failures.setdefault(batch_id, reason)


def close(ctx: TickContext, seen: list[BatchItem]) -> dict[str, int]:
    """After the tick's steps: count each failing batch's failure, fail those stuck for too
    long, and reset the count of `seen` batches that went through cleanly."""
    table = ctx.aws.table
    failed = 0
    for batch_id, reason in ctx.failures.items():
        with step(ctx, "count failures", batch_id=None):
            counters = batch_store.note_tick_failure(table, batch_id, reason=reason, at=ctx.now)
            if counters is not None and _stuck(ctx, counters):
                failed += fail_batch(ctx, batch_id, counters, reason)
    cleared = 0
    for batch in seen:
        if batch.get("tick_failures") and batch["id"] not in ctx.failures:
            with step(ctx, "reset failures", batch_id=None):
                batch_store.clear_tick_failures(table, batch["id"])
                cleared += 1
    return {"failing": len(ctx.failures), "failed": failed, "recovered": cleared}


def _stuck(ctx: TickContext, counters: BatchItem) -> bool:
    ticks = int(counters.get("tick_failures", 0))
    since = int(counters.get("tick_failing_since", ctx.now))
    return ticks >= FAIL_AFTER_TICKS and ctx.now - since >= FAIL_AFTER_S


def fail_batch(ctx: TickContext, batch_id: str, counters: BatchItem, reason: str) -> int:
    """Fail a batch the tick could not move on, then stop its open chunks (a RunPod job still
    running is cancelled; what finished stays in S3)."""
    ticks = int(counters.get("tick_failures", 0))
    minutes = max(1, (ctx.now - int(counters.get("tick_failing_since", ctx.now))) // 60)
    message = (
        f"hotbatch could not move this batch on for {ticks} ticks in a row over {minutes} "
        f"minutes and failed it rather than leave it waiting. Last error: {reason[:400]}"
    )
    if batch_store.fail_unprocessable(ctx.aws.table, batch_id, message=message, at=ctx.now) is None:
        return 0
    log.error("batch failed: the tick could not move it on", extra={"batch_id": batch_id})
    count("BatchesUnprocessable")
    for chunk in chunk_store.list_chunks(ctx.aws.table, batch_id=batch_id):
        if chunk["state"] in ("pending", "dispatched"):
            with step(ctx, "stop chunk", batch_id=None, chunk_id=chunk["chunk_id"]):
                finalize.stop_chunk(ctx, chunk, to="cancelled")
    return 1
