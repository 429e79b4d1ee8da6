"""`/internal/runpod/webhook`: RunPod POSTs the final job object of each chunk here."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from control_plane import secrets
from control_plane.api.deps import AwsDep
from control_plane.errors import Unauthorized
from control_plane.scheduler.context import webhook_signature
from control_plane.scheduler.tick import record_webhook

router = APIRouter(tags=["internal"], include_in_schema=False)


@router.post("/internal/runpod/webhook")
def runpod_webhook(
    aws: AwsDep,
    batch_id: str,
    chunk_id: str,
    attempt: int,
    sig: Annotated[str, Query()],
    job: Annotated[dict[str, Any], Body()],
) -> dict[str, str]:
    """Always 200 once the signature holds, whatever happened to the result (duplicate,
    stale attempt): RunPod retries anything else, and a retry cannot change the outcome."""
    expected = webhook_signature(secrets.webhook_secret(aws.settings), batch_id, chunk_id, attempt)
    if not hmac.compare_digest(expected, sig):
        raise Unauthorized("Bad webhook signature.", code="invalid_signature")
    outcome = record_webhook(aws, batch_id=batch_id, chunk_id=chunk_id, attempt=attempt, job=job)
    return {"outcome": outcome}
