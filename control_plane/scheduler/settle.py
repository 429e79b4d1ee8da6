"""The batch handler: one batch at a time, on the events that concern it.

A batch event (its last chunk done, a cancel, the sweep's due look) runs `finalize.settle` for
that batch alone (SQS FIFO, one message group per batch: runs for different batches go side by
side, two for one batch never), then sets when the sweep should look at it next: the stale-split
deadline while it validates, the end of its completion window or the periodic re-check while it
runs, a retry soon while it finalizes or cancels. A re-check that finds chunks waiting tells the
endpoint's dispatcher (the event that should have may have been lost). Nothing here reads
another batch.
"""

from __future__ import annotations

import logging
from typing import Any

from control_plane.clients import queues
from control_plane.messages import RECHECK_S, BatchEvent
from control_plane.scheduler import finalize, isolate
from control_plane.scheduler.context import TickContext
from control_plane.services import routing
from control_plane.split.launch import SPLIT_STALE_S
from control_plane.store import BatchItem
from control_plane.store import batches as batch_store

log = logging.getLogger("control_plane.settle")

# A batch finalizing or cancelling that did not finish is tried again this soon.
RETRY_S = 120


def run(ctx: TickContext, events: list[BatchEvent]) -> dict[str, Any]:
    reasons: dict[str, list[str]] = {}
    for event in events:
        reasons.setdefault(event.batch_id, []).append(event.reason)
    settled: dict[str, str] = {}
    for batch_id, why in reasons.items():
        settled[batch_id] = "error"
        with isolate.step(ctx, "settle", batch_id=batch_id):
            batch = batch_store.get_batch(ctx.aws.table, batch_id)
            if batch is None:
                settled[batch_id] = "gone"
                continue
            ctx.seen.append(batch)
            if batch["status"] in ("finalizing", "cancelling") or "chunks done" in why:
                # A merge or a cancel may outlive this run (a timeout, a kill): the sweep looks
                # again soon, whatever SQS's redelivery does.
                batch_store.set_due(ctx.aws.table, batch_id, due_at=ctx.now + RETRY_S)
            after = finalize.settle(ctx, batch)
            settled[batch_id] = after["status"]
            _next_look(ctx, after, recheck="recheck" in why)
        if settled[batch_id] == "error":
            _retry_soon(ctx, batch_id)
    return {"batches": settled}


def _retry_soon(ctx: TickContext, batch_id: str) -> None:
    """A settle that failed is tried again at the sweep after next (its event is spent)."""
    try:
        batch_store.set_due(ctx.aws.table, batch_id, due_at=ctx.now + RETRY_S)
    except Exception:
        # The periodic re-check set before still stands; the failure is counted on the batch.
        log.exception("retry of a batch not scheduled", extra={"batch_id": batch_id})


def due_at(ctx: TickContext, batch: BatchItem) -> int | None:
    """When the sweep should next look at the batch (None: it is finished)."""
    status = batch["status"]
    if status == "validating":
        since = max(int(batch["created_at"]), int(batch.get("split_restarted_at", 0)))
        return since + SPLIT_STALE_S + 1
    if status == "in_progress":
        return min(int(batch["window_expires_at"]), ctx.now + RECHECK_S)
    if status in ("finalizing", "cancelling"):
        return ctx.now + RETRY_S
    return None


def _next_look(ctx: TickContext, batch: BatchItem, *, recheck: bool) -> None:
    due = due_at(ctx, batch)
    if due is None:
        return
    batch_store.set_due(ctx.aws.table, batch["id"], due_at=due)
    if recheck and batch["status"] == "in_progress":
        waiting = int(batch.get("chunks_open", 0)) - int(batch.get("chunks_in_flight", 0))
        if waiting > 0:
            endpoint_id = str(
                batch.get("runpod_endpoint_id")
                or routing.endpoint_for(ctx.settings, batch.get("model"))
            )
            queues.announce_work(ctx.aws.queues, dict(batch), endpoint_id=endpoint_id, now=ctx.now)
