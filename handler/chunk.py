"""`process_chunk`: download a chunk, run every request through the engine together, upload.

One bad request never fails the chunk: it becomes an error line. Only a broken input URL, an
unreachable output URL or a dead engine fail the job, since nothing useful can be returned then.
The chunk reaches the engine through a lane of the worker's `EngineGate` (`pipeline.py`), so
it shares the in-flight budget with the worker's other chunks, oldest first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import ValidationError

from handler import transfer
from handler.contract import (
    MAX_SUMMARY_MESSAGE_CHARS,
    BatchRequestInput,
    BatchRequestOutput,
    BatchResponseData,
    ChunkCounts,
    ChunkProgress,
    ChunkSummary,
    ChunkTimings,
    ChunkUsage,
    ProcessChunkInput,
    RequestFailure,
    WorkerIdentity,
    error_body,
    salted,
)
from handler.engine import EngineDead
from handler.health import GpuSampler, GpuStats
from handler.pipeline import EngineGate, RequestRunner

log = logging.getLogger(__name__)
GPU_SAMPLE_S = 5.0
GpuRead = Callable[[], tuple[list[GpuStats], str | None]]

# Short, stable codes for the failures the control plane turns into dead letters.
_CODE_BY_STATUS = {
    400: "invalid_request",
    404: "not_found",
    422: "unprocessable",
    501: "not_implemented",
}


@dataclass(frozen=True)
class _Outcome:
    custom_id: str
    status_code: int
    body: dict[str, Any]
    code: str | None = None  # set for failures hotbatch detects before the engine

    @property
    def ok(self) -> bool:
        return self.status_code == 200


async def process_chunk(
    job: ProcessChunkInput,
    *,
    gate: EngineGate,
    session: aiohttp.ClientSession,
    worker: WorkerIdentity,
    transfer_retries: int,
    progress: Callable[[ChunkProgress], None] | None = None,
    progress_interval_s: float = 5.0,
    gpu_read: GpuRead | None = None,
) -> ChunkSummary:
    """Run one chunk. `progress`, when given, is called every `progress_interval_s` seconds
    while the chunk's requests run, with the requests answered so far (only when they moved).
    `gpu_read` (NVML) is sampled as the requests start, every `GPU_SAMPLE_S` while they run
    and as they end; the summary carries the readings per GPU."""
    ids = {"batch_id": job.batch_id, "chunk_id": job.chunk_id, "attempt": job.attempt}
    # The lane is taken on arrival, before the download: a chunk ranks by when it came.
    with gate.lane() as lane:
        started_at = time.time()
        started = time.perf_counter()
        raw = await transfer.download(session, job.input_url, retries=transfer_retries)
        downloaded = time.perf_counter()

        lines = raw.decode("utf-8", errors="replace").splitlines()
        pending: list[tuple[str, dict[str, Any]] | _Outcome] = [
            _parse_line(number, line, job.endpoint, cache_salt=job.cache_salt)
            for number, line in enumerate(lines, start=1)
            if line.strip()
        ]
        del raw, lines
        parsed = time.perf_counter()
        log.info("chunk start", extra={**ids, "requests": len(pending), "chunks": gate.chunks})

        tally = _Tally(
            ChunkProgress(
                batch_id=job.batch_id,
                chunk_id=job.chunk_id,
                attempt=job.attempt,
                requests=len(pending),
                completed=0,
                failed=0,
            )
        )
        reporter = (
            asyncio.create_task(_report(tally, progress, progress_interval_s))
            if progress is not None and progress_interval_s > 0
            else None
        )
        gpus = GpuSampler(gpu_read) if gpu_read is not None else None
        sampling = asyncio.create_task(_sample_gpus(gpus)) if gpus is not None else None
        try:
            outcomes, rendered = await _run_all(pending, lane, job.endpoint, ids, tally)
        finally:
            for task in (reporter, sampling):
                if task is not None:
                    task.cancel()
        if gpus is not None:
            await asyncio.to_thread(gpus.take)
        ran = time.perf_counter()

        output_lines, error_lines = _jsonl_split(outcomes, rendered)
        await asyncio.gather(
            transfer.upload(
                session,
                job.output_url,
                output_lines,
                retries=transfer_retries,
                what="output upload",
            ),
            transfer.upload(
                session, job.error_url, error_lines, retries=transfer_retries, what="error upload"
            ),
        )
        finished = time.perf_counter()

    summary = _summarize(job, outcomes, worker)
    if gpus is not None:
        summary.gpus = gpus.summary()
    engine_s = ran - parsed
    summary.timings = ChunkTimings(
        download_s=round(downloaded - started, 4),
        parse_s=round(parsed - downloaded, 4),
        engine_s=round(engine_s, 4),
        upload_s=round(finished - ran, 4),
        total_s=round(finished - started, 4),
        requests_per_s=round(len(outcomes) / engine_s, 2) if engine_s > 0 else 0.0,
        output_tokens_per_s=(
            round(summary.usage.completion_tokens / engine_s, 2) if engine_s > 0 else 0.0
        ),
        started_at=round(started_at, 4),
        finished_at=round(started_at + (finished - started), 4),
        engine_busy_s=round(lane.busy_s, 4),
        worker_busy_s=round(gate.busy.seconds(), 4),
        concurrent_chunks=lane.peak_chunks,
        started_cold=lane.started_cold,
    )
    log.info(
        "chunk end",
        extra={
            **ids,
            "requests": summary.counts.total,
            "completed": summary.counts.completed,
            "failed": summary.counts.failed,
            "prompt_tokens": summary.usage.prompt_tokens,
            "completion_tokens": summary.usage.completion_tokens,
            "seconds": summary.timings.total_s,
            "tokens_per_s": summary.timings.output_tokens_per_s,
            "engine_busy_s": summary.timings.engine_busy_s,
            "concurrent_chunks": summary.timings.concurrent_chunks,
        },
    )
    return summary


def _parse_line(
    number: int, line: str, endpoint: str, *, cache_salt: str | None = None
) -> tuple[str, dict[str, Any]] | _Outcome:
    """A request ready for the engine, or the error outcome that replaces it. With a tenant's
    `cache_salt`, the request runs under it whatever salt the line carries."""
    try:
        request = BatchRequestInput.model_validate_json(line)
    except ValidationError as exc:
        custom_id = _salvage_custom_id(line) or f"line-{number}"
        first = exc.errors()[0]
        code = "invalid_json_line" if first["type"] == "json_invalid" else "invalid_request_line"
        message = f"Line {number}: {first['msg']}" + (
            f" at {'.'.join(str(p) for p in first['loc'])}" if first["loc"] else ""
        )
        return _failure(custom_id, 400, message, code=code, param=None)
    if request.url != endpoint:
        return _failure(
            request.custom_id,
            400,
            f"Request url {request.url!r} does not match the batch endpoint {endpoint!r}.",
            code="mismatched_url",
            param="url",
        )
    if request.body.get("stream"):
        return _failure(
            request.custom_id,
            400,
            "Streaming is not supported in batch requests; remove 'stream'.",
            code="stream_not_supported",
            param="stream",
        )
    if cache_salt is not None:
        request.body["cache_salt"] = salted(cache_salt, request.body.get("cache_salt"))
    return request.custom_id, request.body


def _salvage_custom_id(line: str) -> str | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    custom_id = value.get("custom_id") if isinstance(value, dict) else None
    return custom_id if isinstance(custom_id, str) else None


def _failure(
    custom_id: str, status: int, message: str, *, code: str, param: str | None
) -> _Outcome:
    return _Outcome(custom_id, status, error_body(message, status=status, param=param), code)


@dataclass
class _Tally:
    """The chunk's progress so far, counted as its requests finish."""

    now: ChunkProgress

    def add(self, outcome: _Outcome) -> None:
        if outcome.ok:
            self.now.completed += 1
        else:
            self.now.failed += 1


