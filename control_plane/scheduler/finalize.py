"""Finish batches: merge results when every chunk is done, settle cancels, expire late batches,
and restart a split that never finished.

Each step runs for one batch in the batch handler (`scheduler/settle.py`) and is re-entrant: a
run killed halfway leaves the batch in `finalizing` / `cancelling` (or `in_progress` with
`stop_dispatch` set for an expiry), SQS delivers its event again and the step is redone;
merged files get ids derived from the batch id, so a redo writes the same files once.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Literal

import orjson

from control_plane import layout
from control_plane.clients.runpod import EndpointError, JobGone
from control_plane.errors import StateConflict
from control_plane.models import FileObject
from control_plane.scheduler import merge, record
from control_plane.scheduler.context import TickContext
from control_plane.split.job import fail_unsplit, run_split
from control_plane.split.launch import SPLIT_STALE_S, start_split
from control_plane.store import (
    BatchCounters,
    BatchItem,
    ChunkFields,
    ChunkItem,
    TransactionConflict,
)
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store import files as file_store

log = logging.getLogger("control_plane.finalize")

LEAF_RESULT_STATES = frozenset({"done", "dead", "expired"})
# Split runs after the first (whose Lambda already retried it twice) before the batch fails.
MAX_SPLIT_RESTARTS = 2


def settle(ctx: TickContext, batch: BatchItem) -> BatchItem:
    """Move one unfinished batch on as far as it can go this tick."""
    status = batch["status"]
    if status == "validating" and _split_stale(ctx, batch):
        return _restart_split(ctx, batch)
    if status == "in_progress":
        if ctx.now >= int(batch["window_expires_at"]) or batch.get("stop_dispatch"):
            return expire(ctx, batch)
        if "chunks_open" in batch and int(batch["chunks_open"]) <= 0:
            batch = _transition(ctx, batch, {"in_progress"}, "finalizing")
    if batch["status"] == "finalizing":
        return _close(ctx, batch, expect={"finalizing"}, to="completed")
    if batch["status"] == "cancelling":
        return cancel(ctx, batch)
    return batch


def _split_stale(ctx: TickContext, batch: BatchItem) -> bool:
    since = max(int(batch["created_at"]), int(batch.get("split_restarted_at", 0)))
    return ctx.now - since > SPLIT_STALE_S


def _restart_split(ctx: TickContext, batch: BatchItem) -> BatchItem:
    """A split that died (its Lambda retries spent, or a local process gone): start it again,
    at most once per SPLIT_STALE_S and MAX_SPLIT_RESTARTS times, and never past the batch's
    window: a file that crashes every split (a bug, or a line built to find one) must fail
    its batch, not rerun a 15-minute split every 20 minutes for ever. In AWS it runs in the
    split function, not in the tick."""
    restarts = int(batch.get("split_restarts", 0))
    if restarts >= MAX_SPLIT_RESTARTS:
        return fail_unsplit(
            ctx.aws, batch, reason=f"the split failed {restarts + 1} times; see the logs"
        )
    if ctx.now >= int(batch["window_expires_at"]):
        return fail_unsplit(ctx.aws, batch, reason="the completion window ended first")
    log.warning("restarting a stale split", extra={"batch_id": batch["id"]})
    try:
        batch = batch_store.mark_split_restarted(ctx.aws.table, batch["id"], at=ctx.now)
    except StateConflict as exc:
        return exc.item or batch
    if ctx.settings.split_mode == "lambda":
        start_split(ctx.aws, batch["id"], background=_unused)
        return batch
    return run_split(ctx.aws, batch["id"])


def _unused(*_: object) -> None:
    raise AssertionError("lambda mode never runs the split in the background")


def cancel(ctx: TickContext, batch: BatchItem) -> BatchItem:
    """Cancel the RunPod jobs of running chunks, drop pending ones, keep what finished."""
    for chunk in chunk_store.list_chunks(ctx.aws.table, batch_id=batch["id"]):
        stop_chunk(ctx, chunk, to="cancelled")
    return _close(ctx, batch, expect={"cancelling"}, to="cancelled")


def expire(ctx: TickContext, batch: BatchItem) -> BatchItem:
    """Past the completion window: stop dispatching, write every unfinished request to the
    error file with code `batch_expired`, keep what finished."""
    if not batch.get("stop_dispatch"):
        batch = batch_store.stop_dispatch(ctx.aws.table, batch["id"])
    for chunk in chunk_store.list_chunks(ctx.aws.table, batch_id=batch["id"]):
        stop_chunk(ctx, chunk, to="expired")
    return _close(ctx, batch, expect={"in_progress"}, to="expired")


def stop_chunk(ctx: TickContext, chunk: ChunkItem, *, to: str) -> None:
    state = chunk["state"]
    if state not in ("pending", "dispatched"):
        return
    if state == "dispatched" and chunk.get("job_id"):
        if _recorded_if_finished(ctx, chunk):
            return  # finished before the stop: its results are kept, like any other
        try:
            ctx.runpod_for(chunk.get("runpod_endpoint_id")).cancel(chunk["job_id"])
        except (EndpointError, JobGone) as exc:
            # The job may have finished or gone; its late result fails the chunk's condition.
            log.info("cancel of a job failed", extra={"job_id": chunk["job_id"], "error": str(exc)})
        _freed(ctx, chunk)
    sets: ChunkFields = {"finished_at": ctx.now}
    deltas: BatchCounters = {"chunks_open": -1}
    if state == "dispatched":
        deltas["chunks_in_flight"] = -1
    if to == "expired":
        requests = int(chunk.get("requests", 0))
        sets.update({"error_key": _write_expired_lines(ctx, chunk), "failed": requests})
        sets["completed"] = 0
        deltas["n_failed"] = requests
    try:
        chunk_store.finish(
            ctx.aws.table, chunk, state=to, expect_state=state, sets=sets, batch_deltas=deltas
        )
    except TransactionConflict:
        log.info("chunk moved while stopping", extra={"chunk_id": chunk["chunk_id"]})


def _freed(ctx: TickContext, chunk: ChunkItem) -> None:
    """A cancelled job's slot is free: its endpoint's dispatcher counts one fewer in flight."""
    record.announce(ctx, chunk, record.Recorded("cancelled"))


def _recorded_if_finished(ctx: TickContext, chunk: ChunkItem) -> bool:
    """A job that completed while its webhook is still on the way is recorded, not dropped."""
    try:
        job = ctx.runpod_for(chunk.get("runpod_endpoint_id")).status(chunk["job_id"])
    except (EndpointError, JobGone):
        return False
    if job.get("status") != "COMPLETED":
        return False
    recorded = record.record_job(ctx, chunk, job)
    record.announce(ctx, chunk, recorded)
    return recorded.outcome in ("done", "stale")


def _write_expired_lines(ctx: TickContext, chunk: ChunkItem) -> str:
    s3, bucket = ctx.aws.s3, ctx.settings.bucket_name
    message = "This request was not completed within the batch's completion window."
    lines = [
        record.error_line(
            str(orjson.loads(raw)["custom_id"]), status=408, code="batch_expired", message=message
        )
        for raw in layout.read_lines(s3, bucket, chunk["input_key"])
    ]
    key = layout.expired_error_key(chunk["batch_id"], chunk["chunk_id"])
    layout.put_lines(s3, bucket, key, lines)
    return key


def _close(ctx: TickContext, batch: BatchItem, *, expect: set[str], to: str) -> BatchItem:
    """Merge the finished chunks' results into the batch's output and error files and end it,
    once no chunk is in flight."""
    batch = batch_store.get_batch(ctx.aws.table, batch["id"]) or batch
    if batch["status"] not in expect or int(batch.get("chunks_in_flight", 0)) > 0:
        return batch
    chunks = chunk_store.list_chunks(ctx.aws.table, batch_id=batch["id"])
    if to == "completed" and any(c["state"] in ("pending", "dispatched") for c in chunks):
        return batch  # a redrive added work after the last count
    leaves = [c for c in chunks if c["state"] in LEAF_RESULT_STATES]
    # Set both, None included: after a redrive the previous generation's files must not stay.
    outputs = [key for c in leaves if _has_lines(c, "completed") and (key := c.get("output_key"))]
    errors = [key for c in leaves if _has_lines(c, "failed") and (key := c.get("error_key"))]
    sets: dict[str, object] = {
        "output_file_id": _merged_file(ctx, batch, "output", outputs),
        "error_file_id": _merged_file(ctx, batch, "error", errors),
    }
    done = _transition(ctx, batch, expect, to, sets=sets)
    log.info(
        "batch closed",
        extra={
            "batch_id": batch["id"],
            "status": done["status"],
            "completed": done.get("n_completed", 0),
            "failed": done.get("n_failed", 0),
        },
    )
    return done


def _has_lines(chunk: ChunkItem, count: Literal["completed", "failed"]) -> bool:
    """Whether a finished chunk's result object may hold lines: its count (`completed` for the
    output, `failed` for the errors) is the number of lines it holds (the worker writes one per
    request it counts; a redrive takes lines and count away together), so an object counted
    empty is not even asked for its size. A chunk without the count is asked."""
    return chunk.get(count, 1) > 0


def _merged_file(ctx: TickContext, batch: BatchItem, kind: str, keys: list[str]) -> str | None:
    s3, bucket = ctx.aws.s3, ctx.settings.bucket_name
    file_id = merged_file_id(batch["id"], kind, generation=int(batch.get("redrives", 0)))
    if file_store.get_file(ctx.aws.table, file_id) is not None:
        return file_id  # an earlier run of this step got this far
    size = merge.concatenate(s3, bucket, merge.sizes(s3, bucket, keys), layout.file_key(file_id))
    if not size:
        return None
    expires_after = batch.get("output_expires_after_s")
    file = FileObject(
        id=file_id,
        bytes=size,
        created_at=ctx.now,
        expires_at=ctx.now + int(expires_after) if expires_after else None,
        filename=f"{batch['id']}_{kind}.jsonl",
        purpose="batch_output",
    )
    try:
        file_store.put_file(ctx.aws.table, tenant_id=batch["tenant_id"], file=file, line_count=None)
    except StateConflict:
        pass  # written by a concurrent run of this step: same id, same content
    return file_id


def merged_file_id(batch_id: str, kind: str, *, generation: int = 0) -> str:
    """Stable per batch, kind and redrive generation, and time-ordered like every other id
    (the batch's stamp)."""
    stamp = batch_id.removeprefix("batch_")[:12]
    digest = hashlib.sha256(f"{batch_id}:{kind}:{generation}".encode()).hexdigest()[:12]
    return f"file-{stamp}{digest}"


def _transition(
    ctx: TickContext,
    batch: BatchItem,
    expect: set[str],
    to: str,
    *,
    sets: dict[str, object] | None = None,
) -> BatchItem:
    try:
        return batch_store.transition(
            ctx.aws.table, batch, expect=expect, to=to, at=ctx.now, sets=sets
        )
    except StateConflict as exc:
        return exc.item or batch
