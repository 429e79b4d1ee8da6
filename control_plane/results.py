"""Chunk results that RunPod pushes: a webhook's signed URL checked, then the job recorded
exactly as the tick's poll would record it."""

from __future__ import annotations

from typing import Any

from control_plane import secrets, webhooks
from control_plane.aws import Aws
from control_plane.errors import Unauthorized
from control_plane.kick import Kick, no_kick
from control_plane.scheduler.tick import record_webhook

# Outcomes that free a worker's slot or settle a chunk: the tick should dispatch (or finalize)
# now, not at its next scheduled run.
KICKING = frozenset({"done", "retry", "split", "dead"})


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
    that frees a worker's slot kicks the tick, so the worker's next chunk is on its way while
    it still drains the other one (a minute-long wait on AWS's schedule would empty it)."""
    secret = secrets.webhook_secret(aws.settings)
    if not webhooks.verify(secret, batch_id=batch_id, chunk_id=chunk_id, attempt=attempt, sig=sig):
        raise Unauthorized("Bad webhook signature.", code="invalid_signature")
    outcome = record_webhook(aws, batch_id=batch_id, chunk_id=chunk_id, attempt=attempt, job=job)
    if outcome in KICKING:
        kick(f"chunk {batch_id}/{chunk_id} {outcome}")
    return outcome
