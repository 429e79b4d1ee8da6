"""The handler entry point: routing by action, error strings, cancellation, health."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from handler import main
from handler.engine import EngineDead
from handler.runtime import Runtime, start_runtime
from handler.settings import WorkerSettings
from infra.blob_server import BlobServer
from tests.support.chunks import read_lines, stage_chunk
from tests.support.lines import request_line
from tests.support.standin import StandinEngine, engine_factory


@pytest.fixture()
def standin_runtime() -> Iterator[Runtime]:
    engine = StandinEngine(delay_s=0.02)
    runtime = start_runtime(
        WorkerSettings(worker_id="w-test"), engine_factory=engine_factory(engine)
    )
    main.install(runtime)
    yield runtime
    main.install(None)
    runtime.stop()


async def test_unknown_action_names_the_valid_ones(standin_runtime: Runtime) -> None:
    result = await main.handler({"id": "j1", "input": {"action": "explode"}})
    assert result == {"error": "unknown action 'explode': valid actions are process_chunk, health"}


async def test_missing_input_is_an_error_string(standin_runtime: Runtime) -> None:
    result = await main.handler({"id": "j1"})
    assert isinstance(result["error"], str) and "valid actions" in result["error"]


async def test_invalid_chunk_input_names_the_field(standin_runtime: Runtime) -> None:
    result = await main.handler({"id": "j1", "input": {"action": "process_chunk"}})
    assert result["error"].startswith("invalid process_chunk input:")
    assert "batch_id" in result["error"] and "input_url" in result["error"]


async def test_process_chunk_returns_the_summary(
    standin_runtime: Runtime, blobs: BlobServer
) -> None:
    job = stage_chunk(blobs, [request_line("a", "hi"), request_line("b", "hi")])
    result = await main.handler({"id": "j1", "input": job.model_dump()})
    assert result["counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert result["worker"]["worker_id"] == "w-test"
    assert len(read_lines(blobs, job, "output")) == 2
    assert standin_runtime.chunks_done == 1


async def test_transfer_failure_is_an_error_string_and_recorded(
    standin_runtime: Runtime, blobs: BlobServer
) -> None:
    job = stage_chunk(blobs, [request_line("a", "hi")])
    job = job.model_copy(update={"input_url": blobs.presign("GET", "missing/key")})
    result = await main.handler({"id": "j1", "input": job.model_dump()})
    assert isinstance(result["error"], str) and "404" in result["error"]
    assert standin_runtime.last_error is not None and "404" in standin_runtime.last_error


async def test_cancelled_job_reraises_and_stops_its_requests(
    standin_runtime: Runtime, blobs: BlobServer
) -> None:
    engine = standin_runtime.engine
    assert isinstance(engine, StandinEngine)
    engine.delay_s = 5.0
    job = stage_chunk(blobs, [request_line(f"r{i}", "hi") for i in range(20)])
    task = asyncio.ensure_future(main.handler({"id": "j1", "input": job.model_dump()}))
    await asyncio.sleep(0.5)
    assert engine.in_flight == 20
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.2)
    assert engine.in_flight == 0
    assert standin_runtime.jobs_in_progress == 0


async def test_health_answers_without_gpu_with_a_reason(standin_runtime: Runtime) -> None:
    result = await main.handler({"id": "h", "input": {"action": "health"}})
    assert result["status"] == "ok" and result["worker_id"] == "w-test"
    # Either real GPUs and no error, or none and the reason (CI has no GPU).
    assert bool(result["gpus"]) != bool(result["gpu_error"])
    assert result["engine"]["model"] == "tiny"
    assert result["system"]["threads"] >= 2 and result["system"]["process_rss_mb"] > 0
    assert result["system"]["asyncio_tasks"] >= 1


async def test_handler_without_runtime_asks_for_a_new_worker() -> None:
    main.install(None)
    result = await main.handler({"id": "j", "input": {"action": "health"}})
    assert result["refresh_worker"] is True and "not loaded" in result["error"]


def test_ready_file_exists_only_while_the_engine_is_loaded(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    settings = WorkerSettings(hotbatch_ready_file=str(ready))
    runtime = start_runtime(settings, engine_factory=engine_factory(StandinEngine()))
    assert ready.exists()
    runtime.stop()
    assert not ready.exists()


def test_monitor_logs_health_periodically(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="handler")
    settings = WorkerSettings(enable_vllm_monitor=True, vllm_monitor_interval=0.05)
    runtime = start_runtime(settings, engine_factory=engine_factory(StandinEngine()))
    try:
        time.sleep(0.4)
    finally:
        runtime.stop()
    reports = [r for r in caplog.records if r.getMessage() == "vllm monitor"]
    assert len(reports) >= 2
    assert reports[0].health["engine"]["model"] == "tiny"  # type: ignore[attr-defined]


def test_engine_start_failure_is_raised_with_its_cause() -> None:
    @contextlib.asynccontextmanager
    async def broken(_settings: WorkerSettings) -> AsyncIterator[StandinEngine]:
        raise ValueError("max_model_len 99999 is larger than the KV cache")
        yield StandinEngine()  # pragma: no cover

    with pytest.raises(RuntimeError, match="engine failed to start: max_model_len"):
        start_runtime(WorkerSettings(), engine_factory=broken)


async def test_dead_engine_fails_the_job_and_asks_for_a_fresh_worker(
    standin_runtime: Runtime, blobs: BlobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def dead(endpoint: str, body: dict[str, object]) -> object:
        raise EngineDead("EngineCore died: CUDA out of memory")

    monkeypatch.setattr(standin_runtime.engine, "run", dead)
    job = stage_chunk(blobs, [request_line("a", "hi"), request_line("b", "hi")])
    result = await main.handler({"id": "j1", "input": job.model_dump()})
    assert result["refresh_worker"] is True
    assert "engine dead" in result["error"] and "out of memory" in result["error"]
    assert blobs.get("batches/batch_test/chunks/00001/output.jsonl") is None  # nothing partial
