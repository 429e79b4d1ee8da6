"""Throughput at scale on the control plane: the engine-busy share a batch's chunks record, the
measured throughput the scheduler keeps, the dispatch floor per worker, chunk sizing, and the
tick kicked by a webhook result."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.metering import sizing
from control_plane.metering.throughput import busy_share
from control_plane.scheduler import policy, record
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.tick import drain
from control_plane.settings import Settings
from control_plane.store import ChunkItem
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store import endpoint as endpoint_store
from control_plane.webhooks import signature
from handler.contract import (
    ChunkCounts,
    ChunkSummary,
    ChunkTimings,
    ChunkUsage,
    WorkerIdentity,
)
from tests.support.api import create_batch, make_settings, upload_id
from tests.support.lines import jsonl

PROFILE = policy.PROFILES["medium"]


# --- the scheduler state: throughput and the dispatch floor ---------------------------------


def test_throughput_is_seeded_by_the_first_chunk_then_averaged() -> None:
    state = policy.SchedulerState(window=4)
    assert state.requests_per_s is None and state.tokens_per_s is None
    state = policy.on_throughput(state, requests=1000, tokens=300_000, busy_s=4.0)
    assert state.requests_per_s == pytest.approx(250.0)
    assert state.tokens_per_s == pytest.approx(75_000.0)
    # A chunk that shared its worker with a neighbour reports little busy time of its own;
    # the ratio of averages moves, but stays near the worker's real rate.
    state = policy.on_throughput(state, requests=1000, tokens=300_000, busy_s=0.5)
    assert 250 < state.requests_per_s < 400  # type: ignore[operator]
    assert policy.on_throughput(state, requests=0, tokens=0, busy_s=3.0) == state
    assert policy.on_throughput(state, requests=10, tokens=10, busy_s=0.0) == state


def test_dispatch_keeps_every_warm_workers_slots_full_within_the_rules() -> None:
    state = policy.SchedulerState(window=1)  # halved to its minimum after failures
    assert policy.worker_floor(state, 2) == 2  # no worker seen yet: one worker's worth
    busy = state.model_copy(update={"workers": 3})
    assert policy.worker_floor(busy, 2) == 6
    assert policy.admit(busy, PROFILE, now=0, floor=6) == (busy, 6)
    huge = policy.worker_floor(busy.model_copy(update={"workers": 100}), 2)
    assert policy.admit(busy, PROFILE, now=0, floor=huge)[1] == PROFILE.window_max
    wide = busy.model_copy(update={"window": 20})
    assert policy.admit(wide, PROFILE, now=0, floor=6)[1] == 20  # the window when larger
    # The breaker's rules stand above the floor: nothing while open, one probe half-open.
    opened = busy.model_copy(update={"breaker": "open", "opened_at": 1000})
    assert policy.admit(opened, PROFILE, now=1001, floor=6)[1] == 0
    half_open = busy.model_copy(update={"breaker": "half_open"})
    assert policy.admit(half_open, PROFILE, now=1001, floor=6)[1] == 1


# --- chunk sizing -----------------------------------------------------------------------------


def test_token_estimate_counts_line_bytes_and_the_completion_budget() -> None:
    assert sizing.estimate_tokens(400, {"max_tokens": 8}) == 108
    assert sizing.estimate_tokens(400, {"max_completion_tokens": 50, "n": 3}) == 250
    assert sizing.estimate_tokens(40, {}) == 10 + sizing.DEFAULT_COMPLETION_TOKENS
    head = b"\n".join(
        json.dumps({"custom_id": str(i), "body": {"max_tokens": 100}}).encode() for i in range(3)
    )
    # The last line of a sample may be cut short: only complete lines count.
    assert sizing.tokens_per_request(head + b'\n{"custom_id": "3", "bo') == pytest.approx(
        (len(head.split(b"\n")[0]) + 1) // 4 + 100
    )
    assert sizing.tokens_per_request(b"not json\n") is None


@pytest.mark.parametrize(
    ("rate", "per_request", "requests", "bound"),
    [
        (None, None, 1000, "ceiling"),  # nothing measured yet
        (5.0, None, 600, "time"),  # 5 req/s x 120 s: a slow model gets smaller chunks
        (500.0, None, 1000, "ceiling"),  # a fast worker is held at the ceiling
        (None, 4000.0, 500, "tokens"),  # 2M tokens / 4,000 per request
        (0.1, None, 100, "floor"),  # never smaller than the floor
    ],
)
def test_chunk_size_takes_the_smallest_bound_clamped(
    rate: float | None, per_request: float | None, requests: int, bound: str
) -> None:
    size = sizing.chunk_size(make_settings(), requests_per_s=rate, tokens_per_request=per_request)
    assert (size.requests, size.bound) == (requests, bound)


# --- the busy share of a batch ----------------------------------------------------------------


def _chunk(worker: str, start: float, end: float, busy: float, state: str = "done") -> ChunkItem:
    return {
        "batch_id": "b",
        "chunk_id": f"{worker}{start}",
        "state": state,
        "attempts": 1,
        "worker_id": worker,
        "run_started_at": start,
        "run_finished_at": end,
        "engine_busy_s": busy,
    }


def test_busy_share_is_busy_seconds_over_each_workers_span() -> None:
    chunks: list[ChunkItem] = [
        _chunk("w1", 100.0, 110.0, 9.0),  # two chunks that overlapped on w1: 100 → 118
        _chunk("w1", 105.0, 118.0, 8.0),
        _chunk("w2", 100.0, 104.0, 2.0),
        _chunk("w2", 200.0, 300.0, 50.0, state="dispatched"),  # unfinished: left out
        {"batch_id": "b", "chunk_id": "old", "state": "done", "attempts": 1},  # no busy clock
    ]
    share = busy_share(chunks)
    assert (share.busy_s, share.span_s, share.chunks, share.workers) == (19.0, 22.0, 3, 2)
    assert share.share == pytest.approx(19 / 22)
    assert busy_share([]).share is None


# --- recording a chunk: busy fields and throughput; the kick ------------------------------------


def _summary(chunk: ChunkItem, *, busy: float) -> ChunkSummary:
    requests = int(chunk["requests"])
    return ChunkSummary(
        batch_id=chunk["batch_id"],
        chunk_id=chunk["chunk_id"],
        attempt=int(chunk["attempts"]),
        endpoint="/v1/chat/completions",
        counts=ChunkCounts(total=requests, completed=requests),
        usage=ChunkUsage(prompt_tokens=3 * requests, completion_tokens=2 * requests),
        failures=[],
        timings=ChunkTimings(
            engine_s=busy + 1.0,
            started_at=1_700_000_000.5,
            finished_at=1_700_000_000.5 + busy + 1.2,
            engine_busy_s=busy,
            worker_busy_s=100.0,
            concurrent_chunks=2,
        ),
        worker=WorkerIdentity(
            worker_id="w1",
            hostname="h",
            pid=1,
            model="tiny",
            vllm_version="x",
            hotbatch_version="y",
        ),
    )


def _in_progress_batch(client: TestClient, aws: Aws, key: str, requests: int) -> str:
    file_id = upload_id(client, key, jsonl(requests))
    reply = create_batch(client, key, file_id)
    assert reply.status_code == 200, reply.text
    batch_id = str(reply.json()["id"])
    item = batch_store.get_batch(aws.table, batch_id)
    assert item is not None and item["status"] == "in_progress"  # the inline split ran
    return batch_id


def _claimed(aws: Aws, batch_id: str) -> ChunkItem:
    (chunk,) = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    return chunk_store.claim(
        aws.table, chunk, lease_until=2_000_000_000, check_at=2_000_000_000, now=1_700_000_000
    )


def test_a_recorded_chunk_keeps_its_busy_time_and_feeds_the_throughput(
    client: TestClient, aws: Aws, key_a: str
) -> None:
    batch_id = _in_progress_batch(client, aws, key_a, 40)
    chunk = _claimed(aws, batch_id)
    ctx = TickContext(aws=aws, runpod=RunPodClient("http://unused", "e", "k"), now=1_700_000_100)
    job: dict[str, Any] = {
        "status": "COMPLETED",
        "executionTime": 3000,
        "output": _summary(chunk, busy=2.0).model_dump(),
    }
    recorded = record.record_job(ctx, chunk, job)
    assert (recorded.outcome, recorded.requests, recorded.busy_s) == ("done", 40, 2.0)
    # The result reaches the endpoint's dispatcher, which folds it into the averages.
    record.announce(ctx, chunk, recorded)
    drain(ctx)
    state = policy.load(aws.table, PROFILE, chunk["runpod_endpoint_id"])
    assert state.requests_per_s == pytest.approx(20.0)  # 40 requests over 2 busy seconds
    assert state.tokens_per_s == pytest.approx(100.0)
    (stored,) = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    assert stored["engine_busy_s"] == 2.0
    assert stored["run_started_at"] == pytest.approx(1_700_000_000.5)
    assert busy_share([stored]).share == pytest.approx(2.0 / 3.2)


def _measured(aws: Aws, *, requests: int, busy_s: float) -> None:
    state = policy.on_throughput(
        policy.SchedulerState(window=4), requests=requests, tokens=10 * requests, busy_s=busy_s
    )
    endpoint = aws.settings.runpod_endpoint_id
    before = policy.load(aws.table, PROFILE, endpoint)
    assert endpoint_store.save_scheduler_state(
        aws.table, endpoint, state.model_dump(), seen=before.version, now=1
    )


@pytest.mark.parametrize("settings", [{"chunk_min_requests": 10}], indirect=True)
def test_admission_sizes_chunks_for_the_target_time_at_the_measured_rate(
    client: TestClient, aws: Aws, key_a: str, settings: Settings
) -> None:
    _measured(aws, requests=50, busy_s=100.0)  # 0.5 requests/s per worker: a large model
    batch_id = _in_progress_batch(client, aws, key_a, 150)
    item = batch_store.get_batch(aws.table, batch_id)
    assert item is not None and item["chunk_requests"] == 60  # 0.5/s x 120 s
    chunks = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    assert [c["requests"] for c in chunks] == [60, 60, 30]  # the split cut them so


@pytest.mark.parametrize(
    "settings", [{"chunk_max_tokens": 2_000, "chunk_min_requests": 5}], indirect=True
)
def test_admission_bounds_chunks_by_the_estimated_tokens_of_the_batch(
    client: TestClient, aws: Aws, key_a: str, settings: Settings
) -> None:
    _measured(aws, requests=5000, busy_s=1.0)  # fast: time does not bound these chunks
    lines = b"".join(
        json.dumps(
            {
                "custom_id": f"t{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "tiny", "messages": [], "max_tokens": 150},
            }
        ).encode()
        + b"\n"
        for i in range(40)
    )
    per_request = sizing.tokens_per_request(lines)
    assert per_request is not None and 170 < per_request < 200  # ~120 bytes / 4 + 150
    file_id = upload_id(client, key_a, lines)
    batch_id = create_batch(client, key_a, file_id).json()["id"]
    item = batch_store.get_batch(aws.table, batch_id)
    assert item is not None and item["chunk_requests"] == int(2_000 / per_request)
    chunks = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    assert max(c["requests"] for c in chunks) == item["chunk_requests"]
    assert sum(c["requests"] for c in chunks) == 40


@pytest.mark.parametrize(
    "settings", [{"webhook_secret_value": "s3cret", "runpod_api_key": "k"}], indirect=True
)
def test_a_webhook_result_kicks_the_tick_and_a_stale_one_does_not(
    aws: Aws, key_a: str, settings: Settings
) -> None:
    kicks: list[str] = []
    with TestClient(create_app(aws=aws, kick=kicks.append)) as client:
        batch_id = _in_progress_batch(client, aws, key_a, 10)
        assert kicks == [f"split {batch_id}"]  # the inline split kicked it once done
        chunk = _claimed(aws, batch_id)
        job = {"id": "job-1", "status": "COMPLETED", "output": _summary(chunk, busy=1.0)}
        query: dict[str, str | int] = {
            "batch_id": batch_id,
            "chunk_id": chunk["chunk_id"],
            "attempt": 1,
            "sig": signature("s3cret", batch_id, chunk["chunk_id"], 1),
        }
        body = json.loads(json.dumps(job, default=lambda m: m.model_dump()))
        reply = client.post("/internal/runpod/webhook", params=query, json=body)
        assert reply.json() == {"outcome": "done"}
        assert kicks[-1] == f"chunk {batch_id}/{chunk['chunk_id']} done"
        again = client.post("/internal/runpod/webhook", params=query, json=body)
        assert again.json() == {"outcome": "stale"} and len(kicks) == 2
