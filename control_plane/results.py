"""Chunk results that RunPod pushes: a webhook's signed URL checked, then the job recorded
exactly as the tick's poll would record it."""

from __future__ import annotations

from typing import Any

from control_plane import secrets, webhooks
from control_plane.aws import Aws
from control_plane.errors import Unauthorized
from control_plane.scheduler.tick import record_webhook


def receive_webhook(
    aws: Aws, *, batch_id: str, chunk_id: str, attempt: int, sig: str, job: dict[str, Any]
) -> str:
    """The outcome (`done`, `retry`, `stale`…); Unauthorized when the signature fails."""
    secret = secrets.webhook_secret(aws.settings)
    if not webhooks.verify(secret, batch_id=batch_id, chunk_id=chunk_id, attempt=attempt, sig=sig):
        raise Unauthorized("Bad webhook signature.", code="invalid_signature")
    return record_webhook(aws, batch_id=batch_id, chunk_id=chunk_id, attempt=attempt, job=job)
