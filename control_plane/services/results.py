"""What workers and RunPod push to the API: a chunk's result (RunPod's webhook) and a running
chunk's progress (the worker's post), each on a URL signed for that chunk and attempt."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from control_plane import webhooks
from control_plane.clients import secrets
from control_plane.clients.aws import Aws
from control_plane.clients.kick import Kick, no_kick
from control_plane.errors import InvalidRequest, StateConflict, Unauthorized
from control_plane.ids import now_s
from control_plane.scheduler.record import FREEING
from control_plane.scheduler.tick import record_webhook
from control_plane.store import TransactionConflict
from control_plane.store import chunks as chunk_store
from handler.contract import ChunkProgress


def receive_webhook(
    aws: Aws,
    *,
    batch_id: str,
    chunk_id: str,
    attempt: int,
    sig: str,
    job: dict[str, Any],
    kick: Kick = no_kick,
) -> str:
    """The outcome (`done`, `retry`, `stale`…); Unauthorized when the signature fails. A result
    that frees a worker's slot has told the endpoint's dispatcher (an event), so the worker's
    next chunk is on its way while it still drains the other one."""
    _verify(aws, batch_id, chunk_id, attempt, sig, webhooks.PATH)
    outcome = record_webhook(aws, batch_id=batch_id, chunk_id=chunk_id, attempt=attempt, job=job)
    if outcome in FREEING:
        kick(f"chunk {batch_id}/{chunk_id} {outcome}")
    return outcome


def receive_progress(
    aws: Aws, *, batch_id: str, chunk_id: str, attempt: int, sig: str, body: dict[str, Any]
) -> str:
    """A running chunk's answered requests so far: added to its batch's counts (`stored`), or
    ignored when the chunk has moved on or a newer report got there first (`stale`)."""
    _verify(aws, batch_id, chunk_id, attempt, sig, webhooks.PROGRESS_PATH)
    try:
        progress = ChunkProgress.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(f"Not a progress report: {exc.errors()[0]['msg']}") from exc
    if (progress.batch_id, progress.chunk_id, progress.attempt) != (batch_id, chunk_id, attempt):
        raise InvalidRequest("The report names another chunk than its URL.")
    chunk = chunk_store.get_chunk(aws.table, batch_id=batch_id, chunk_id=chunk_id)
    if chunk is None or chunk.get("state") != "dispatched" or chunk["attempts"] != attempt:
        return "stale"
    requests = int(chunk.get("requests", 0))
    completed = min(progress.completed, requests)
    failed = min(progress.failed, requests - completed)
    before = int(chunk.get("progress_completed", 0)) + int(chunk.get("progress_failed", 0))
    if completed + failed <= before:
        return "stale"  # reports only move forward: an older one that came late changes nothing
    try:
        chunk_store.save_progress(aws.table, chunk, completed=completed, failed=failed, now=now_s())
    except (StateConflict, TransactionConflict):
        return "stale"
    return "stored"


def _verify(aws: Aws, batch_id: str, chunk_id: str, attempt: int, sig: str, path: str) -> None:
    secret = secrets.webhook_secret(aws.settings)
    if not webhooks.verify(
        secret, batch_id=batch_id, chunk_id=chunk_id, attempt=attempt, sig=sig, path=path
    ):
        raise Unauthorized("Bad webhook signature.", code="invalid_signature")
