"""Control-plane settings, read once from the environment (prefix `HOTBATCH_`).

`template.yaml` sets every variable a deployed function needs; `tests/test_template.py` checks
that nothing here is read without being defined there (the local-only ones excepted).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from control_plane.health.schedule import parse_schedule

ONE_GB = 1024**3

# Read only by the local stack and tests; no deployed function sets them (boto3 finds AWS
# itself, RunPod's API is at its default address, secrets come from Secrets Manager).
LOCAL_ONLY = frozenset(
    {
        "aws_endpoint_url",
        "runpod_base_url",
        "runpod_api_key",
        "webhook_secret_value",
        "event_webhook_private_urls",
    }
)


class ModelRoute(BaseModel):
    """One served model in `HOTBATCH_MODELS`: the RunPod endpoint that runs it and its kind."""

    model_config = ConfigDict(extra="forbid")

    endpoint_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the RunPod endpoint (default: HOTBATCH_RUNPOD_ENDPOINT_ID)",
    )
    kind: Literal["generate", "embed"] = Field(
        default="generate",
        description=(
            "generate: /v1/chat/completions, /v1/completions, /v1/responses; embed: "
            "/v1/embeddings (a worker with RUNNER=pooling)"
        ),
    )
    created: int = Field(default=0, ge=0, description="the Model object's `created`")
    owned_by: str = Field(default="hotbatch", description="the Model object's `owned_by`")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HOTBATCH_", env_ignore_empty=True, extra="ignore", case_sensitive=False
    )

    # --- resources (template.yaml: Table, Bucket, SplitFunction) ---
    table_name: str = Field(default="hotbatch", description="HOTBATCH_TABLE_NAME: the table.")
    bucket_name: str = Field(
        default="hotbatch", description="HOTBATCH_BUCKET_NAME: files and chunk objects."
    )
    aws_endpoint_url: str | None = Field(
        default=None,
        description="HOTBATCH_AWS_ENDPOINT_URL: S3 and DynamoDB endpoint (moto locally).",
    )
    split_mode: Literal["inline", "lambda"] = Field(
        default="inline",
        description=(
            "HOTBATCH_SPLIT_MODE: `lambda` invokes the split function asynchronously; `inline` "
            "runs it in a background thread of the API process (local stack, tests)."
        ),
    )
    split_function_name: str = Field(
        default="", description="HOTBATCH_SPLIT_FUNCTION_NAME: the split function (lambda mode)."
    )

    # --- RunPod and the tick ---
    runpod_endpoint_id: str = Field(
        default="local", description="HOTBATCH_RUNPOD_ENDPOINT_ID: the serverless endpoint."
    )
    models: dict[str, ModelRoute] = Field(
        default_factory=dict,
        description=(
            'HOTBATCH_MODELS: the models this deployment serves, as JSON: `{"MODEL": '
            '{"endpoint_id": "…", "kind": "generate" | "embed"}, …}` (the `model` '
            "that request lines name, as the worker serves it). Each batch goes to its model's "
            "endpoint; a line naming another model, or an endpoint the model's kind does not "
            "serve, fails validation. Empty: one endpoint (HOTBATCH_RUNPOD_ENDPOINT_ID) serves "
            "whatever model its workers load, and `/v1/models` lists nothing."
        ),
    )
    runpod_base_url: str = Field(
        default="https://api.runpod.ai/v2",
        description="HOTBATCH_RUNPOD_BASE_URL: RunPod's client API (the local endpoint's locally).",
    )
    runpod_api_key_secret: str = Field(
        default="",
        description="HOTBATCH_RUNPOD_API_KEY_SECRET: Secrets Manager ARN of the RunPod API key.",
    )
    runpod_api_key: str = Field(
        default="", description="HOTBATCH_RUNPOD_API_KEY: the key itself (local stack only)."
    )
    webhook_secret: str = Field(
        default="",
        description="HOTBATCH_WEBHOOK_SECRET: Secrets Manager ARN of the webhook signing secret.",
    )
    webhook_secret_value: str = Field(
        default="", description="HOTBATCH_WEBHOOK_SECRET_VALUE: the secret itself (local only)."
    )
    public_url: str = Field(
        default="",
        description="HOTBATCH_PUBLIC_URL: the API's base URL, for RunPod webhooks (none: poll).",
    )
    dispatch_profile: Literal["conservative", "medium", "aggressive"] = Field(
        default="medium",
        description="HOTBATCH_DISPATCH_PROFILE: in-flight window, retries, timeouts, breaker.",
    )
    progress_poll_s: int = Field(
        default=10,
        ge=0,
        description=(
            "HOTBATCH_PROGRESS_POLL_S: seconds between a running chunk's progress reports "
            "(its worker posts the requests answered so far to the API), so request_counts "
            "move while chunks run; the dispatcher stretches it so that an endpoint's chunks "
            "send at most HOTBATCH_PROGRESS_WRITES_PER_S reports together. 0: none (counts move "
            "per chunk)."
        ),
    )
    progress_writes_per_s: int = Field(
        default=20,
        ge=1,
        description=(
            "HOTBATCH_PROGRESS_WRITES_PER_S: progress reports per second one endpoint's running "
            "chunks send at most (each is one API call and one small DynamoDB transaction)."
        ),
    )
    dispatch_queue_url: str = Field(
        default="",
        description=(
            "HOTBATCH_DISPATCH_QUEUE_URL: the SQS FIFO queue of dispatch events (a result, new "
            "work, a top-up), one message group per RunPod endpoint, so one dispatcher runs per "
            "endpoint at a time. Empty: the queue named after the table (local stack, tests)."
        ),
    )
    batch_queue_url: str = Field(
        default="",
        description=(
            "HOTBATCH_BATCH_QUEUE_URL: the SQS FIFO queue of batch events (its chunks are done, "
            "a cancel, a due look), one message group per batch. Empty: named after the table."
        ),
    )
    runpod_rest_url: str = Field(
        default="https://rest.runpod.io/v1",
        description=(
            "HOTBATCH_RUNPOD_REST_URL: RunPod's REST API, where the sweep reads each endpoint's "
            "workersMax (the dispatch window is workersMax × MAX_CONCURRENCY)."
        ),
    )
    workers_max: int = Field(
        default=0,
        ge=0,
        description=(
            "HOTBATCH_WORKERS_MAX: the endpoints' workersMax when RunPod's REST API cannot be "
            "read (0: the dispatch profile's window_max)."
        ),
    )
    result_check_s: int = Field(
        default=300,
        ge=10,
        description=(
            "HOTBATCH_RESULT_CHECK_S: with webhooks, a dispatched chunk is asked about (RunPod's "
            "/status) only this long after its last check; the webhook records results long "
            "before. Without webhooks every sweep asks."
        ),
    )
    dispatch_threads: int = Field(
        default=8,
        ge=1,
        le=64,
        description=(
            "HOTBATCH_DISPATCH_THREADS: chunks one dispatcher run claims and sends at once."
        ),
    )
    dispatch_runs_per_s: float = Field(
        default=50.0,
        gt=0,
        description=(
            "HOTBATCH_DISPATCH_RUNS_PER_S: RunPod /run calls per second per endpoint at most: "
            "half of RunPod's 1,000 per 10 s."
        ),
    )
    keep_hot_schedule: str = Field(
        default="pending",
        description=(
            "HOTBATCH_KEEP_HOT_SCHEDULE: `always`, `pending` (while work waits), `never`, "
            "`learned` (ahead of batches that recur at the same time of day), or UTC windows "
            "such as `Mon-Fri 08:00-20:00, Sat 10:00-14:00`; `pending`, `learned` and windows "
            "combine."
        ),
    )
    keep_hot_lead_s: int = Field(
        default=300,
        ge=0,
        le=86_400,
        description=(
            "HOTBATCH_KEEP_HOT_LEAD_S: for `learned`, how long before a recurring batch workers "
            "are warmed until a cold start has been measured (or always, with "
            "HOTBATCH_KEEP_HOT_LEAD_MEASURED off): one cold start of the model plus a tick."
        ),
    )
    keep_hot_lead_measured: bool = Field(
        default=True,
        description=(
            "HOTBATCH_KEEP_HOT_LEAD_MEASURED: for `learned`, warm ahead by the slowest of the "
            "last five cold starts measured (keep-hot pings sent with no worker warm) plus "
            "HOTBATCH_KEEP_HOT_LEAD_MARGIN_S, rather than the fixed lead."
        ),
    )
    keep_hot_lead_margin_s: int = Field(
        default=60,
        ge=0,
        le=3600,
        description=(
            "HOTBATCH_KEEP_HOT_LEAD_MARGIN_S: added to the measured cold start: one tick "
            "interval (the warm-up begins at the first tick inside the lead)."
        ),
    )
    keep_hot_tolerance_s: int = Field(
        default=900,
        ge=60,
        le=6 * 3600,
        description=(
            "HOTBATCH_KEEP_HOT_TOLERANCE_S: for `learned`, batches this close in time of day "
            "on different days count as one recurring batch, and a forecast one is waited for "
            "this long after its time."
        ),
    )
    keep_hot_workers: int = Field(
        default=1, ge=0, description="HOTBATCH_KEEP_HOT_WORKERS: workers kept warm in schedule."
    )
    worker_concurrency: int = Field(
        default=2,
        ge=1,
        le=16,
        description=(
            "HOTBATCH_WORKER_CONCURRENCY: the workers' MAX_CONCURRENCY (chunks one worker runs "
            "at once). Dispatch keeps at least this many chunks in flight per warm worker, so "
            "each takes its next chunk while the current one drains."
        ),
    )

    gpu_price_per_hour: float = Field(
        default=0.0,
        ge=0,
        description=(
            "HOTBATCH_GPU_PRICE_PER_HOUR: USD per hour of one worker of the RunPod endpoint (all "
            "its GPUs); a batch's `hotbatch.cost_usd` and the estimate's cost are its engine "
            "time at this price. 0: unknown, no cost is shown."
        ),
    )

    # --- admission limits ---
    max_requests_per_batch: int = Field(
        default=50_000,
        ge=1,
        le=1_000_000,
        description="HOTBATCH_MAX_REQUESTS_PER_BATCH: requests one batch may hold.",
    )
    max_file_bytes: int = Field(
        default=ONE_GB, ge=1, le=ONE_GB, description="HOTBATCH_MAX_FILE_BYTES: largest file."
    )
    max_active_batches: int = Field(
        default=100,
        ge=1,
        description="HOTBATCH_MAX_ACTIVE_BATCHES: unfinished batches per tenant.",
    )
    max_queued_requests: int = Field(
        default=2_000_000,
        ge=1,
        description="HOTBATCH_MAX_QUEUED_REQUESTS: requests in a tenant's unfinished batches.",
    )

    # --- API ---
    key_cache_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description=(
            "HOTBATCH_KEY_CACHE_S: seconds a warm API process trusts an API key lookup, so a "
            "revoked key is refused within this time (plus DynamoDB's eventually consistent "
            "read, under a second). 0: every request reads the table."
        ),
    )
    rate_limit_requests_per_minute: int = Field(
        default=3_000,
        ge=0,
        description=(
            "HOTBATCH_RATE_LIMIT_REQUESTS_PER_MINUTE: authenticated /v1 requests a tenant may "
            "make per minute, across every warm Lambda (one DynamoDB write a request); more "
            "are a 429 with `retry-after`. 0: no limit."
        ),
    )
    rate_limit_expensive_per_minute: int = Field(
        default=300,
        ge=0,
        description=(
            "HOTBATCH_RATE_LIMIT_EXPENSIVE_PER_MINUTE: of those, `POST /v1/batches/estimate` "
            "(reads up to 64 MiB) and `POST /v1/webhook_endpoints/{id}/test` (waits up to 30 s) "
            "together, counted apart (a second write on these routes only). 0: no limit."
        ),
    )

    # --- split ---
    chunk_max_requests: int = Field(
        default=1_000,
        ge=1,
        description=(
            "HOTBATCH_CHUNK_MAX_REQUESTS: requests per chunk at most, and the size before any "
            "throughput has been measured (control_plane/metering/sizing.py)."
        ),
    )
    chunk_min_requests: int = Field(
        default=100,
        ge=1,
        description=(
            "HOTBATCH_CHUNK_MIN_REQUESTS: requests per chunk at least, however slow the workers "
            "(a smaller chunk's boundary would cost more than its work)."
        ),
    )
    chunk_target_s: int = Field(
        default=120,
        ge=0,
        description=(
            "HOTBATCH_CHUNK_TARGET_S: seconds of one worker's engine time a new batch's chunks "
            "aim at, from the measured requests/s; 0 sizes by the other bounds only."
        ),
    )
    chunk_max_tokens: int = Field(
        default=2_000_000,
        ge=1_000,
        description=(
            "HOTBATCH_CHUNK_MAX_TOKENS: estimated tokens per chunk at most (a request's line "
            "bytes / 4 plus its max_tokens), so long prompts or outputs make smaller chunks."
        ),
    )
    chunk_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="HOTBATCH_CHUNK_MAX_BYTES: bytes per chunk (and the longest line).",
    )
    split_group_by_prefix: bool = Field(
        default=True,
        description=(
            "HOTBATCH_SPLIT_GROUP_BY_PREFIX: put requests that share a prompt prefix (system "
            "prompt, leading messages) in the same chunks, so a worker's prefix cache serves "
            "them; off cuts chunks in file order."
        ),
    )
    split_group_buffer_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description=(
            "HOTBATCH_SPLIT_GROUP_BUFFER_BYTES: input lines the split holds in prefix-group "
            "buffers at most; past it the largest groups are cut into a chunk early."
        ),
    )

    # --- files ---
    inline_content_max_bytes: int = Field(
        default=5 * 1024 * 1024,
        ge=0,
        description=(
            "HOTBATCH_INLINE_CONTENT_MAX_BYTES: larger file contents are a redirect to a "
            "presigned URL (Lambda responses stop at 6 MB)."
        ),
    )
    upload_part_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        description="HOTBATCH_UPLOAD_PART_BYTES: part size of presigned multipart uploads.",
    )
    presign_expires_s: int = Field(
        default=3600,
        ge=60,
        le=7 * 24 * 3600,
        description="HOTBATCH_PRESIGN_EXPIRES_S: lifetime of presigned URLs.",
    )
    upload_expires_s: int = Field(
        default=3600,
        ge=60,
        description="HOTBATCH_UPLOAD_EXPIRES_S: an upload not completed by then is dropped.",
    )

    upload_part_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        le=64 * 1024 * 1024,
        description=(
            "HOTBATCH_UPLOAD_PART_MAX_BYTES: largest part `POST /v1/uploads/{id}/parts` takes "
            "(Lambda requests stop at 6 MB, counted after API Gateway base64-encodes a binary "
            "body: 4 MiB of data is about 5.6 MB); larger parts go to the upload's `part_urls`."
        ),
    )
    upload_max_parts: int = Field(
        default=1_000,
        ge=1,
        le=100_000,
        description=(
            "HOTBATCH_UPLOAD_MAX_PARTS: parts one upload may take through "
            "`POST /v1/uploads/{id}/parts` (each is an S3 object until `complete`)."
        ),
    )
    max_pending_uploads: int = Field(
        default=100,
        ge=1,
        description=(
            "HOTBATCH_MAX_PENDING_UPLOADS: uploads a tenant may have pending (created, neither "
            "completed nor cancelled nor expired); each holds S3 parts until it ends."
        ),
    )

    # --- event webhooks (`/v1/webhook_endpoints`) ---
    event_delivery_timeout_s: float = Field(
        default=5.0,
        ge=0.5,
        le=30.0,
        description=(
            "HOTBATCH_EVENT_DELIVERY_TIMEOUT_S: how long one webhook delivery may take before it "
            "counts as failed and is retried later."
        ),
    )
    event_webhook_private_urls: bool = Field(
        default=False,
        description=(
            "HOTBATCH_EVENT_WEBHOOK_PRIVATE_URLS: let webhook endpoints be http and on private "
            "or loopback addresses (local stack only: in AWS that would reach inside the VPC)."
        ),
    )

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelRoute]) -> dict[str, ModelRoute]:
        for name in value:
            if not name.strip() or len(name) > 256:
                raise ValueError(f"model name {name[:40]!r} must be 1-256 characters")
        return value

    @field_validator("keep_hot_schedule")
    @classmethod
    def _schedule_parses(cls, value: str) -> str:
        # A typo here would otherwise surface as workers silently never (or always) kept warm.
        parse_schedule(value)
        return value.strip()
