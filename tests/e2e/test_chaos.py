"""The chaos soak's CI twin (`bench/chaos.py` runs it at 20,000 requests): one batch through
the local stack's real workers while workers are killed, the RunPod client API answers 5xx and
stalls, ticks are killed mid-way and webhooks arrive twice. Every request is answered exactly
once and the batch's counts match its files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from infra.chaos import ChaosPlan, chat_stack, soak, wait_warm
from infra.stack import LocalStack

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
PLAN = ChaosPlan(worker_kills=2, error_bursts=1, stall_bursts=1, tick_kills=2, duplicate_webhooks=2)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = chat_stack(tmp_path, chunk_size=100).start()
    try:
        wait_warm(stack)
        yield stack
    finally:
        stack.stop()


def test_a_batch_under_chaos_answers_every_request_exactly_once(stack: LocalStack) -> None:
    client = OpenAI(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
    # 64 tokens each: long enough on 2 cores for every fault to land while the batch runs.
    report = soak(stack, client, requests=2_000, plan=PLAN, max_tokens=64, timeout_s=900)
    assert report.caused == {
        "kill_worker": 2,
        "error_burst": 1,
        "stall_burst": 1,
        "kill_tick": 2,
        "duplicate_webhooks": 2,
    }, report.summary()
    assert report.status == "completed", report.summary()
    assert (report.lost, report.duplicated) == (0, 0), report.summary()
    assert report.counts_exact, report.summary()
    assert report.webhooks_redelivered > 0
    assert report.worker_starts >= 2  # the killed workers were replaced
