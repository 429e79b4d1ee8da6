"""`/internal/runpod/…`: RunPod POSTs the final job object of each chunk to the webhook, and a
chunk's worker POSTs its progress while it runs. Both URLs are signed for one chunk attempt."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Body, Query

from control_plane.api.deps import AwsDep, KickDep
from control_plane.services import results
from control_plane.webhooks import PATH, PROGRESS_PATH

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


@router.post(PROGRESS_PATH)
def worker_progress(
    aws: AwsDep,
    batch_id: str,
    chunk_id: str,
    attempt: int,
    sig: Annotated[str, Query()],
    body: Annotated[dict[str, Any], Body()],
) -> dict[str, str]:
    """200 once the signature holds, stored or not (a late report is simply stale)."""
    outcome = results.receive_progress(
        aws, batch_id=batch_id, chunk_id=chunk_id, attempt=attempt, sig=sig, body=body
    )
    return {"outcome": outcome}
