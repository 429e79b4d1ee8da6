"""OpenAI's Files, Uploads, Batches and Model objects, field for field, plus the request bodies.

The one place these shapes are written down: routes return these models, the store maps items
onto them, and the `openai` SDK parses them with its own models in the integration test.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

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
SUPPORTED_ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
)
Priority = Literal["high", "normal", "backfill"]

T = TypeVar("T")

# OpenAI's metadata rules: 16 pairs, keys up to 64 characters, values up to 512.
METADATA_MAX_PAIRS, METADATA_KEY_MAX, METADATA_VALUE_MAX = 16, 64, 512


def _well_formed(value: str) -> str:
    # JSON may carry an escaped unpaired surrogate ("\ud800"), which Python decodes into a str
    # that no UTF-8 store can hold: DynamoDB refuses it and moto's server crashes on it.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode text (it holds an unpaired surrogate)") from exc
    return value


# A string a client sends that may be stored: refused (400) unless it is encodable as UTF-8.
Text = Annotated[str, AfterValidator(_well_formed)]

# The validators below give the messages; these schemas tell clients (and fuzzers) the same
# rules, so a request the schema allows is one the server accepts.
Metadata = Annotated[
    dict[Text, Text],
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": METADATA_MAX_PAIRS,
            "propertyNames": {"maxLength": METADATA_KEY_MAX},
            "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_MAX},
            "description": "Up to 16 key-value pairs: keys up to 64 characters, values up to 512.",
        }
    ),
]
BatchEndpoint = Annotated[
    str, WithJsonSchema({"type": "string", "enum": list(SUPPORTED_ENDPOINTS)})
]
BatchPurpose = Annotated[
    Text,
    WithJsonSchema(
        {"type": "string", "enum": ["batch"], "description": "Only `batch` files are accepted."}
    ),
]
# S3 stores it as the object's Content-Type header: printable ASCII only (no line breaks).
MIME_TYPE_PATTERN = r"^[!-~][ -~]{0,254}$"


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
    # Strings even for an empty page ("" then), as OpenAI's OpenAPI schemas require (a null
    # fails a client that validates against them).
    first_id: str
    last_id: str
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


class BatchFigures(BaseModel):
    """hotbatch extra `hotbatch` on a Batch: what it has cost so far and when it should end."""

    # Engine time its chunks took, summed from the workers' chunk summaries.
    engine_seconds: float = 0.0
    # engine_seconds at HOTBATCH_GPU_PRICE_PER_HOUR; null when no price is configured.
    cost_usd: float | None = None
    # Prompt tokens served from vLLM's prefix cache / prompt tokens.
    cache_hit_rate: float | None = None
    # Input + output tokens per second of wall time since the batch started running.
    tokens_per_second: float | None = None
    # While in_progress: when the last request should be done (Unix seconds).
    eta_at: int | None = None


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
    # hotbatch extra: engine time, cost, cache hit rate, throughput and ETA.
    hotbatch: BatchFigures = Field(default_factory=BatchFigures)


class CreateBatchBody(BaseModel):
    # Unknown fields are ignored: a newer SDK may send parameters this server does not know.
    model_config = ConfigDict(extra="ignore")

    input_file_id: Text
    endpoint: BatchEndpoint
    completion_window: Literal["24h"]
    metadata: Metadata | None = None
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
        if value is None:
            return None
        if len(value) > METADATA_MAX_PAIRS:
            raise ValueError(f"metadata holds at most {METADATA_MAX_PAIRS} key-value pairs")
        for key, item in value.items():
            if len(key) > METADATA_KEY_MAX:
                raise ValueError(
                    f"metadata key {key[:20]!r}… is longer than {METADATA_KEY_MAX} characters"
                )
            if len(item) > METADATA_VALUE_MAX:
                raise ValueError(
                    f"metadata value for {key!r} is longer than {METADATA_VALUE_MAX} characters"
                )
        return value


class CreateUploadBody(BaseModel):
    # Unknown fields are ignored: a newer SDK may send parameters this server does not know.
    model_config = ConfigDict(extra="ignore")

    # The API's schema also gets `maximum: HOTBATCH_MAX_FILE_BYTES` (api/openapi.py).
    bytes: int = Field(ge=1)
    filename: Text = Field(min_length=1, max_length=512)
    mime_type: str = Field(pattern=MIME_TYPE_PATTERN)
    purpose: BatchPurpose
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


class UploadPart(BaseModel):
    """One part sent through `POST /v1/uploads/{id}/parts`; `complete` names parts by id."""

    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class CompleteUploadBody(BaseModel):
    # OpenAI's clients send the part ids they got back; with presigned parts the store lists
    # the parts itself, so both fields are optional.
    part_ids: list[Text] | None = None
    md5: Text | None = None


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

    custom_ids: list[Text] | None = Field(default=None, min_length=1, max_length=50_000)


class EstimateBody(BaseModel):
    """hotbatch extra `POST /v1/batches/estimate`: what a file would take, before submitting it."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: Text
    endpoint: BatchEndpoint = "/v1/chat/completions"

    @field_validator("endpoint")
    @classmethod
    def _supported_endpoint(cls, value: str) -> str:
        if value not in SUPPORTED_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(SUPPORTED_ENDPOINTS)}")
        return value


class EstimateBasis(BaseModel):
    """The throughput an estimate rests on, measured on the endpoint's recent chunks."""

    chunks: int
    since: int  # the oldest figures used (Unix seconds)
    tokens_per_engine_second: float | None
    input_tokens_per_byte: float | None
    output_tokens_per_request: float | None
    overhead_per_chunk_seconds: float
    workers: int


class BatchEstimate(BaseModel):
    """hotbatch extra: the expected size, duration and cost of a batch file.

    Input tokens come from the request lines' bytes at the input tokens per byte measured on
    recent chunks (without history: 4 characters of message text per token plus 4 per
    message); output tokens are each request's `max_completion_tokens` / `max_tokens` times
    `n` (an upper bound: generation may stop earlier), else the recent mean per request.
    Duration and cost need measured throughput: null until a chunk has run."""

    object: Literal["batch.estimate"] = "batch.estimate"
    input_file_id: str
    endpoint: str
    requests: int
    bytes: int
    sampled: bool  # only the first `sampled_bytes` were read; counts are scaled to the file
    sampled_bytes: int
    invalid_lines: int
    input_tokens: int
    input_tokens_method: Literal["measured_per_byte", "characters"]
    output_tokens: int
    requests_with_max_tokens: int
    chunks: int
    engine_seconds: float | None
    duration_seconds: float | None
    cost_usd: float | None
    basis: EstimateBasis | None
    notes: list[str] = Field(default_factory=list)


class Model(BaseModel):
    """OpenAI's Model object (`GET /v1/models`): one model this deployment serves."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


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
