"""Engine time, cost, cache hit rate, throughput and ETA on every batch, and the estimate of a
file before it is submitted (moto; no worker: chunk results are recorded by hand)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.ids import now_s
from control_plane.metering import figures, rates
from control_plane.metering.estimate import build_estimate, scan
from control_plane.models import Batch, BatchRequestCounts, BatchUsage, EstimateBody
from control_plane.scheduler import record
from control_plane.scheduler.context import TickContext
from control_plane.store import ChunkItem
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from control_plane.store import throughput as throughput_store
from handler.contract import (
    ChunkCounts,
    ChunkSummary,
    ChunkTimings,
    ChunkUsage,
    WorkerIdentity,
)
from tests.support.api import auth, create_batch, upload_id
from tests.support.lines import CHAT, request_line

PRICE = 3.6  # USD per worker-hour: one engine-second costs a thousandth of a dollar


def summary(
    chunk: ChunkItem,
    *,
    engine_s: float,
    worker: str = "w1",
    busy_s: float = 0.0,
    started_cold: bool = False,
) -> ChunkSummary:
    return ChunkSummary(
        batch_id=chunk["batch_id"],
        chunk_id=chunk["chunk_id"],
        attempt=int(chunk["attempts"]),
        endpoint=CHAT,
        counts=ChunkCounts(total=10, completed=9, failed=1),
        usage=ChunkUsage(prompt_tokens=400, completion_tokens=100, cached_tokens=100),
        failures=[],
        timings=ChunkTimings(
            engine_s=engine_s, total_s=engine_s + 1, engine_busy_s=busy_s, started_cold=started_cold
        ),
        worker=WorkerIdentity(
            worker_id=worker,
            hostname="h",
            pid=1,
            model="tiny",
            vllm_version="x",
            hotbatch_version="x",
        ),
    )


def running_batch(client: TestClient, aws: Aws, key: str, lines: int) -> str:
    content = "\n".join(request_line(f"r{i}") for i in range(lines)).encode()
    reply = create_batch(client, key, upload_id(client, key, content))
    assert reply.status_code == 200, reply.text
    batch_id = str(reply.json()["id"])
    item = batch_store.get_batch_item(aws.table, batch_id=batch_id, tenant_id=None)
    assert item["status"] == "in_progress"  # the split ran before the reply
    return batch_id


def dispatched(aws: Aws, batch_id: str, number: int, *, at: int) -> ChunkItem:
    chunk = chunk_store.get_chunk(aws.table, batch_id=batch_id, chunk_id=f"{number:05d}")
    assert chunk is not None
    return chunk_store.claim(aws.table, chunk, lease_until=at + 600, check_at=at + 300, now=at)


def tick_context(aws: Aws, now: int) -> TickContext:
    unreachable = RunPodClient(base_url="http://127.0.0.1:9/v2", endpoint_id="none", api_key="x")
    return TickContext(aws=aws, runpod=unreachable, now=now)


@pytest.mark.parametrize(
    "settings", [{"gpu_price_per_hour": PRICE, "chunk_max_requests": 10}], indirect=True
)
def test_recorded_chunks_add_engine_time_once_and_fill_the_batch_figures(
    client: TestClient, aws: Aws, key_a: str
) -> None:
    batch_id = running_batch(client, aws, key_a, 20)
    start = now_s()
    first = dispatched(aws, batch_id, 0, at=start)
    ctx = tick_context(aws, start + 7)
    job = {"status": "COMPLETED", "delayTime": 500, "executionTime": 6000}
    assert record.complete_chunk(ctx, first, summary(first, engine_s=5.5), job=job) == "done"
    # The same result delivered again (webhook and poll) counts once: time, tokens and sample.
    assert record.complete_chunk(ctx, first, summary(first, engine_s=5.5)) == "stale"

    batch = client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).json()
    extra = batch["hotbatch"]
    assert extra["engine_seconds"] == 5.5
    assert extra["cost_usd"] == pytest.approx(5.5 * PRICE / 3600)
    assert extra["cache_hit_rate"] == 0.25  # 100 cached of 400 prompt tokens
    assert batch["request_counts"] == {"total": 20, "completed": 9, "failed": 1}
    assert extra["eta_at"] is not None and extra["eta_at"] >= batch["in_progress_at"]

    buckets = throughput_store.buckets_since(aws.table, since=start - 600)
    measured = rates.aggregate(buckets)
    assert measured is not None and measured.cold  # the worker's first chunk, and only it
    assert (measured.chunks, measured.requests, measured.input_tokens) == (1, 10, 400)
    assert measured.engine_s == 5.5 and measured.latency_s == 7.0
    assert measured.queued_s == 0.5
    assert measured.overhead_per_chunk_s == pytest.approx(7 - 0.5 - 5.5)
    assert measured.input_tokens_per_byte == pytest.approx(400 / int(first["bytes"]))

    # The same worker's next chunk is measured as a warm one: from then on only those count.
    second = dispatched(aws, batch_id, 1, at=start)
    ctx = tick_context(aws, start + 4)
    assert record.complete_chunk(ctx, second, summary(second, engine_s=3.0), job=job) == "done"
    measured = rates.aggregate(throughput_store.buckets_since(aws.table, since=start - 600))
    assert measured is not None and not measured.cold
    assert (measured.chunks, measured.engine_s, measured.workers) == (1, 3.0, 1)
    extra = client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).json()["hotbatch"]
    assert extra["engine_seconds"] == 8.5
    assert extra["eta_at"] <= now_s() + 1  # every request done: due as soon as it finalizes


@pytest.mark.parametrize(
    "settings", [{"gpu_price_per_hour": PRICE, "chunk_max_requests": 10}], indirect=True
)
def test_chunks_that_overlapped_on_a_worker_count_its_busy_clock_not_their_spans(
    client: TestClient, aws: Aws, key_a: str
) -> None:
    """Two chunks pipelined on one worker each ran 6 s, over the same 7 s of engine time: the
    batch's engine time and cost follow the worker's busy clock (3.5 s + 3.5 s), not 12 s."""
    batch_id = running_batch(client, aws, key_a, 20)
    start = now_s()
    job = {"status": "COMPLETED", "delayTime": 0, "executionTime": 6000}
    for number in (0, 1):
        chunk = dispatched(aws, batch_id, number, at=start)
        done = record.complete_chunk(
            tick_context(aws, start + 7), chunk, summary(chunk, engine_s=6.0, busy_s=3.5), job=job
        )
        assert done == "done"
    extra = client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).json()["hotbatch"]
    assert extra["engine_seconds"] == 7.0
    assert extra["cost_usd"] == pytest.approx(7.0 * PRICE / 3600)
    measured = rates.aggregate(throughput_store.buckets_since(aws.table, since=start - 600))
    # The worker's first chunk is its cold one; the warm one is measured at its busy share.
    assert measured is not None and (measured.chunks, measured.engine_s) == (1, 3.5)


@pytest.mark.parametrize("settings", [{"chunk_max_requests": 10}], indirect=True)
def test_a_chunk_that_overlapped_the_workers_first_is_measured_apart_with_it(
    client: TestClient, aws: Aws, key_a: str
) -> None:
    """A worker took two chunks at once on a fresh engine: the second one, recorded after the
    first, shared its one-time costs (`started_cold`), so neither is in the warm figures."""
    batch_id = running_batch(client, aws, key_a, 30)
    start = now_s()
    job = {"status": "COMPLETED", "delayTime": 0, "executionTime": 6000}
    for number, cold in ((0, True), (1, True), (2, False)):
        chunk = dispatched(aws, batch_id, number, at=start)
        done = record.complete_chunk(
            tick_context(aws, start + 5),
            chunk,
            summary(chunk, engine_s=4.0, busy_s=2.0 + number, started_cold=cold),
            job=job,
        )
        assert done == "done"
    measured = rates.aggregate(throughput_store.buckets_since(aws.table, since=start - 600))
    assert measured is not None and not measured.cold
    assert (measured.chunks, measured.engine_s) == (1, 4.0)  # only the third chunk


def test_a_batch_without_a_price_has_no_cost_and_no_eta_before_anything_ran(
    client: TestClient, aws: Aws, key_a: str
) -> None:
    batch_id = running_batch(client, aws, key_a, 3)
    extra = client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).json()["hotbatch"]
    assert extra == {
        "engine_seconds": 0.0,
        "cost_usd": None,
        "cache_hit_rate": None,
        "tokens_per_second": None,
        "eta_at": None,  # nothing measured on this batch or on the endpoint yet
    }
    listed = client.get("/v1/batches", headers=auth(key_a)).json()["data"]
    assert listed[0]["hotbatch"] == extra


def measured_rates(**changes: Any) -> rates.Rates:
    base: dict[str, Any] = {
        "chunks": 4,
        "requests": 400,
        "bytes": 40_000,
        "input_tokens": 10_000,
        "output_tokens": 10_000,
        "cached_tokens": 0,
        "engine_s": 40.0,
        "latency_s": 58.0,
        "queued_s": 10.0,
        "workers": 2,
        "since": 0,
    }
    return rates.Rates(**{**base, **changes})


def test_before_a_chunk_of_its_own_finishes_the_eta_comes_from_the_endpoint() -> None:
    batch = Batch(
        id="batch_x",
        endpoint=CHAT,
        input_file_id="file-x",
        completion_window="24h",
        status="in_progress",
        created_at=1000,
        in_progress_at=1000,
        request_counts=BatchRequestCounts(total=300),
    )
    # 300 requests at 50 tokens each = 15,000 tokens at 500 tokens per engine-second: 30 s of
    # engine time in 3 chunks over 2 workers = 2 waves of (10 s + 2 s overhead).
    done = figures.with_figures(
        batch, price_per_hour=0, now=1005, rates=measured_rates, chunk_requests=100
    )
    assert done.hotbatch.eta_at == 1000 + 24
    # Once some requests are done, its own pace counts: 100 in 20 s, 200 left → 40 s more.
    counted = batch.model_copy(
        update={
            "request_counts": BatchRequestCounts(total=300, completed=90, failed=10),
            "usage": BatchUsage(input_tokens=1000, output_tokens=1000, total_tokens=2000),
        }
    )
    done = figures.with_figures(
        counted, price_per_hour=0, now=1020, rates=measured_rates, chunk_requests=100
    )
    assert done.hotbatch.eta_at == 1060
    assert done.hotbatch.tokens_per_second == 100.0
    finished = done.model_copy(update={"status": "completed", "finalizing_at": 1040})
    final = figures.with_figures(
        finished, price_per_hour=0, now=5000, rates=measured_rates, chunk_requests=100
    )
    assert final.hotbatch.eta_at is None and final.hotbatch.tokens_per_second == 50.0


def test_aggregate_takes_the_newest_buckets_until_enough_chunks() -> None:
    buckets: list[dict[str, Any]] = [
        {"chunks": 15, "requests": 150, "engine_s": 15.0, "started_at": 900, "workers": {"a"}},
        {"chunks": 10, "requests": 100, "engine_s": 50.0, "started_at": 600, "workers": {"b"}},
        {"chunks": 99, "requests": 990, "engine_s": 999.0, "started_at": 300},
    ]
    measured = rates.aggregate(buckets, min_chunks=20)
    assert measured is not None
    assert (measured.chunks, measured.requests, measured.engine_s) == (25, 250, 65.0)
    assert (measured.workers, measured.since) == (2, 600)
    # Buckets count each worker once (`workers_seen`); the most any bucket saw stands.
    counted = [
        {"chunks": 15, "engine_s": 15.0, "started_at": 900, "workers_seen": 3},
        {"chunks": 10, "engine_s": 50.0, "started_at": 600, "workers_seen": 5},
    ]
    assert rates.aggregate(counted, min_chunks=20).workers == 5  # type: ignore[union-attr]
    assert rates.aggregate([]) is None
    only_cold: list[dict[str, Any]] = [{"cold_chunks": 2, "cold_engine_s": 9.0, "started_at": 1}]
    fallback = rates.aggregate(only_cold)
    assert fallback is not None and fallback.cold and fallback.engine_s == 9.0


def lines_with(count: int, *, max_tokens: int | None, n: int = 1) -> list[bytes]:
    body: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "x" * 40}],
        "n": n,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return [
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": CHAT, "body": body}).encode()
        for i in range(count)
    ]


def test_estimate_counts_tokens_and_predicts_time_and_cost_from_measured_throughput() -> None:
    lines = lines_with(150, max_tokens=30) + lines_with(50, max_tokens=None, n=2)
    found = scan(lines)
    assert (found.requests, found.capped, found.capped_output) == (200, 150, 4500)
    measured = measured_rates()
    estimate = build_estimate(
        EstimateBody(input_file_id="file-x", endpoint=CHAT),
        found,
        size=found.size,
        scale=1.0,
        sampled=False,
        rates=measured,
        price_per_hour=PRICE,
        chunk_requests=100,
        chunk_bytes=8 * 1024 * 1024,
    )
    assert estimate.requests == 200 and estimate.chunks == 2
    assert estimate.input_tokens_method == "measured_per_byte"
    assert estimate.input_tokens == round(found.size * 10_000 / 40_000)
    # Capped requests at max_tokens × n; the others at the measured 25 tokens per request.
    assert estimate.output_tokens == 4500 + 100 * 25
    engine = (estimate.input_tokens + estimate.output_tokens) / 500
    assert estimate.engine_seconds == pytest.approx(engine, abs=0.01)
    assert estimate.duration_seconds == pytest.approx(engine / 2 + 2, abs=0.1)  # one wave
    assert estimate.cost_usd == pytest.approx(engine * PRICE / 3600, abs=1e-5)
    assert estimate.basis is not None and estimate.basis.tokens_per_engine_second == 500


def test_estimate_without_history_uses_characters_and_has_no_duration() -> None:
    found = scan([*lines_with(10, max_tokens=None), b"not json", b""])
    estimate = build_estimate(
        EstimateBody(input_file_id="file-x", endpoint=CHAT),
        found,
        size=found.size,
        scale=1.0,
        sampled=False,
        rates=None,
        price_per_hour=PRICE,
        chunk_requests=100,
        chunk_bytes=8 * 1024 * 1024,
    )
    assert estimate.requests == 11 and estimate.invalid_lines == 1
    assert estimate.input_tokens == 10 * (40 // 4 + 4)
    assert estimate.output_tokens == 10 * 256
    assert estimate.duration_seconds is None and estimate.cost_usd is None
    assert any("no measured throughput" in note for note in estimate.notes)


@pytest.mark.parametrize("settings", [{"chunk_max_requests": 4}], indirect=True)
def test_the_estimate_route_reads_the_file_and_rejects_other_tenants(
    client: TestClient, key_a: str, key_b: str
) -> None:
    content = b"\n".join(lines_with(9, max_tokens=7)) + b"\n"
    file_id = upload_id(client, key_a, content)
    reply = client.post(
        "/v1/batches/estimate",
        headers=auth(key_a),
        json={"input_file_id": file_id, "endpoint": CHAT},
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["requests"], body["output_tokens"], body["chunks"]) == (9, 63, math.ceil(9 / 4))
    assert body["bytes"] == len(content) and body["sampled"] is False
    other = client.post(
        "/v1/batches/estimate", headers=auth(key_b), json={"input_file_id": file_id}
    )
    assert other.status_code == 404 and other.json()["error"]["param"] == "input_file_id"


def test_a_worker_holding_two_chunks_overlaps_their_overheads_not_their_engine_time() -> None:
    measured = measured_rates(workers=1)
    one = rates.predict(measured, tokens=4000.0, chunks=4)
    two = rates.predict(measured, tokens=4000.0, chunks=4, concurrency=2)
    assert one is not None and two is not None
    overhead = measured.overhead_per_chunk_s
    assert overhead > 0
    assert one.duration_s == pytest.approx(one.engine_s + 4 * overhead)
    assert two.duration_s == pytest.approx(two.engine_s + 2 * overhead)  # two waves of two
