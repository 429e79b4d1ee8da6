"""The split job: validate a batch's input file and turn it into chunk objects and items.

Runs asynchronously after `POST /v1/batches` (a Lambda async invocation in AWS, a background
thread locally). Safe to run twice for one batch, which Lambda does when it retries an async
invocation: chunk objects and items are keyed by batch and position and written whole, and
only the run whose conditional `validating → in_progress` wins moves the batch on.
"""

from __future__ import annotations

import functools
import logging

from control_plane.clients import queues
from control_plane.clients.aws import Aws
from control_plane.errors import LimitExceeded, NotFound, StateConflict
from control_plane.ids import now_s
from control_plane.messages import RECHECK_S
from control_plane.services import routing
from control_plane.settings import Settings
from control_plane.split.stream import SplitError, SplitLimits, SplitResult, split_s3_object
from control_plane.store import BatchItem
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store import files as file_store

log = logging.getLogger("control_plane.split")


def run_split(aws: Aws, batch_id: str) -> BatchItem:
    """Split `batch_id` if it is still validating; return the batch item as it ends up."""
    item = batch_store.get_batch_item(aws.table, batch_id=batch_id, tenant_id=None)
    if item["status"] == "cancelling" and not item.get("in_progress_at"):
        return _cancel_before_start(aws, item)
    if item["status"] != "validating":
        log.info("split skipped", extra={"batch_id": batch_id, "status": item["status"]})
        return item
    try:
        file = file_store.get_file_item(
            aws.table, file_id=item["input_file_id"], tenant_id=item["tenant_id"]
        )
    except NotFound:
        return _fail(aws, item, [_file_gone(item["input_file_id"])])
    result = split_s3_object(
        aws.s3,
        bucket=aws.settings.bucket_name,
        key=file["s3_key"],
        batch_id=batch_id,
        endpoint=item["endpoint"],
        limits=SplitLimits(
            max_requests=aws.settings.max_requests_per_batch,
            chunk_max_requests=item.get("chunk_requests") or aws.settings.chunk_max_requests,
            chunk_max_bytes=aws.settings.chunk_max_bytes,
            group_by_prefix=aws.settings.split_group_by_prefix,
            group_buffer_bytes=aws.settings.split_group_buffer_bytes,
        ),
        check_model=functools.partial(_check_model, aws.settings, endpoint=item["endpoint"]),
    )
    log.info(
        "split done",
        extra={
            "batch_id": batch_id,
            "requests": result.total_requests,
            "chunks": len(result.chunks),
            "errors": result.error_count,
        },
    )
    if not result.ok:
        return _fail(aws, item, result.errors)
    return _start(aws, item, result)


def _start(aws: Aws, item: BatchItem, result: SplitResult) -> BatchItem:
    now = now_s()
    endpoint_id = routing.endpoint_for(aws.settings, result.model)
    chunk_store.put_chunks(
        aws.table,
        batch_id=item["id"],
        tenant_id=item["tenant_id"],
        endpoint_id=endpoint_id,
        priority=item.get("priority", "normal"),
        chunks=result.chunks,
        created_at=now,
    )
    sets: dict[str, object] = {
        "n_total": result.total_requests,
        "chunk_count": len(result.chunks),
        # Chunks not yet in a final state; bisect and redrive add to it, results take away.
        "chunks_open": len(result.chunks),
        # The next free chunk number (bisect and redrive make new chunks).
        "chunk_seq": len(result.chunks),
        "runpod_endpoint_id": endpoint_id,
    }
    if result.model:
        sets["model"] = result.model
    try:
        started = batch_store.transition(
            aws.table,
            item,
            expect={"validating"},
            to="in_progress",
            at=now,
            sets=sets,
            queued=result.total_requests,
            limits=aws.limits,
            due_at=min(int(item["window_expires_at"]), now + RECHECK_S),
        )
        # The endpoint's dispatcher enrolls the tenant and sends the first chunks now.
        queues.announce_work(aws.queues, dict(started), endpoint_id=endpoint_id, now=now)
        return started
    except LimitExceeded as exc:
        error = SplitError(code="request_limit_exceeded", line=None, message=exc.message)
        return _fail(aws, item, [error])
    except StateConflict as exc:
        current = exc.item or item
        if current["status"] == "cancelling" and not current.get("in_progress_at"):
            return _cancel_before_start(aws, current)
        return current  # another run of this split won


def _check_model(settings: Settings, model: object, *, endpoint: str) -> tuple[str, str] | None:
    return routing.check_line(settings, model=model, endpoint=endpoint)


def fail_unsplit(aws: Aws, item: BatchItem, *, reason: str) -> BatchItem:
    """Give up on a split that keeps dying (or outlived the batch's window): the batch fails
    with a clear error instead of staying `validating` and holding the tenant's slot."""
    log.error("split given up", extra={"batch_id": item["id"], "reason": reason})
    error = SplitError(
        code="validation_failed",
        line=None,
        message=f"The input file could not be validated: {reason}. Nothing was run.",
        param="input_file_id",
    )
    return _fail(aws, item, [error])


def _fail(aws: Aws, item: BatchItem, errors: list[SplitError]) -> BatchItem:
    try:
        return batch_store.transition(
            aws.table,
            item,
            expect={"validating", "cancelling"},
            to="failed",
            at=now_s(),
            sets={"errors": [e.model_dump() for e in errors]},
        )
    except StateConflict as exc:
        return exc.item or item


def _cancel_before_start(aws: Aws, item: BatchItem) -> BatchItem:
    """Cancelled while validating: nothing was dispatched, so the cancel completes here."""
    try:
        return batch_store.transition(
            aws.table, item, expect={"cancelling"}, to="cancelled", at=now_s()
        )
    except StateConflict as exc:
        return exc.item or item


def _file_gone(file_id: str) -> SplitError:
    return SplitError(
        code="invalid_input_file",
        line=None,
        message=f"The input file {file_id} was deleted before the batch was validated.",
        param="input_file_id",
    )
