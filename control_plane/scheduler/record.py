"""Record what a RunPod job did with a chunk: counters, dead letters, retries, bisection.

The same function serves the webhook and the sweep's polling; every outcome is one conditional
transaction on the chunk at the attempt it was dispatched with, so a result that arrives twice
(webhook and poll, or RunPod's webhook retry) counts once. Whoever records an outcome then
`announce`s it: a result event frees the slot at the endpoint's dispatcher (which also folds the
chunk into the window and the throughput averages), and the batch's last open chunk sends the
batch an event that finalizes it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from control_plane import layout
from control_plane.clients import queues
from control_plane.health.sample import GpuReading, WorkerReading
from control_plane.messages import BatchEvent, ResultEvent
from control_plane.models import ChunkRef
from control_plane.observability import count, seconds
from control_plane.scheduler import policy
from control_plane.scheduler.context import TickContext
from control_plane.store import ChunkItem, TransactionConflict, deadletters, throughput
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store import health as health_store
from handler.contract import BatchRequestOutput, BatchResponseData, ChunkSummary, error_body

log = logging.getLogger("control_plane.record")

Outcome = Literal["done", "retry", "split", "dead", "cancelled", "running", "stale", "unreachable"]
TERMINAL_JOB = frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"})
# Outcomes that free a worker's slot: the chunk left RunPod (a cancel or an expiry stopped it).
FREEING = frozenset({"done", "retry", "split", "dead", "cancelled"})
# Above any model's context and output: a request that reports more tokens was not run.
MAX_TOKENS_PER_REQUEST = 10_000_000
# Worker and control-plane clocks differ, and `dispatched_at` is stamped after the /run call.
CLOCK_SLACK_S = 120


@dataclass(frozen=True)
class Recorded:
    """An outcome and what the dispatcher folds in from it."""

    outcome: Outcome
    requeued: int = 0  # chunks pending again because of it (a retry: 1, a bisection: 2)
    seconds: float = 0.0
    requests: int = 0
    tokens: int = 0
    busy_s: float = 0.0


def record_job(ctx: TickContext, chunk: ChunkItem, job: dict[str, Any]) -> Recorded:
    """Apply one RunPod job object (from `/status` or a webhook) to its chunk."""
    status = job.get("status")
    if status not in TERMINAL_JOB:
        return Recorded("running")
    if chunk.get("state") != "dispatched":
        return Recorded("stale")
    if status == "COMPLETED":
        try:
            summary = ChunkSummary.model_validate(job.get("output"))
        except ValidationError:
            return fail_chunk(ctx, chunk, f"unreadable job output: {str(job.get('output'))[:300]}")
        if summary.attempt != chunk["attempts"] or summary.chunk_id != chunk["chunk_id"]:
            return Recorded("stale")
        implausible = implausible_summary(ctx, chunk, summary)
        if implausible is not None:
            log.warning(
                "implausible job output",
                extra={"batch_id": chunk["batch_id"], "chunk_id": chunk["chunk_id"]},
            )
            return fail_chunk(ctx, chunk, f"implausible job output: {implausible}")
        outcome = complete_chunk(ctx, chunk, summary, job=job)
        return Recorded(
            outcome,
            seconds=float(job.get("executionTime", 0)) / 1000 or summary.timings.total_s,
            requests=summary.counts.total,
            tokens=summary.usage.prompt_tokens + summary.usage.completion_tokens,
            busy_s=engine_seconds(summary),
        )
    if status == "CANCELLED" and _stopping(ctx, chunk):
        # We cancelled it: the cancel or the expiry that did finishes the chunk itself (a
        # retry here would race it and send the chunk again).
        return Recorded("stale")
    reason = f"{status}: {str(job.get('error') or '')[:500]}"
    return fail_chunk(ctx, chunk, reason)


def implausible_summary(ctx: TickContext, chunk: ChunkItem, summary: ChunkSummary) -> str | None:
    """What in a worker's summary cannot be true of this chunk (None: nothing).

    The result webhook's signature names the chunk and attempt, not the body: whoever holds the
    URL (RunPod's account, a compromised worker) could send any numbers, and they would land in
    the tenant's counters and in the throughput figures that size every tenant's chunks. So the
    counts must add up to at most the chunk's requests, tokens stay within any model's reach,
    and the seconds within the time since the dispatch."""
    counts, usage, timings = summary.counts, summary.usage, summary.timings
    requests = int(chunk.get("requests", counts.total))
    if counts.completed + counts.failed != counts.total or counts.total > requests:
        return f"counts {counts.model_dump()} for a chunk of {requests} requests"
    if len(summary.failures) > counts.failed:
        return f"{len(summary.failures)} failures listed, {counts.failed} counted"
    tokens = usage.prompt_tokens + usage.completion_tokens
    if usage.cached_tokens > usage.prompt_tokens or tokens > counts.total * MAX_TOKENS_PER_REQUEST:
        return f"usage {usage.model_dump()} for {counts.total} requests"
    elapsed = max(0, ctx.now - int(chunk.get("dispatched_at", ctx.now))) + CLOCK_SLACK_S
    longest = max(timings.engine_s, timings.engine_busy_s, timings.total_s)
    if longest > elapsed:
        return f"{longest:.0f} s of work reported {elapsed} s after the dispatch"
    return None


def _stopping(ctx: TickContext, chunk: ChunkItem) -> bool:
    batch = batch_store.get_batch(ctx.aws.table, chunk["batch_id"])
    return batch is None or batch["status"] != "in_progress" or bool(batch.get("stop_dispatch"))


def announce(ctx: TickContext, chunk: ChunkItem, recorded: Recorded) -> None:
    """Tell the endpoint's dispatcher that the chunk's slot is free, and the batch that its
    last open chunk is done (one strongly consistent read of its counters)."""
    if recorded.outcome not in FREEING:
        return
    endpoint_id = str(chunk.get("runpod_endpoint_id") or ctx.runpod.endpoint_id)
    event = ResultEvent(
        endpoint_id=endpoint_id,
        at=ctx.now,
        batch_id=chunk["batch_id"],
        chunk_id=chunk["chunk_id"],
        attempt=int(chunk["attempts"]),
        tenant_id=str(chunk.get("tenant_id", "")),
        priority=chunk.get("priority", "normal"),
        outcome=recorded.outcome,
        requeued=recorded.requeued,
        seconds=recorded.seconds,
        requests=recorded.requests,
        tokens=recorded.tokens,
        busy_s=recorded.busy_s,
    )
    queues.send_dispatch(ctx.aws.queues, event)
    if recorded.requeued or recorded.outcome == "cancelled":
        return
    batch = batch_store.get_batch(ctx.aws.table, chunk["batch_id"])
    if (
        batch is not None
        and batch["status"] == "in_progress"
        and int(batch.get("chunks_open", 1)) <= 0
    ):
        queues.send_batch(
            ctx.aws.queues,
            BatchEvent(batch_id=chunk["batch_id"], at=ctx.now, reason="chunks done"),
        )


def engine_seconds(summary: ChunkSummary) -> float:
    """The engine time a chunk accounts for: its share of the worker's busy clock, so chunks
    that overlap on one worker (pipelining) are not counted twice in a batch's engine time, its
    cost or the measured throughput. Workers older than the busy clock report only their
    chunk's engine phase."""
    return summary.timings.engine_busy_s or summary.timings.engine_s


def complete_chunk(
    ctx: TickContext, chunk: ChunkItem, summary: ChunkSummary, *, job: dict[str, Any] | None = None
) -> Outcome:
    table = ctx.aws.table
    batch_id, chunk_id, attempt = chunk["batch_id"], chunk["chunk_id"], int(chunk["attempts"])
    # Dead letters first: puts are idempotent, so a crash before the transaction below only
    # means the next delivery writes them again.
    deadletters.put_dead_letters(
        table,
        (
            deadletters.dead_letter_item(
                batch_id,
                custom_id=failure.custom_id,
                chunk_id=chunk_id,
                status_code=failure.status_code,
                code=failure.code,
                type=failure.type,
                message=failure.message,
                attempts=chunk_store.tries(chunk),
                created_at=ctx.now,
            )
            for failure in summary.failures
        ),
    )
    try:
        chunk_store.finish(
            table,
            chunk,
            state="done",
            expect_state="dispatched",
            sets={
                "output_key": layout.output_key(batch_id, chunk_id, attempt),
                "error_key": layout.error_key(batch_id, chunk_id, attempt),
                "completed": summary.counts.completed,
                "failed": summary.counts.failed,
                "finished_at": ctx.now,
                "worker_id": summary.worker.worker_id,
                "engine_s": summary.timings.engine_s,
                "engine_busy_s": summary.timings.engine_busy_s,
                "run_started_at": summary.timings.started_at,
                "run_finished_at": summary.timings.finished_at,
            },
            batch_deltas={
                "n_completed": summary.counts.completed,
                "n_failed": summary.counts.failed,
                "tok_input": summary.usage.prompt_tokens,
                "tok_output": summary.usage.completion_tokens,
                "tok_cached": summary.usage.cached_tokens,
                "engine_s": engine_seconds(summary),
                "chunks_open": -1,
                "chunks_in_flight": -1,
            },
        )
    except TransactionConflict:
        return "stale"
    _measure(ctx, chunk, summary, job or {})
    count("RequestsCompleted", summary.counts.completed)
    count("RequestsFailed", summary.counts.failed)
    count("DeadLetters", len(summary.failures))
    count("InputTokens", summary.usage.prompt_tokens)
    count("OutputTokens", summary.usage.completion_tokens)
    count("CachedTokens", summary.usage.cached_tokens)
    seconds("ChunkEngineSeconds", engine_seconds(summary))
    seconds("ChunkLatencySeconds", ctx.now - int(chunk.get("dispatched_at", ctx.now)))
    log.info(
        "chunk done",
        extra={
            "batch_id": batch_id,
            "chunk_id": chunk_id,
            "attempt": attempt,
            "completed": summary.counts.completed,
            "failed": summary.counts.failed,
            "engine_s": summary.timings.engine_s,
        },
    )
    return "done"


def _measure(
    ctx: TickContext, chunk: ChunkItem, summary: ChunkSummary, job: dict[str, Any]
) -> None:
    """Add the chunk to the endpoint's measured throughput (estimates, first ETAs)."""
    latency = float(max(0, ctx.now - int(chunk.get("dispatched_at", ctx.now))))
    figures: throughput.ChunkFigures = {
        "chunks": 1,
        "requests": summary.counts.completed + summary.counts.failed,
        "bytes": int(chunk.get("bytes", 0)),
        "tok_input": summary.usage.prompt_tokens,
        "tok_output": summary.usage.completion_tokens,
        "tok_cached": summary.usage.cached_tokens,
        "engine_s": engine_seconds(summary),
        "latency_s": latency,
        # RunPod's delayTime: waiting for a worker is not what a chunk costs on a free one.
        "queued_s": min(latency, float(job.get("delayTime") or 0) / 1000),
    }
    worker = summary.worker
    try:
        first, new_in_bucket = throughput.first_chunk_of(
            ctx.aws.table, worker=f"{worker.worker_id}#{worker.hostname}#{worker.pid}", at=ctx.now
        )
        # A chunk that overlapped the worker's first one shared the fresh engine's costs too
        # (workers older than the `started_cold` flag leave only the first one to go by).
        cold = first or summary.timings.started_cold
        throughput.add_chunk(
            ctx.aws.table, at=ctx.now, figures=figures, new_worker=new_in_bucket, cold=cold
        )
    except Exception:
        # The result is recorded already; a lost sample only thins the next estimate's basis.
        log.exception(
            "throughput sample not stored",
            extra={"batch_id": chunk["batch_id"], "chunk_id": chunk["chunk_id"]},
        )
    if summary.gpus:
        _keep_gpu_readings(ctx, chunk, summary)


def _keep_gpu_readings(ctx: TickContext, chunk: ChunkItem, summary: ChunkSummary) -> None:
    """The GPU readings the worker took over the chunk, for the next health sample: `/v1/health`
    rates the GPUs from work, not only from pings sent while nothing waits."""
    reading = WorkerReading(
        worker_id=summary.worker.worker_id,
        status="chunk",
        gpus=[
            GpuReading(
                name=gpu.name,
                utilization_percent=gpu.utilization_percent,
                memory_used_mb=gpu.memory_used_mb,
                memory_total_mb=gpu.memory_total_mb,
                memory_percent=round(100 * gpu.memory_used_mb / gpu.memory_total_mb, 2)
                if gpu.memory_total_mb
                else None,
            )
            for gpu in summary.gpus
        ],
    )
    try:
        health_store.put_work_reading(
            ctx.aws.table,
            reading.model_dump(),
            at=ctx.now,
            chunk=f"{chunk['batch_id']}#{chunk['chunk_id']}",
        )
    except Exception:
        log.exception(
            "GPU readings not stored",
            extra={"batch_id": chunk["batch_id"], "chunk_id": chunk["chunk_id"]},
        )


def fail_chunk(ctx: TickContext, chunk: ChunkItem, reason: str) -> Recorded:
    """A chunk attempt failed on a worker (crash, timeout, lost lease): retry with backoff up
    to the profile's attempts (once for halves of a bisected chunk), then bisect; a single
    request that still fails is a dead letter."""
    attempts = chunk_store.tries(chunk)
    limit = 1 if chunk.get("parent") else ctx.profile.max_attempts
    ids = {
        "batch_id": chunk["batch_id"],
        "chunk_id": chunk["chunk_id"],
        "attempt": chunk["attempts"],
    }
    log.warning("chunk failed", extra={**ids, "reason": reason})
    count("ChunkFailures")
    try:
        if attempts < limit:
            chunk_store.release(
                ctx.aws.table,
                chunk,
                not_before=ctx.now + policy.backoff_s(ctx.profile, attempts),
                reason=reason,
                priority=chunk.get("priority", "normal"),
            )
            return Recorded("retry", requeued=1)
        if int(chunk["requests"]) > 1:
            _bisect(ctx, chunk, reason)
            return Recorded("split", requeued=2)
        _dead(ctx, chunk, reason)
        return Recorded("dead")
    except TransactionConflict:
        return Recorded("stale")


def _bisect(ctx: TickContext, chunk: ChunkItem, reason: str) -> None:
    """Cut the chunk in two new chunks and retire it, in one transaction."""
    aws, table = ctx.aws, ctx.aws.table
    batch_id, bucket = chunk["batch_id"], ctx.settings.bucket_name
    lines = layout.read_lines(aws.s3, bucket, chunk["input_key"])
    half = len(lines) // 2
    first = batch_store.reserve_chunk_numbers(table, batch_id, 2)
    children = []
    for offset, part in ((0, lines[:half]), (1, lines[half:])):
        key = layout.chunk_input_key(batch_id, first + offset)
        size = layout.put_lines(aws.s3, bucket, key, part)
        ref = ChunkRef(
            index=first + offset,
            key=key,
            requests=len(part),
            bytes=size,
            # Exact for a chunk cut from consecutive lines; a chunk of several prefix groups
            # does not record its lines' numbers, and for its second half this is an estimate.
            # Both halves stay in the parent's group, so they dispatch side by side.
            first_line=int(chunk["first_line"]) + offset * half,
            group=chunk.get("group", ""),
            groups=int(chunk.get("groups", 1)),
            group_order=int(chunk.get("group_order", chunk["chunk_id"])),
        )
        children.append(
            chunk_store.chunk_item(
                batch_id,
                chunk.get("priority", "normal"),
                ref,
                tenant_id=str(chunk.get("tenant_id", "")),
                endpoint_id=chunk_store.endpoint_of(chunk, ctx.runpod.endpoint_id),
                created_at=ctx.now,
                parent=chunk["chunk_id"],
            )
        )
    chunk_store.finish(
        table,
        chunk,
        state="split",
        expect_state="dispatched",
        sets={"children": [c["chunk_id"] for c in children], "last_error": reason[:1000]},
        batch_deltas={"chunks_open": 1, "chunks_in_flight": -1},
        new_chunks=children,
    )
    log.warning(
        "chunk bisected",
        extra={"batch_id": batch_id, "chunk_id": chunk["chunk_id"], "children": len(children)},
    )


def _dead(ctx: TickContext, chunk: ChunkItem, reason: str) -> None:
    """The last request of a bisection still fails: a dead letter and an error line."""
    aws, table = ctx.aws, ctx.aws.table
    batch_id, chunk_id = chunk["batch_id"], chunk["chunk_id"]
    bucket = ctx.settings.bucket_name
    request = orjson.loads(layout.read_lines(aws.s3, bucket, chunk["input_key"])[0])
    custom_id = str(request.get("custom_id"))
    message = f"The request failed on a worker {chunk_store.tries(chunk)} time(s): {reason}"
    key = layout.dead_error_key(batch_id, chunk_id)
    layout.put_lines(
        aws.s3,
        bucket,
        key,
        [error_line(custom_id, status=500, code="worker_failure", message=message)],
    )
    letter = deadletters.dead_letter_item(
        batch_id,
        custom_id=custom_id,
        chunk_id=chunk_id,
        status_code=500,
        code="worker_failure",
        type="server_error",
        message=message,
        attempts=chunk_store.tries(chunk),
        created_at=ctx.now,
    )
    chunk_store.finish(
        table,
        chunk,
        state="dead",
        expect_state="dispatched",
        sets={"error_key": key, "failed": 1, "completed": 0, "finished_at": ctx.now},
        batch_deltas={"n_failed": 1, "chunks_open": -1, "chunks_in_flight": -1},
        dead_letters=[letter],
    )
    count("DeadLetters")
    count("RequestsFailed")
    log.error(
        "dead letter", extra={"batch_id": batch_id, "chunk_id": chunk_id, "custom_id": custom_id}
    )


def error_line(custom_id: str, *, status: int, code: str, message: str) -> bytes:
    """An error-file line in the same shape the worker writes for a failed request."""
    body = error_body(message, status=status, param=None)
    body["error"]["code"] = code
    line = BatchRequestOutput(
        id=f"batch_req_{uuid.uuid4().hex}",
        custom_id=custom_id,
        response=BatchResponseData(
            status_code=status, request_id=f"req_{uuid.uuid4().hex}", body=body
        ),
        error=None,
    )
    return line.model_dump_json().encode()
