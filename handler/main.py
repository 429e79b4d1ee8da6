"""The RunPod handler: route a job's `action` to the runtime and shape the result.

Errors go back as a string under `error`: runpod 1.x ends a job COMPLETED when the error is a
dict. A cancelled job arrives as `asyncio.CancelledError`, which is re-raised after cleanup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from handler.contract import ACTIONS, JOB_INPUT, ChunkProgress, HealthInput
from handler.engine import EngineDead
from handler.runtime import Runtime
from handler.settings import WorkerSettings
from handler.transfer import TransferError

log = logging.getLogger(__name__)

_runtime: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make `runtime` the one the handler uses (done once at worker start, or by tests)."""
    global _runtime
    _runtime = runtime


def serve(settings: WorkerSettings) -> None:
    """Run the runpod SDK's worker loop on `handler` (returns when the SDK stops).

    The SDK's `JobScaler.get_jobs` sleeps a second whenever the worker is full, so it asks for
    the next job up to a second after a slot frees. At MAX_CONCURRENCY 1 the engine sits empty
    through that second and the next chunk's download at every chunk boundary; at 2 the next
    chunk is taken while the current one runs. Both share the one engine through
    `Runtime.gate`, so they never oversubscribe it. The SDK also counted a job it just took
    twice, which made a worker with a slot free sleep that second too (`take_loop`).
    """
    import runpod

    from handler.take_loop import count_taken_jobs_once

    count_taken_jobs_once()
    concurrency = settings.max_concurrency
    runpod.serverless.start(
        {"handler": handler, "concurrency_modifier": lambda _current: concurrency}
    )


def _progress_sender(job: dict[str, Any]) -> Callable[[ChunkProgress], None] | None:
    """Progress through the runpod SDK (RunPod shows it as the running job's output); none
    for a job that did not come from the SDK's loop (`hotbatch run-chunk`, tests)."""
    if not job.get("id"):
        return None

    def send(progress: ChunkProgress) -> None:
        from runpod.serverless import progress_update

        progress_update(job, progress.model_dump())

    return send


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The function given to `runpod.serverless.start`."""
    job_id = job.get("id")
    payload = job.get("input")
    try:
        request = JOB_INPUT.validate_python(payload)
    except ValidationError as exc:
        return {"error": _input_error(payload, exc)}
    if _runtime is None:
        return {"error": "worker not started: the engine is not loaded", "refresh_worker": True}
    if isinstance(request, HealthInput):
        return _runtime.health().model_dump(mode="json")
    try:
        summary = await _runtime.process(request, progress=_progress_sender(job))
    except asyncio.CancelledError:
        log.warning(
            "chunk cancelled",
            extra={"job_id": job_id, "batch_id": request.batch_id, "chunk_id": request.chunk_id},
        )
        raise
    except TransferError as exc:
        log.error(
            "chunk transfer failed",
            extra={
                "job_id": job_id,
                "batch_id": request.batch_id,
                "chunk_id": request.chunk_id,
                "error": str(exc),
            },
        )
        return {"error": str(exc)}
    except EngineDead as exc:
        # The engine cannot recover in place (e.g. after an OOM); RunPod replaces the worker
        # instead of letting it fail every following chunk.
        log.error("engine dead", extra={"job_id": job_id, "error": str(exc)})
        return {"error": f"engine dead: {exc}", "refresh_worker": True}
    return summary.model_dump(mode="json")


def _input_error(payload: Any, exc: ValidationError) -> str:
    action = payload.get("action") if isinstance(payload, dict) else None
    valid = ", ".join(ACTIONS)
    if action not in ACTIONS:
        return f"unknown action {action!r}: valid actions are {valid}"
    problems = "; ".join(
        f"{'.'.join(str(p) for p in error['loc'][1:]) or 'input'}: {error['msg']}"
        for error in exc.errors()
    )
    return f"invalid {action} input: {problems}"
