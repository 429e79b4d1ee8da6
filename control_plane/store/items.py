"""The shapes of the items the tick drives, in one place: every attribute a batch or a chunk
item may carry, so a misspelt name is a type error, not a silent miss. Items cross the store's
boundary as these dicts (DynamoDB numbers come back as int, or float where fractional).
"""

from __future__ import annotations

from typing import Any, Required, TypedDict


class BatchCounters(TypedDict, total=False):
    """What a chunk's result (or its bisection, dispatch, cancel) adds to its batch."""

    n_completed: int
    n_failed: int
    tok_input: int
    tok_output: int
    tok_cached: int
    tok_reasoning: int
    engine_s: float  # engine time from the workers' chunk summaries (hotbatch.engine_seconds)
    chunks_open: int  # chunks not in a final state; bisect and redrive add to it
    chunks_in_flight: int  # chunks dispatched and not yet recorded
    # What the running chunks' workers reported answered so far (each chunk's last report,
    # taken back when it finishes): request_counts move between chunk results.
    progress_completed: int
    progress_failed: int


class BatchItem(BatchCounters, total=False):
    """`BATCH#{id}` / `META`: OpenAI's batch object, flattened so its counters add atomically."""

    pk: str
    sk: str
    gsi1pk: str  # TENANT#{t}#BATCH: the tenant's listing
    gsi1sk: str
    gsi2pk: str  # BATCHES#due while unfinished, sorted by when it next needs a look
    gsi2sk: str
    runpod_endpoint_id: str  # the endpoint its model runs on (set by the split)
    id: Required[str]
    tenant_id: Required[str]
    status: Required[str]
    endpoint: str
    input_file_id: str
    completion_window: str
    priority: str
    model: str
    metadata_json: str  # the client's metadata as one JSON string: no value can shape the item
    metadata: dict[str, str]  # items written before metadata_json: a map, still read
    errors: list[dict[str, Any]]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    window_expires_at: int  # the completion window's end (`expires_at` is the TTL attribute)
    in_progress_at: int
    finalizing_at: int
    completed_at: int
    failed_at: int
    expired_at: int
    cancelling_at: int
    cancelled_at: int
    queued: int  # this batch's share of the tenant's queued_requests
    n_total: int
    chunk_count: int  # chunks the split wrote
    chunk_requests: (
        int  # requests per chunk, chosen at admission (control_plane/metering/sizing.py)
    )
    chunk_seq: int  # the next free chunk number (bisect and redrive make new chunks)
    output_expires_after_s: int
    redrives: int  # redrive generations so far
    stop_dispatch: bool  # set once the completion window ran out
    split_restarted_at: int
    split_restarts: int
    tick_failures: int  # consecutive ticks that failed on this batch (reset by a good tick)
    tick_failing_since: int  # when the first of those failed
    last_tick_error: str


class ChunkFields(TypedDict, total=False):
    """The attributes of a chunk item that its moves set (`chunks.finish(sets=…)`)."""

    refunds: int  # dispatches the endpoint refused (they never reached a worker)
    priority: str
    tenant_id: str  # the batch's tenant: its pending queue is the tenant's (fair queuing)
    input_key: str
    requests: int
    bytes: int
    first_line: int
    group: str  # the prefix group of the first request (a short hash; "" when ungrouped)
    groups: int  # prefix groups the chunk holds, each contiguous
    group_order: int  # the first chunk its group led: pending chunks sort by it
    created_at: int
    parent: str  # the chunk this half was bisected from
    children: list[str]
    not_before: int  # retry backoff
    last_error: str
    lease_until: int
    check_at: int  # while dispatched: when the sweep asks RunPod about it if no result came
    dispatched_at: int
    job_id: str
    webhook: bool  # its job carries a result webhook (absent on chunks from before the flag)
    runpod_endpoint_id: str  # the endpoint its job was sent to (absent: the default one)
    output_key: str
    error_key: str
    completed: int
    failed: int
    finished_at: int
    worker_id: str
    engine_s: float  # the chunk's own engine phase (overlaps its neighbours' on the worker)
    # The worker's engine-busy seconds this chunk reported (one clock per worker: summed over a
    # batch's chunks it counts each busy second once) and, on the worker's clock, when the
    # chunk started and ended there: `metering/throughput.py` makes a busy share of them.
    engine_busy_s: float
    run_started_at: float
    run_finished_at: float
    # While dispatched: the requests its worker reported answered so far, and when the tick
    # last asked (cleared by the next claim, so an earlier attempt's count never lingers).
    progress_completed: int
    progress_failed: int
    progress_at: int


class ChunkItem(ChunkFields, total=False):
    """`BATCH#{batch_id}` / `CHUNK#{n:05d}`: one chunk object and where it stands."""

    pk: str
    sk: str
    gsi2pk: str  # its tenant's PENDING#… queue, or its endpoint's DISPATCHED#… shard
    gsi2sk: str
    batch_id: Required[str]
    chunk_id: Required[str]
    state: Required[str]  # pending, dispatched, done, dead, split, cancelled, expired
    attempts: Required[int]  # dispatches so far; a number is never reused
