"""`/internal/runpod/webhook`: RunPod POSTs the final job object of each chunk here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Body, Query

from control_plane import results
from control_plane.api.deps import AwsDep, KickDep
from control_plane.webhooks import PATH

router = APIRouter(tags=["internal"], include_in_schema=False)


@router.post(PATH)
def runpod_webhook(
    aws: AwsDep,
    kick: KickDep,
    background: BackgroundTasks,
    batch_id: str,
    chunk_id: str,
    attempt: int,
    sig: Annotated[str, Query()],
    job: Annotated[dict[str, Any], Body()],
) -> dict[str, str]:
    """Always 200 once the signature holds, whatever happened to the result (duplicate,
    stale attempt): RunPod retries anything else, and a retry cannot change the outcome."""
    outcome = results.receive_webhook(
        aws,
        batch_id=batch_id,
        chunk_id=chunk_id,
        attempt=attempt,
        sig=sig,
        job=job,
        kick=lambda reason: background.add_task(kick, reason),
    )
    return {"outcome": outcome}
