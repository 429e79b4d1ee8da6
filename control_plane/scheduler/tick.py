"""The control plane's moves in one place: a context for them, the sweep followed by every event
it and earlier moves queued (`run_tick`: how the local stack's manual tick and the tests move
everything at once), and the webhook's recording.

In AWS these are separate functions on their own triggers (template.yaml): the sweep on
EventBridge Scheduler every minute, the dispatcher on the dispatch queue (one run per endpoint
at a time), the batch handler on the batch queue (one run per batch at a time), the webhook in
the API. Locally the stack runs the sweep on a timer and drains the queues on threads.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from control_plane.clients import queues, secrets
from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.scheduler import dispatch, isolate, policy, record, settle, sweep
from control_plane.scheduler.context import NoRunPod, TickContext
from control_plane.store import TransactionConflict
from control_plane.store import chunks as chunk_store

log = logging.getLogger("control_plane.tick")

# Rounds of draining in one `run_tick`: each handles what the previous one queued.
DRAIN_ROUNDS = 50


def make_context(aws: Aws, *, now: int | None = None) -> TickContext:
    """The context of the sweep, the dispatcher and the batch handler: a RunPod client with
    the API key (read from its secret)."""
    settings = aws.settings
    return _context(
        aws,
        RunPodClient(
            base_url=settings.runpod_base_url,
            endpoint_id=settings.runpod_endpoint_id,
            api_key=secrets.runpod_api_key(settings),
            rest_url=settings.runpod_rest_url,
        ),
        now=now,
    )


def webhook_context(aws: Aws, *, now: int | None = None) -> TickContext:
    """The context of the API's webhook path, which records results and never calls RunPod:
    it neither reads the RunPod API key nor holds a client that could use it (the API function
    is not granted the key's secret, template.yaml)."""
    no_runpod = NoRunPod(base_url="", endpoint_id=aws.settings.runpod_endpoint_id, api_key="")
    return _context(aws, no_runpod, now=now)


def _context(aws: Aws, runpod: RunPodClient, *, now: int | None) -> TickContext:
    settings = aws.settings
    return TickContext(
        aws=aws,
        runpod=runpod,
        now=int(time.time()) if now is None else now,
        webhook_secret=secrets.webhook_secret(settings) if settings.public_url else "",
        profile=policy.PROFILES[settings.dispatch_profile],
    )


def run_tick(ctx: TickContext, *, kicked: bool = False) -> dict[str, Any]:
    """The sweep (keep-hot only when not `kicked`), then every queued event handled; what
    failed on a batch anywhere in it counts once (`isolate`)."""
    report = sweep.run_sweep(ctx, keep_hot=not kicked)
    report["drained"] = drain(ctx)
    report["failures"] = finish(ctx)
    return report


def finish(ctx: TickContext) -> dict[str, int]:
    """The end of a run (a sweep, a queue delivery, a `run_tick`): count what failed on each
    batch once, fail the ones stuck for too long, reset the ones that went through."""
    return isolate.close(ctx, ctx.seen)


def drain(
    ctx: TickContext,
    *,
    rounds: int = DRAIN_ROUNDS,
    only: tuple[str, ...] = (queues.DISPATCH, queues.BATCHES),
) -> dict[str, int]:
    """Handle the queued dispatch and batch events (of the queues in `only`) until they are
    empty."""
    handled = {"dispatch": 0, "batches": 0}
    for _ in range(rounds):
        moved = 0
        for which in only:
            messages = queues.receive(ctx.aws.queues, which)
            if not messages:
                continue
            handle(ctx, which, [body for _, body in messages])
            queues.delete(ctx.aws.queues, which, [receipt for receipt, _ in messages])
            handled["dispatch" if which == queues.DISPATCH else "batches"] += len(messages)
            moved += len(messages)
        if not moved:
            break
    return handled


def handle(ctx: TickContext, which: str, bodies: list[str]) -> dict[str, Any]:
    """One delivery of queued events to its handler (what a Lambda event-source mapping does:
    the caller `finish`es the run)."""
    if which == queues.DISPATCH:
        return dispatch.run(ctx, [queues.parse_dispatch(body) for body in bodies])
    return settle.run(ctx, [queues.parse_batch(body) for body in bodies])


def record_webhook(
    aws: Aws, *, batch_id: str, chunk_id: str, attempt: int, job: dict[str, Any]
) -> record.Outcome:
    """A RunPod webhook (signature already checked): record it as a poll would, then tell the
    endpoint's dispatcher (and the batch, if it was its last chunk)."""
    ctx = webhook_context(aws)
    for _ in range(3):
        chunk = chunk_store.get_chunk(aws.table, batch_id=batch_id, chunk_id=chunk_id)
        if chunk is None or int(chunk.get("attempts", 0)) != attempt:
            return "stale"
        try:
            recorded = record.record_job(ctx, chunk, job)
        except TransactionConflict:
            continue  # a progress report moved the chunk between the read and the write
        if recorded.outcome == "stale" and chunk.get("state") == "dispatched":
            continue  # the same: read it again
        record.announce(ctx, chunk, recorded)
        return recorded.outcome
    return "stale"
