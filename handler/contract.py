"""The chunk contract: what a dispatch sends to a worker and what the worker returns.

This module is the one place where these wire formats are declared. The control plane imports
it (never the other way round), so it must stay free of vLLM, runpod and anything heavy.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]

# Messages are truncated in the summary so a chunk where every request fails still returns a
# payload far below RunPod's output limits; the full message is in the error file.
MAX_SUMMARY_MESSAGE_CHARS = 500


class ProcessChunkInput(BaseModel):
    """RunPod job input for `action: process_chunk`."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["process_chunk"]
    batch_id: str = Field(min_length=1)
    chunk_id: str = Field(min_length=1)
    attempt: int = Field(default=1, ge=1)
    endpoint: Endpoint
    input_url: str = Field(min_length=1)
    output_url: str = Field(min_length=1)
    error_url: str = Field(min_length=1)
    # Where to post a `ChunkProgress` while the chunk runs (signed by the control plane), and
    # how often at most; absent: progress goes only to RunPod's `progress_update`.
    progress_url: str | None = None
    progress_every_s: int | None = Field(default=None, ge=1)
    # The tenant's prefix-cache salt, set by the control plane: every request of the chunk runs
    # under it (combined with a salt the request brings), so one tenant's prompts never hit
    # another's cached blocks and `cached_tokens` tells nobody what others sent.
    cache_salt: str | None = Field(default=None, min_length=1, max_length=128)


class ChunkProgress(BaseModel):
    """What a worker reports while a chunk runs (the runpod SDK's `progress_update`; RunPod
    shows it as the job's `output` while the job is IN_PROGRESS): requests answered so far."""

    kind: Literal["progress"] = "progress"
    batch_id: str
    chunk_id: str
    attempt: int
    requests: int = Field(ge=0)
    completed: int = Field(ge=0)
    failed: int = Field(ge=0)


class HealthInput(BaseModel):
    """RunPod job input for `action: health` (also what keep-hot pings send)."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["health"]


JobInput = Annotated[ProcessChunkInput | HealthInput, Field(discriminator="action")]
JOB_INPUT: TypeAdapter[ProcessChunkInput | HealthInput] = TypeAdapter(JobInput)
ACTIONS: tuple[str, ...] = ("process_chunk", "health")


# --- OpenAI batch lines ---------------------------------------------------------------------


class BatchRequestInput(BaseModel):
    """One line of an OpenAI batch input file."""

    custom_id: str
    method: str
    url: str
    body: dict[str, Any]


class BatchResponseData(BaseModel):
    status_code: int
    request_id: str
    body: dict[str, Any] | None = None


class BatchLineError(BaseModel):
    code: str | None = None
    message: str


def salted(tenant_salt: str, client_salt: object) -> str:
    """The `cache_salt` a request runs under: the tenant's, or a digest of the tenant's and the
    request's own (a client may still keep its own requests apart, but no choice of its salt
    reaches another tenant's). Hex, within vLLM's 128 characters and free of its forbidden
    characters."""
    if client_salt is None:
        return tenant_salt
    mixed = hashlib.sha256(f"{tenant_salt}\0{client_salt!r}".encode()).hexdigest()
    return mixed


def error_body(message: str, *, status: int, param: str | None) -> dict[str, Any]:
    """An error body in vLLM's shape, for failures hotbatch detects itself, so every error line
    reads the same whether vLLM or the worker refused the request."""
    kind = "BadRequestError" if status < 500 else "InternalServerError"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


class BatchRequestOutput(BaseModel):
    """One line of an OpenAI batch output or error file."""

    id: str
    custom_id: str
    response: BatchResponseData | None
    error: BatchLineError | None = None


# --- The summary a worker returns -------------------------------------------------------------


# Counts, tokens and seconds a worker reports are never negative: they add to a tenant's batch
# counters and to the throughput figures that size every tenant's chunks (the control plane
# also checks them against the chunk: `control_plane/scheduler/record.py`).
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]
Rate = Annotated[float, Field(ge=0)]


class ChunkCounts(BaseModel):
    total: Count = 0
    completed: Count = 0
    failed: Count = 0


class ChunkUsage(BaseModel):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cached_tokens: Count = 0
    total_tokens: Count = 0


class RequestFailure(BaseModel):
    custom_id: str
    status_code: int
    code: str | None = None
    type: str | None = None
    message: str = Field(max_length=4 * MAX_SUMMARY_MESSAGE_CHARS)


class ChunkTimings(BaseModel):
    download_s: Seconds = 0.0
    parse_s: Seconds = 0.0
    engine_s: Seconds = 0.0
    upload_s: Seconds = 0.0
    total_s: Seconds = 0.0
    requests_per_s: Rate = 0.0
    output_tokens_per_s: Rate = 0.0
    # The worker's wall clock (Unix seconds) when the job began and ended on it.
    started_at: Seconds = 0.0
    finished_at: Seconds = 0.0
    # This chunk's share of the seconds the worker's engine had a request in flight (each
    # busy second split among the chunks in it by their requests in flight): one clock per
    # worker, so chunks that overlap on it are never counted twice, and the sum over a
    # batch's chunks is the engine's busy time for it.
    engine_busy_s: Seconds = 0.0
    worker_busy_s: Seconds = 0.0  # the worker's busy clock since its engine loaded
    # Chunks the worker ran at once, at most, during this one.
    concurrent_chunks: int = Field(default=1, ge=0)
    # Began before the worker had finished any chunk: it shared the fresh engine's one-time
    # costs, so estimates keep its throughput apart.
    started_cold: bool = False


class WorkerIdentity(BaseModel):
    worker_id: str
    hostname: str
    pid: int
    model: str
    vllm_version: str
    hotbatch_version: str


class ChunkGpu(BaseModel):
    """One GPU over a chunk: NVML readings sampled while the chunk ran (at its start, every
    few seconds, at its end), so health is rated from work rather than from idle pings."""

    index: int
    name: str = ""
    samples: int = Field(ge=1)
    utilization_percent: float | None = None  # the mean of the samples that had one
    memory_used_mb: float = 0.0  # the most seen
    memory_total_mb: float = 0.0


class ChunkSummary(BaseModel):
    """What `process_chunk` returns as the RunPod job output."""

    batch_id: str
    chunk_id: str
    attempt: int
    endpoint: Endpoint
    counts: ChunkCounts
    usage: ChunkUsage
    failures: list[RequestFailure]
    timings: ChunkTimings
    worker: WorkerIdentity
    gpus: list[ChunkGpu] = Field(default_factory=list)  # none on a machine without NVML
