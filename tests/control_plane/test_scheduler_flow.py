"""The tick against the local RunPod endpoint with real runpod SDK workers running the real
handler around the stand-in engine: whole batches in seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from openai import OpenAI

from infra.stack import LocalStack, StackConfig, worker_pool
from tests.control_plane.requests import CHAT, jsonl

REPO = Path(__file__).resolve().parents[2]
STANDIN = [sys.executable, "-m", "tests.control_plane.standin_worker"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    pool = worker_pool(
        workers=1,
        max_workers=2,
        command=STANDIN,
        env={"PYTHONPATH": str(REPO), "STANDIN_EXIT_ON": "POISON"},
        workdir=tmp_path_factory.mktemp("stack"),
    )
    stack = LocalStack(
        StackConfig(pool=pool, tick_interval_s=None, settings={"chunk_max_requests": 10})
    ).start()
    yield stack
    stack.stop()


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(
        base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key, max_retries=0
    )


def run_until(
    stack: LocalStack, sdk: OpenAI, batch_id: str, *done: str, timeout: float = 120
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        stack.tick()
        status = sdk.batches.retrieve(batch_id).status
        if status in done or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def test_batch_completes_with_every_custom_id_once(stack: LocalStack) -> None:
    sdk = client(stack)
    file = sdk.files.create(file=("in.jsonl", jsonl(45)), purpose="batch")
    batch = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert run_until(stack, sdk, batch.id, "completed", "failed") == "completed"
    done = sdk.batches.retrieve(batch.id)
    assert done.output_file_id is not None
    lines = [orjson.loads(x) for x in sdk.files.content(done.output_file_id).content.splitlines()]
    ids = sorted(line["custom_id"] for line in lines)
    assert ids == sorted(f"r{i}" for i in range(45))
    assert done.request_counts is not None and done.request_counts.completed == 45
    assert done.usage is not None and done.usage.input_tokens == 45 * 3
