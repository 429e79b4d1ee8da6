"""One worker kept busy across chunk boundaries, on the local stack with the real runpod SDK
worker loop and the real handler around the stand-in engine: chunks overlap on the worker,
kicks (not the scheduled tick) dispatch the next ones, and the busy share stays high."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from openai import OpenAI

from control_plane.metering.throughput import busy_share
from control_plane.store import chunks as chunk_store
from infra.stack import LocalStack, StackConfig, worker_pool
from infra.wait import wait_for
from tests.support.lines import CHAT, jsonl
from tests.support.stack import REPO, STANDIN_WORKER

pytestmark = [pytest.mark.stack]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    pool = worker_pool(
        workers=1,
        command=STANDIN_WORKER,
        # A stand-in request takes 0.5 s and the engine holds 5 at a time, as a real engine's
        # capacity would: a chunk of 20 keeps it busy for two seconds. (The runpod SDK takes at
        # most about one job a second: right after a take it counts the job twice, queued and
        # in progress, and sleeps a second; chunks must outlast that to be overlapped.)
        env={"PYTHONPATH": str(REPO), "STANDIN_DELAY_S": "0.5", "MAX_REQUESTS_IN_FLIGHT": "5"},
        workdir=tmp_path_factory.mktemp("pipelining"),
        idle_timeout_s=600,
    )
    # The scheduled tick is a minute away, as in AWS: only kicks can move this batch along.
    config = StackConfig(pool=pool, tick_interval_s=60.0, settings={"chunk_max_requests": 20})
    started = LocalStack(config).start()
    try:
        assert started.endpoint is not None and started.endpoint.backend is not None
        backend = started.endpoint.backend
        wait_for(
            lambda: backend.health()["workers"]["idle"] >= 1,
            "the worker to load its engine",
            timeout=120,
            every=0.2,
        )
        yield started
    finally:
        started.stop()


def test_kicks_keep_one_worker_busy_across_chunks_without_waiting_for_the_tick(
    stack: LocalStack,
) -> None:
    sdk = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
    file = sdk.files.create(file=("in.jsonl", jsonl(120)), purpose="batch")
    started = time.monotonic()
    batch = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    while batch.status not in ("completed", "failed") and time.monotonic() - started < 45:
        time.sleep(0.2)
        batch = sdk.batches.retrieve(batch.id)
    elapsed = time.monotonic() - started
    # 6 chunks of two seconds' work each; the scheduled tick would not even have run once.
    assert batch.status == "completed" and elapsed < 30, (batch.status, elapsed)
    assert batch.request_counts is not None and batch.request_counts.completed == 120
    assert stack.aws is not None
    chunks = chunk_store.list_chunks(stack.aws.table, batch_id=batch.id)
    assert len(chunks) == 6
    spans = sorted((c["run_started_at"], c["run_finished_at"]) for c in chunks)
    # The worker took each next chunk while the one before it was still running.
    pairs = zip(spans, spans[1:], strict=False)
    overlapping = sum(later[0] < earlier[1] for earlier, later in pairs)
    assert overlapping == 5, spans
    share = busy_share(chunks)
    assert share.workers == 1 and share.chunks == 6
    assert share.share is not None and share.share >= 0.9, share
