"""process_chunk around a stand-in engine: parsing, error lines, concurrency, transfers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from handler.chunk import process_chunk
from handler.contract import (
    ChunkProgress,
    ChunkSummary,
    ProcessChunkInput,
    WorkerIdentity,
    salted,
)
from handler.health import GpuStats
from handler.pipeline import EngineGate
from handler.transfer import TransferError
from infra.blob_server import BlobServer
from tests.support.chunks import read_lines, stage_chunk
from tests.support.lines import CHAT, COMPLETIONS, request_line
from tests.support.standin import StandinEngine

WORKER = WorkerIdentity(
    worker_id="w1", hostname="h", pid=1, model="tiny", vllm_version="x", hotbatch_version="y"
)


@pytest.fixture()
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def run(
    job: ProcessChunkInput,
    engine: StandinEngine,
    session: aiohttp.ClientSession,
    *,
    max_in_flight: int = 4096,
    retries: int = 1,
    **options: Any,
) -> ChunkSummary:
    """process_chunk on the stand-in; `options` are its progress and GPU arguments."""
    return await process_chunk(
        job,
        gate=EngineGate(engine, max_in_flight),
        session=session,
        worker=WORKER,
        transfer_retries=retries,
        **options,
    )


async def test_good_requests_go_to_output_with_summed_usage(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(blobs, [request_line(f"r{i}", "hi") for i in range(5)])
    summary = await run(job, StandinEngine(), session)
    assert summary.counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}
    assert summary.usage.prompt_tokens == 15 and summary.usage.completion_tokens == 10
    assert summary.usage.cached_tokens == 5 and summary.usage.total_tokens == 25
    assert [line.custom_id for line in read_lines(blobs, job, "output")] == [
        f"r{i}" for i in range(5)
    ]
    assert read_lines(blobs, job, "errors") == []
    assert summary.worker == WORKER and summary.timings.total_s > 0


async def test_bad_lines_become_error_lines_with_line_numbers(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    lines = [
        request_line("ok-1", "hi"),
        "{not json",
        json.dumps({"custom_id": "no-body", "method": "POST", "url": CHAT}),
        request_line("wrong-url", "hi", url=COMPLETIONS),
        request_line("streamer", "hi", stream=True),
        request_line("ok-2", "hi"),
    ]
    job = stage_chunk(blobs, lines)
    summary = await run(job, StandinEngine(), session)

    assert summary.counts.completed == 2 and summary.counts.failed == 4
    failures = {failure.custom_id: failure for failure in summary.failures}
    assert failures["line-2"].code == "invalid_json_line"
    assert failures["line-2"].message.startswith("Line 2:")
    assert failures["no-body"].code == "invalid_request_line"
    assert "Line 3" in failures["no-body"].message and "body" in failures["no-body"].message
    assert failures["wrong-url"].code == "mismatched_url"
    assert failures["streamer"].code == "stream_not_supported"
    assert {f.status_code for f in summary.failures} == {400}

    errors = {line.custom_id: line for line in read_lines(blobs, job, "errors")}
    assert set(errors) == set(failures)
    response = errors["streamer"].response
    assert response is not None and response.body is not None
    assert response.status_code == 400 and response.body["error"]["param"] == "stream"
    assert {line.custom_id for line in read_lines(blobs, job, "output")} == {"ok-1", "ok-2"}


async def test_engine_error_on_one_request_is_a_500_line_not_a_failed_chunk(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(
        blobs, [request_line("a", "fine"), request_line("b", "poison"), request_line("c", "x")]
    )
    summary = await run(job, StandinEngine(crash_on="poison"), session)
    assert summary.counts.completed == 2
    assert [(f.custom_id, f.status_code, f.code) for f in summary.failures] == [
        ("b", 500, "engine_error")
    ]


async def test_engine_reported_error_keeps_its_status(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(blobs, [request_line("a", "x", model="other")])
    summary = await run(job, StandinEngine(), session)
    assert [(f.status_code, f.code, f.type) for f in summary.failures] == [
        (404, "not_found", "NotFoundError")
    ]


async def test_all_requests_are_in_flight_together(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(blobs, [request_line(f"r{i}", "hi") for i in range(300)])
    engine = StandinEngine(delay_s=0.05)
    summary = await run(job, engine, session)
    assert summary.counts.completed == 300
    assert engine.peak_in_flight == 300
    # 300 sequential 50 ms requests would take 15 s.
    assert summary.timings.engine_s < 5


async def test_in_flight_bound_is_respected(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(blobs, [request_line(f"r{i}", "hi") for i in range(50)])
    engine = StandinEngine()
    await run(job, engine, session, max_in_flight=7)
    assert engine.peak_in_flight == 7


async def test_unreadable_input_url_fails_the_job_with_a_clear_error(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(blobs, [request_line("a", "hi")])
    broken = job.model_copy(
        update={"input_url": job.input_url.replace("signature=", "signature=0")}
    )
    with pytest.raises(TransferError) as caught:
        await run(broken, StandinEngine(), session)
    message = str(caught.value)
    assert "input download failed" in message and "403" in message
    assert "signature=" not in message  # the signature is redacted


async def test_unreachable_output_url_fails_the_job(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(blobs, [request_line("a", "hi")])
    dead = job.model_copy(update={"output_url": "http://127.0.0.1:9/nowhere?signature=x"})
    with pytest.raises(TransferError, match="output upload failed"):
        await run(dead, StandinEngine(), session, retries=2)


async def test_transient_5xx_on_upload_is_retried(
    blobs: BlobServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = stage_chunk(blobs, [request_line("a", "hi")])
    original = blobs.check
    failures = {"left": 1}

    def flaky(method: str, key: str, query: dict[str, list[str]]) -> str | None:
        if method == "PUT" and key.endswith("output.jsonl") and failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("dropped")
        return original(method, key, query)

    monkeypatch.setattr(blobs, "check", flaky)
    summary = await run(job, StandinEngine(), session, retries=3)
    assert summary.counts.completed == 1
    assert len(read_lines(blobs, job, "output")) == 1


async def test_progress_is_reported_while_the_chunk_runs_and_only_when_it_moved(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    # Requests end one after another over ~0.8 s; one of them fails (an unknown model).
    lines = [request_line(f"r{i}", f"standin-sleep={0.1 * i}") for i in range(8)]
    lines[3] = request_line("bad", "standin-sleep=0.3", model="nope")
    job = stage_chunk(blobs, lines)
    reports: list[ChunkProgress] = []
    summary = await run(
        job, StandinEngine(), session, progress=reports.append, progress_interval_s=0.15
    )
    assert summary.counts.completed == 7 and summary.counts.failed == 1
    assert 2 <= len(reports) <= 6, reports
    assert {(p.batch_id, p.chunk_id, p.attempt, p.requests) for p in reports} == {
        (job.batch_id, job.chunk_id, job.attempt, 8)
    }
    answered = [p.completed + p.failed for p in reports]
    assert answered == sorted(set(answered)), answered  # only sent when it moved
    assert 0 < answered[0] < 8
    assert any(p.failed == 1 for p in reports)


async def test_a_failing_progress_sender_never_fails_the_chunk(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(blobs, [request_line(f"r{i}", f"standin-sleep={0.1 * i}") for i in range(4)])

    def broken(progress: ChunkProgress) -> None:
        raise ConnectionError("RunPod unreachable")

    summary = await run(job, StandinEngine(), session, progress=broken, progress_interval_s=0.05)
    assert summary.counts.completed == 4


async def test_the_summary_carries_the_gpu_readings_taken_while_the_chunk_ran(
    blobs: BlobServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("handler.chunk.GPU_SAMPLE_S", 0.1)
    utilization = iter([40.0, 80.0, 90.0, 70.0, 60.0, 50.0, 30.0, 20.0, 10.0])
    reads = 0

    def read() -> tuple[list[GpuStats], str | None]:
        nonlocal reads
        reads += 1
        used = 1000.0 * reads
        gpu = GpuStats(
            index=0,
            name="H100",
            memory_used_mb=used,
            memory_total_mb=81920.0,
            memory_percent=100 * used / 81920,
            utilization_percent=next(utilization),
            temperature_c=None,
            power_w=None,
            power_limit_w=None,
        )
        return [gpu], None

    job = stage_chunk(blobs, [request_line(f"r{i}", f"standin-sleep={0.1 * i}") for i in range(4)])
    summary = await run(job, StandinEngine(), session, gpu_read=read)
    (gpu,) = summary.gpus
    # At the start, every 0.1 s while the ~0.3 s of requests run, and once at the end.
    assert gpu.samples == reads and 3 <= reads <= 8, reads
    taken = [40.0, 80.0, 90.0, 70.0, 60.0, 50.0, 30.0, 20.0, 10.0][:reads]
    assert gpu.utilization_percent == round(sum(taken) / reads, 1)
    assert gpu.memory_used_mb == 1000.0 * reads and gpu.memory_total_mb == 81920.0
    assert ChunkSummary.model_validate(summary.model_dump()).gpus == summary.gpus


async def test_no_gpu_readings_leave_the_summary_without_gpus(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    job = stage_chunk(blobs, [request_line("r0", "hi")])
    summary = await run(
        job, StandinEngine(), session, gpu_read=lambda: ([], "NVML unavailable: no driver")
    )
    assert summary.gpus == [] and summary.counts.completed == 1


async def test_every_request_runs_under_the_tenants_cache_salt(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    # A line's own salt is mixed in, never used alone: no salt a tenant picks reaches another
    # tenant's cached blocks (the engine test checks the cache itself).
    lines = [request_line("plain"), request_line("own", cache_salt="x"), request_line("b")]
    engine = StandinEngine()
    job = stage_chunk(blobs, lines).model_copy(update={"cache_salt": "tenant-a-salt"})
    await run(job, engine, session)
    salts = {body["messages"][0]["content"]: body["cache_salt"] for body in engine.seen}
    assert salts["hi plain"] == salts["hi b"] == "tenant-a-salt"
    assert salts["hi own"] not in ("x", "tenant-a-salt")
    assert salted("tenant-a-salt", "x") != salted("tenant-b-salt", "x")
    assert len(salted("t", "x" * 500)) <= 128


async def test_without_a_tenant_salt_the_line_goes_as_sent(
    blobs: BlobServer, session: aiohttp.ClientSession
) -> None:
    engine = StandinEngine()
    await run(stage_chunk(blobs, [request_line("r", cache_salt="mine")]), engine, session)
    assert engine.seen[0]["cache_salt"] == "mine"
