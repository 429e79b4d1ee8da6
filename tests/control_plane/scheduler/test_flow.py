"""The tick against the local RunPod endpoint with real runpod SDK workers running the real
handler around the stand-in engine: whole batches in seconds."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from infra.stack import LocalStack, StackConfig, worker_pool
from tests.control_plane.requests import CHAT, jsonl, request_line

REPO = Path(__file__).resolve().parents[2]
STANDIN = [sys.executable, "-m", "tests.control_plane.standin_worker"]


@pytest.fixture(scope="module")
def flaky_switch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("switch") / "fail"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, flaky_switch: Path) -> Iterator[LocalStack]:
    pool = worker_pool(
        workers=1,
        max_workers=2,
        command=STANDIN,
        env={
            "PYTHONPATH": str(REPO),
            "STANDIN_EXIT_ON": "POISON",
            "STANDIN_FAIL_WHILE": str(flaky_switch),
        },
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


def file_lines(sdk: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in sdk.files.content(file_id).content.splitlines()]


def test_failed_requests_are_dead_letters_and_a_redrive_merges_their_results(
    stack: LocalStack, flaky_switch: Path
) -> None:
    sdk = client(stack)
    lines = [request_line(f"ok{i}") for i in range(12)]
    flaky_body = {"model": "tiny", "messages": [{"role": "user", "content": "FLAKY"}]}
    lines += [request_line(f"flaky{i}", body=flaky_body) for i in range(3)]
    file = sdk.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
    flaky_switch.touch()
    batch = sdk.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert run_until(stack, sdk, batch.id, "completed", "failed") == "completed"
    first = sdk.batches.retrieve(batch.id)
    assert first.request_counts is not None
    assert (first.request_counts.completed, first.request_counts.failed) == (12, 3)
    assert sorted(x["custom_id"] for x in file_lines(sdk, first.error_file_id)) == [
        "flaky0",
        "flaky1",
        "flaky2",
    ]
    letters = sdk.get(f"/batches/{batch.id}/dead_letters", cast_to=httpx.Response).json()
    assert sorted(d["custom_id"] for d in letters["data"]) == ["flaky0", "flaky1", "flaky2"]
    assert {d["status_code"] for d in letters["data"]} == {500}

    flaky_switch.unlink()  # the upstream recovered
    redriven = sdk.post(f"/batches/{batch.id}/retry", cast_to=httpx.Response, body={}).json()
    assert redriven["status"] == "in_progress"
    assert run_until(stack, sdk, batch.id, "completed", "failed") == "completed"
    done = sdk.batches.retrieve(batch.id)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (15, 0)
    outputs = sorted(x["custom_id"] for x in file_lines(sdk, done.output_file_id))
    assert outputs == sorted([f"ok{i}" for i in range(12)] + [f"flaky{i}" for i in range(3)])
    assert file_lines(sdk, done.error_file_id) == []
    after = sdk.get(f"/batches/{batch.id}/dead_letters", cast_to=httpx.Response).json()
    assert after["data"] == []
