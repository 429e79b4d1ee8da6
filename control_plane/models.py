"""OpenAI's Files, Uploads and Batches objects, field for field, plus the request bodies.

The one place these shapes are written down: routes return these models, the store maps items
onto them, and the `openai` SDK parses them with its own models in the integration test.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL_STATUSES: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
SUPPORTED_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
Priority = Literal["high", "normal", "backfill"]

T = TypeVar("T")


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = None
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class CursorPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=30 * 24 * 3600)


class BatchError(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class BatchUsage(BaseModel):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None = None
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)
    usage: BatchUsage = Field(default_factory=BatchUsage)
    metadata: dict[str, str] | None = None
    # hotbatch extra: dispatch priority (backfill runs only when nothing else waits).
    priority: Priority = "normal"


class CreateBatchBody(BaseModel):
    # Unknown fields are ignored: a newer SDK may send parameters this server does not know.
    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None
    priority: Priority = "normal"

    @field_validator("endpoint")
    @classmethod
    def _supported_endpoint(cls, value: str) -> str:
        if value not in SUPPORTED_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(SUPPORTED_ENDPOINTS)}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's metadata rules: 16 pairs, keys up to 64 characters, values up to 512.
        if value is None:
            return None
        if len(value) > 16:
            raise ValueError("metadata holds at most 16 key-value pairs")
        for key, item in value.items():
            if len(key) > 64:
                raise ValueError(f"metadata key {key[:20]!r}… is longer than 64 characters")
            if len(item) > 512:
                raise ValueError(f"metadata value for {key!r} is longer than 512 characters")
        return value


class CreateUploadBody(BaseModel):
    # Unknown fields are ignored: a newer SDK may send parameters this server does not know.
    model_config = ConfigDict(extra="ignore")

    bytes: int = Field(ge=1)
    filename: str = Field(min_length=1, max_length=512)
    mime_type: str
    purpose: str
    expires_after: ExpiresAfter | None = None


class UploadPartUrl(BaseModel):
    part_number: int
    url: str
    bytes: int


class Upload(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None
    # hotbatch extra: where to PUT the bytes. The client PUTs part i to `part_urls[i]` (each
    # `bytes` long, the last one shorter) and then calls complete; S3 keeps the parts.
    part_urls: list[UploadPartUrl] | None = None


class CompleteUploadBody(BaseModel):
    # OpenAI's clients send the part ids they got back; with presigned parts the store lists
    # the parts itself, so both fields are optional.
    part_ids: list[str] | None = None
    md5: str | None = None


class ChunkRef(BaseModel):
    """One chunk object the split (or a bisection, or a redrive) wrote: where it is, what it
    holds, the input line its first request came from, and its prefix group: `group`, the
    first request's; `groups`, how many it holds; `group_order`, the number of the first chunk
    led by the same group (the dispatch order; the chunk's own number when it leads)."""

    index: int
    key: str
    requests: int
    bytes: int
    first_line: int
    group: str = ""
    groups: int = 1
    group_order: int | None = None


class DeadLetter(BaseModel):
    """hotbatch extra: one request that failed for good, kept until it is redriven."""

    object: Literal["batch.dead_letter"] = "batch.dead_letter"
    custom_id: str
    chunk_id: str
    status_code: int
    code: str | None = None
    type: str | None = None
    message: str
    attempts: int
    created_at: int


class RetryBody(BaseModel):
    """hotbatch extra: which dead letters to redrive (all of them when omitted)."""

    model_config = ConfigDict(extra="forbid")

    custom_ids: list[str] | None = Field(default=None, min_length=1, max_length=50_000)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return ErrorBody(
        error=ErrorDetail(message=message, type=type, param=param, code=code)
    ).model_dump()
