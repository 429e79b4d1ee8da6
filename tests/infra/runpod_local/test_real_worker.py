"""The real handler (`python -m handler` on vLLM's CPU build) behind the local RunPod endpoint,
driven by the runpod SDK: what users do to call the worker's health action locally."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import runpod

from infra.blob_server import BlobServer
from infra.runpod_local import EndpointConfig, LocalEndpoint, PoolConfig
from infra.wait import wait_for
from tests.support.chunks import read_lines, stage_chunk
from tests.support.lines import request_line
from tests.support.tiny import TINY_MAX_MODEL_LEN

pytestmark = [pytest.mark.engine, pytest.mark.e2e]


@pytest.fixture(scope="module")
def real_endpoint(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalEndpoint]:
    root = tmp_path_factory.mktemp("runpod-local")
    pool = PoolConfig(
        min_workers=1,
        max_workers=1,
        idle_timeout_s=600,
        stop_grace_s=20,
        log_dir=root / "logs",
        work_dir=root / "workers",
        env={
            "MODEL_NAME": str(tiny_model),
            "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
            "MAX_MODEL_LEN": str(TINY_MAX_MODEL_LEN),
        },
    )
    local = LocalEndpoint(config=EndpointConfig(take_poll_s=2, stop_poll_s=2), pool_config=pool)
    local.start()
    yield local
    local.stop()


@pytest.fixture()
def sdk(real_endpoint: LocalEndpoint, monkeypatch: pytest.MonkeyPatch) -> runpod.Endpoint:
    monkeypatch.setattr(runpod, "endpoint_url_base", real_endpoint.client_base_url)
    backend = real_endpoint.backend
    assert backend is not None
    wait_for(lambda: backend.health()["workers"]["idle"] == 1, "the engine to load", timeout=300)
    return runpod.Endpoint("local", api_key=real_endpoint.api_key)


def test_run_sync_health_returns_the_handlers_health_payload(sdk: runpod.Endpoint) -> None:
    report = sdk.run_sync({"action": "health"}, timeout=60)
    assert report["status"] == "ok" and report["worker_id"] == "local-worker-1"
    assert report["engine"]["model"] == "tiny"
    assert report["engine"]["max_model_len"] == TINY_MAX_MODEL_LEN
    assert report["gpus"] == [] or report["gpu_error"] is None


def test_process_chunk_job_through_run_status_output(
    sdk: runpod.Endpoint, blobs: BlobServer
) -> None:
    before = sdk.health()["jobs"]["completed"]
    job_input = stage_chunk(
        blobs, [request_line(f"r{i}", f"hi {i}", max_tokens=4) for i in range(20)]
    )
    job = sdk.run(job_input.model_dump())
    assert job.status() in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    summary = job.output(timeout=120)
    assert job.status() == "COMPLETED"
    assert summary["counts"] == {"total": 20, "completed": 20, "failed": 0}
    assert len(read_lines(blobs, job_input, "output")) == 20
    assert sdk.health()["jobs"]["completed"] == before + 1


def test_cancel_stops_a_running_chunk_and_the_worker_serves_the_next_job(
    sdk: runpod.Endpoint, blobs: BlobServer
) -> None:
    lines = [
        request_line(f"r{i}", f"long {i}", max_tokens=200, ignore_eos=True) for i in range(3000)
    ]
    job = sdk.run(stage_chunk(blobs, lines, chunk_id="long").model_dump())
    wait_for(lambda: job.status() == "IN_PROGRESS", "the chunk to start", timeout=60)
    time.sleep(1.0)
    assert job.cancel()["status"] == "CANCELLED"
    started = time.monotonic()
    # The chunk alone would take minutes on 2 cores; the worker lets go of it at once. The
    # stop reaches the worker on its own channel, so a health job taken in the same instant may
    # still see the chunk, and the engine drops the aborted requests a moment after: ask again
    # until both are gone.
    report = sdk.run_sync({"action": "health"}, timeout=120)
    while (report["jobs_in_progress"] or report["engine"]["running"]) and (
        time.monotonic() - started < 30
    ):
        time.sleep(0.5)
        report = sdk.run_sync({"action": "health"}, timeout=120)
    assert time.monotonic() - started < 30
    assert report["jobs_in_progress"] == 0 and report["engine"]["running"] == 0
    assert blobs.get("batches/batch_test/chunks/long/output.jsonl") is None


def test_one_worker_overlaps_two_chunks_and_keeps_its_engine_busy(
    sdk: runpod.Endpoint, blobs: BlobServer
) -> None:
    """The worker (MAX_CONCURRENCY 2 by default) takes the next chunk while the current one
    drains, so its engine is busy from the first chunk's start to the last one's end."""
    jobs = []
    for n in range(4):
        # Several seconds of work each: the runpod SDK looks for the next job about once a
        # second, and only a chunk longer than that can cover the look.
        lines = [
            request_line(f"c{n}-r{i}", f"hello {n} {i}", max_tokens=64, ignore_eos=True)
            for i in range(1000)
        ]
        jobs.append(sdk.run(stage_chunk(blobs, lines, chunk_id=f"busy{n}").model_dump()))
    summaries = [job.output(timeout=600) for job in jobs]
    assert [s["counts"]["completed"] for s in summaries] == [1000] * 4
    timings = [s["timings"] for s in summaries]
    assert max(t["concurrent_chunks"] for t in timings) == 2, timings
    spans = sorted((t["started_at"], t["finished_at"]) for t in timings)
    # No gap: each chunk after the first started before every chunk ahead of it had finished
    # (not only the one just ahead: two chunks taken together end in either order).
    ends = itertools.accumulate((end for _, end in spans), max)
    assert all(later[0] < end for end, later in zip(ends, spans[1:], strict=False)), spans
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    busy = sum(t["engine_busy_s"] for t in timings)
    # One clock: overlapping chunks are not counted twice (that would be ~1.5-2x the wall).
    # The chunks' stamps and the busy clock are read at slightly different moments, which
    # a loaded machine stretches to a few tens of milliseconds per chunk.
    assert busy <= wall * 1.02 + 0.2
    assert busy / wall >= 0.9, (busy, wall, timings)