async def _sample_gpus(gpus: GpuSampler) -> None:
    # NVML calls block for milliseconds: off the engine's event loop.
    while True:
        await asyncio.to_thread(gpus.take)
        await asyncio.sleep(GPU_SAMPLE_S)


async def _report(
    tally: _Tally, progress: Callable[[ChunkProgress], None], interval_s: float
) -> None:
    sent: tuple[int, int] = (0, 0)
    while True:
        await asyncio.sleep(interval_s)
        counts = (tally.now.completed, tally.now.failed)
        if counts == sent:
            continue
        try:
            progress(tally.now.model_copy())
        except Exception:
            # A progress report is a nicety: it must never fail the chunk.
            log.warning("progress report failed", exc_info=True)
        sent = counts


async def _run_all(
    pending: list[tuple[str, dict[str, Any]] | _Outcome],
    engine: RequestRunner,
    endpoint: str,
    ids: dict[str, Any],
    tally: _Tally,
) -> tuple[list[_Outcome], list[str]]:
    """Every request handed to the engine at once (the lane bounds how many are in it), so
    its scheduler batches them; awaiting them one by one would run the chunk at batch size 1.
    Each output line is rendered as its request finishes: the rendering of a whole chunk at
    the end would hold the engine's event loop while the next chunk's requests need it."""
    outcomes: list[_Outcome | None] = [None] * len(pending)
    rendered: list[str] = [""] * len(pending)

    async def run_one(index: int, item: tuple[str, dict[str, Any]] | _Outcome) -> None:
        if isinstance(item, _Outcome):
            outcome = item
        else:
            custom_id, body = item
            try:
                reply = await engine.run(endpoint, body)
                outcome = _Outcome(custom_id, reply.status_code, reply.body)
            except EngineDead:
                raise
            except Exception as exc:
                # One request's crash must not sink its neighbours: it becomes a 500 line.
                log.exception("request failed in engine", extra={**ids, "custom_id": custom_id})
                outcome = _failure(
                    custom_id, 500, f"Engine error: {exc}", code="engine_error", param=None
                )
        outcomes[index] = outcome
        rendered[index] = _render_line(outcome)
        tally.add(outcome)

    await asyncio.gather(*(run_one(index, item) for index, item in enumerate(pending)))
    return [outcome for outcome in outcomes if outcome is not None], rendered


