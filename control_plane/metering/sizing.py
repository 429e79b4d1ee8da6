"""Right-sized chunks: how many requests one chunk of a new batch gets.

A chunk should keep a worker busy for minutes, not hours (a lost chunk is retried whole, and a
batch's tail is its last chunks), and never be so small that its boundary (a RunPod job, two S3
transfers, a few DynamoDB writes) weighs against its work. Three bounds, the smallest wins,
then clamped to `[HOTBATCH_CHUNK_MIN_REQUESTS, HOTBATCH_CHUNK_MAX_REQUESTS]`:

- time: the workers' measured requests per engine-busy second (an EWMA over chunk summaries,
  kept in the scheduler state) times `HOTBATCH_CHUNK_TARGET_S`;
- tokens: `HOTBATCH_CHUNK_MAX_TOKENS` over the batch's estimated tokens per request, from a
  sample of the input file's first lines: a line's bytes / 4 (prompt and JSON together) plus its
  completion budget (`max_completion_tokens` or `max_tokens`, times `n`);
- the ceiling itself, also the size before anything has been measured.

The size is chosen at admission and kept on the batch (`chunk_requests`), so a retried split
cuts the same chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import BaseModel

from control_plane.clients.aws import Aws
from control_plane.scheduler import policy
from control_plane.settings import Settings
from control_plane.store import endpoint as endpoint_store

log = logging.getLogger("control_plane.sizing")

BYTES_PER_TOKEN = 4  # BPE tokenizers average about 4 bytes of English or JSON per token
# What a request without max_tokens is assumed to generate: OpenAI lets it run to the end of
# the context, which would make every such chunk tiny.
DEFAULT_COMPLETION_TOKENS = 256
SAMPLE_BYTES = 256 * 1024


class ChunkSize(BaseModel):
    requests: int
    bound: str  # which bound decided it: ceiling, time, tokens or floor
    requests_per_s: float | None = None
    tokens_per_request: float | None = None


def estimate_tokens(line_bytes: int, body: Mapping[str, Any]) -> int:
    """A cheap upper estimate of one request's tokens, prompt and completion together."""
    completion = body.get("max_completion_tokens") or body.get("max_tokens")
    if not isinstance(completion, int) or completion <= 0:
        completion = DEFAULT_COMPLETION_TOKENS
    choices = body.get("n")
    if not isinstance(choices, int) or choices <= 0:
        choices = 1
    return line_bytes // BYTES_PER_TOKEN + completion * choices


def tokens_per_request(head: bytes) -> float | None:
    """The mean estimate over the complete lines of the start of a batch file."""
    estimates: list[int] = []
    for line in head.split(b"\n")[:-1]:  # the last piece may be cut short
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the split reports bad lines; a sample just skips them
        body = request.get("body") if isinstance(request, dict) else None
        if isinstance(body, dict):
            estimates.append(estimate_tokens(len(line) + 1, body))
    return sum(estimates) / len(estimates) if estimates else None


def chunk_size(
    settings: Settings, *, requests_per_s: float | None, tokens_per_request: float | None
) -> ChunkSize:
    ceiling, floor = (
        settings.chunk_max_requests,
        min(settings.chunk_min_requests, settings.chunk_max_requests),
    )
    size, bound = float(ceiling), "ceiling"
    if requests_per_s and settings.chunk_target_s > 0:
        by_time = requests_per_s * settings.chunk_target_s
        if by_time < size:
            size, bound = by_time, "time"
    if tokens_per_request:
        by_tokens = settings.chunk_max_tokens / tokens_per_request
        if by_tokens < size:
            size, bound = by_tokens, "tokens"
    if size < floor:
        size, bound = float(floor), "floor"
    return ChunkSize(
        requests=max(1, int(size)),
        bound=bound,
        requests_per_s=round(requests_per_s, 2) if requests_per_s else None,
        tokens_per_request=round(tokens_per_request, 1) if tokens_per_request else None,
    )


def size_for_file(aws: Aws, *, s3_key: str) -> ChunkSize:
    """The chunk size for a new batch of the file at `s3_key`: the measured throughput (one
    read of the scheduler state) and a sample of the file's first lines (one ranged GET)."""
    settings = aws.settings
    item = endpoint_store.load_scheduler_state(aws.table, settings.runpod_endpoint_id)
    state = policy.SchedulerState.model_validate(item) if item else None
    rate = state.requests_per_s if state else None
    try:
        head = aws.s3.get_object(
            Bucket=settings.bucket_name, Key=s3_key, Range=f"bytes=0-{SAMPLE_BYTES - 1}"
        )["Body"].read()
        per_request = tokens_per_request(head)
    except Exception as exc:
        # Sizing is an optimisation: without the sample the other bounds still hold.
        log.warning("chunk sizing sample failed", extra={"key": s3_key, "error": str(exc)})
        per_request = None
    return chunk_size(settings, requests_per_s=rate, tokens_per_request=per_request)
