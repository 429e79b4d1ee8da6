"""Batches: admission (limits, endpoint health) and the split started, lookup, listing, cancel,
and the dead letters of a batch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from control_plane.clients import queues
from control_plane.clients.aws import Aws
from control_plane.clients.kick import Kick, no_kick
from control_plane.errors import (
    Conflict,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    StateConflict,
    Unavailable,
)
from control_plane.ids import new_id, now_s
from control_plane.messages import BatchEvent
from control_plane.metering import sizing
from control_plane.metering.figures import Figures
from control_plane.models import TERMINAL_STATUSES, Batch, CreateBatchBody, CursorPage, DeadLetter
from control_plane.split.launch import SPLIT_STALE_S, start_split
from control_plane.store import Item, deadletters
from control_plane.store import batches as batch_store
from control_plane.store import endpoint as endpoint_store
from control_plane.store import files as file_store
from control_plane.store import health as health_store

log = logging.getLogger("control_plane.services.batches")

WINDOW_S = {"24h": 24 * 3600}
CANCELLABLE = {"validating", "in_progress", "finalizing"}


def submit_batch(
    aws: Aws,
    *,
    tenant_id: str,
    body: CreateBatchBody,
    background: Callable[..., Any],
    kick: Kick = no_kick,
) -> Batch:
    """`POST /v1/batches`: admit the batch, then start its split without waiting for it (the
    split tells the endpoint's dispatcher when the chunks exist). An inline split (local stack)
    is followed by a `kick`, which wakes the local queue consumers at once."""
    batch = create_batch(aws, tenant_id=tenant_id, body=body)
    start_split(aws, batch.id, background=background)
    if aws.settings.split_mode == "inline":
        background(kick, f"split {batch.id}")  # background tasks run in order: after the split
    return Figures(aws)(batch)


def create_batch(aws: Aws, *, tenant_id: str, body: CreateBatchBody) -> Batch:
    """Admit a batch in `validating`; the caller starts the split."""
    try:
        file = file_store.get_file_item(aws.table, file_id=body.input_file_id, tenant_id=tenant_id)
    except NotFound as exc:  # name the request's field, not the store's
        raise NotFound("file", body.input_file_id, param="input_file_id") from exc
    if file["purpose"] != "batch":
        raise InvalidRequest(
            f"File {body.input_file_id} has purpose {file['purpose']!r}, not 'batch'.",
            code="invalid_input_file",
            param="input_file_id",
        )
    if file.get("status") == "error":
        raise InvalidRequest(
            f"File {body.input_file_id} failed processing: {file.get('status_details')}",
            code="invalid_input_file",
            param="input_file_id",
        )
    max_requests = aws.settings.max_requests_per_batch
    lines = file.get("line_count")
    if lines is not None and lines > max_requests:
        raise LimitExceeded(
            "max_requests_per_batch",
            max_requests,
            f"The file has {lines} requests, more than one batch may hold",
            status_code=400,
        )
    reason = endpoint_store.endpoint_down_reason(aws.table)
    if reason is not None:
        raise Unavailable(
            f"New batches are not accepted while the GPU endpoint is unhealthy ({reason}); "
            "retry later.",
            code="endpoint_unavailable",
        )
    created = now_s()
    batch = Batch(
        id=new_id("batch"),
        endpoint=body.endpoint,
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        status="validating",
        created_at=created,
        expires_at=created + WINDOW_S[body.completion_window],
        metadata=body.metadata,
        priority=body.priority,
    )
    size = sizing.size_for_file(aws, s3_key=file["s3_key"])
    extra: Item = {"chunks_in_flight": 0, "chunk_requests": size.requests}
    if body.output_expires_after:
        extra["output_expires_after_s"] = body.output_expires_after.seconds
    batch_store.create_batch(
        aws.table,
        tenant_id=tenant_id,
        batch=batch,
        queued=lines or 0,
        limits=aws.limits,
        extra=extra,
        # The sweep restarts a split that has not finished by then.
        due_at=created + SPLIT_STALE_S + 1,
    )
    try:
        health_store.record_arrival(aws.table, created)
    except Exception as exc:
        # The forecast's history, not the batch: the batch stands without it.
        log.warning("batch arrival not recorded", extra={"batch_id": batch.id, "error": str(exc)})
    return batch


def cancel_batch(aws: Aws, *, tenant_id: str, batch_id: str, kick: Kick = no_kick) -> Batch:
    """validating | in_progress | finalizing → cancelling. The split (still validating) or the
    batch handler (RunPod jobs cancelled, pending chunks dropped, finished output merged), on
    the event sent here, then moves it to cancelled."""
    item = batch_store.get_batch_item(aws.table, batch_id=batch_id, tenant_id=tenant_id)
    if item["status"] in ("cancelling", "cancelled"):
        return Figures(aws)(batch_store.batch_from_item(item))  # idempotent, as OpenAI's is
    if item["status"] in TERMINAL_STATUSES:
        raise Conflict(
            f"Batch {batch_id} is {item['status']} and can no longer be cancelled.",
            code="batch_not_cancellable",
        )
    for _ in range(3):
        try:
            item = batch_store.transition(
                aws.table, item, expect=CANCELLABLE, to="cancelling", at=now_s(), due_at=now_s()
            )
            if item.get("in_progress_at"):  # a split still running finishes the cancel itself
                queues.send_batch(
                    aws.queues, BatchEvent(batch_id=batch_id, at=now_s(), reason="cancel")
                )
                kick(f"cancel {batch_id}")
            break
        except StateConflict as exc:
            item = exc.item or item
            if item["status"] in ("cancelling", "cancelled"):
                return Figures(aws)(batch_store.batch_from_item(item))
            if item["status"] not in CANCELLABLE:
                raise Conflict(
                    f"Batch {batch_id} is {item['status']} and can no longer be cancelled.",
                    code="batch_not_cancellable",
                ) from exc
    return Figures(aws)(batch_store.batch_from_item(item))


def get_batch(aws: Aws, *, tenant_id: str, batch_id: str) -> Batch:
    item = batch_store.get_batch_item(aws.table, batch_id=batch_id, tenant_id=tenant_id)
    return Figures(aws)(batch_store.batch_from_item(item))


def list_batches(aws: Aws, *, tenant_id: str, limit: int, after: str | None) -> CursorPage[Batch]:
    page = batch_store.list_batches(aws.table, tenant_id=tenant_id, limit=limit, after=after)
    figures = Figures(aws)
    return page.model_copy(update={"data": [figures(batch) for batch in page.data]})


def list_dead_letters(
    aws: Aws, *, tenant_id: str, batch_id: str, limit: int, after: str | None
) -> CursorPage[DeadLetter]:
    batch_store.get_batch_item(aws.table, batch_id=batch_id, tenant_id=tenant_id)
    items, has_more = deadletters.list_dead_letters(
        aws.table, batch_id=batch_id, limit=limit, after=after
    )
    data = [DeadLetter.model_validate(item) for item in items]
    return CursorPage[DeadLetter](
        data=data,
        first_id=data[0].custom_id if data else "",
        last_id=data[-1].custom_id if data else "",
        has_more=has_more,
    )