def _render_line(outcome: _Outcome) -> str:
    return BatchRequestOutput(
        id=f"batch_req_{uuid.uuid4().hex}",
        custom_id=outcome.custom_id,
        response=BatchResponseData(
            status_code=outcome.status_code,
            request_id=f"req_{uuid.uuid4().hex}",
            body=outcome.body,
        ),
        error=None,
    ).model_dump_json()


def _jsonl_split(outcomes: list[_Outcome], rendered: list[str]) -> tuple[bytes, bytes]:
    output = [line for outcome, line in zip(outcomes, rendered, strict=True) if outcome.ok]
    errors = [line for outcome, line in zip(outcomes, rendered, strict=True) if not outcome.ok]
    return _jsonl(output), _jsonl(errors)


def _jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _summarize(
    job: ProcessChunkInput, outcomes: list[_Outcome], worker: WorkerIdentity
) -> ChunkSummary:
    usage = ChunkUsage()
    failures: list[RequestFailure] = []
    for outcome in outcomes:
        if outcome.status_code == 200:
            _add_usage(usage, outcome.body.get("usage") or {})
        else:
            failures.append(_failure_summary(outcome))
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    return ChunkSummary(
        batch_id=job.batch_id,
        chunk_id=job.chunk_id,
        attempt=job.attempt,
        endpoint=job.endpoint,
        counts=ChunkCounts(
            total=len(outcomes), completed=len(outcomes) - len(failures), failed=len(failures)
        ),
        usage=usage,
        failures=failures,
        timings=ChunkTimings(),
        worker=worker,
    )


def _add_usage(total: ChunkUsage, usage: dict[str, Any]) -> None:
    """Chat, completion and embedding usage (`prompt_tokens`, `completion_tokens`; embeddings
    have no completion tokens) or the Responses API's (`input_tokens`, `output_tokens`)."""
    total.prompt_tokens += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
    total.completion_tokens += int(
        usage.get("completion_tokens") or usage.get("output_tokens") or 0
    )
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    total.cached_tokens += int(details.get("cached_tokens") or 0)


def _failure_summary(outcome: _Outcome) -> RequestFailure:
    error = outcome.body.get("error")
    if not isinstance(error, dict):
        error = {}
    code = outcome.code or _CODE_BY_STATUS.get(outcome.status_code, "engine_error")
    message = str(error.get("message") or f"HTTP {outcome.status_code}")
    return RequestFailure(
        custom_id=outcome.custom_id,
        status_code=outcome.status_code,
        code=code,
        type=error.get("type"),
        message=message[:MAX_SUMMARY_MESSAGE_CHARS],
    )
