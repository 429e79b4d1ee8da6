"""The tick against the local RunPod endpoint with real runpod SDK workers running the real
handler around the stand-in engine: whole batches in seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from infra.stack import LocalStack, StackConfig
from infra.wait import wait_for
from tests.support.lines import CHAT, jsonl, request_line
from tests.support.stack import file_lines, sdk, standin_pool

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def flaky_switch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("switch") / "fail"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, flaky_switch: Path) -> Iterator[LocalStack]:
    pool = standin_pool(
        tmp_path_factory.mktemp("stack"),
        workers=1,
        max_workers=2,
        env={"STANDIN_EXIT_ON": "POISON", "STANDIN_FAIL_WHILE": str(flaky_switch)},
    )
    stack = LocalStack(
        StackConfig(pool=pool, tick_interval_s=None, settings={"chunk_max_requests": 10})
    ).start()
    yield stack
    stack.stop()


def run_until(stack: LocalStack, client: OpenAI, batch_id: str, *done: str) -> str:
    """Tick until the batch reaches one of `done`; its status then."""

    def ended() -> str | None:
        stack.tick()
        status = client.batches.retrieve(batch_id).status
        return status if status in done else None

    return wait_for(ended, f"batch {batch_id} to reach {done}", timeout=120, every=0.3)


def test_batch_completes_with_every_custom_id_once(stack: LocalStack) -> None:
    client = sdk(stack)
    file = client.files.create(file=("in.jsonl", jsonl(45)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert run_until(stack, client, batch.id, "completed", "failed") == "completed"
    done = client.batches.retrieve(batch.id)
    assert done.output_file_id is not None
    ids = sorted(line["custom_id"] for line in file_lines(client, done.output_file_id))
    assert ids == sorted(f"r{i}" for i in range(45))
    assert done.request_counts is not None and done.request_counts.completed == 45
    assert done.usage is not None and done.usage.input_tokens == 45 * 3


def test_failed_requests_are_dead_letters_and_a_redrive_merges_their_results(
    stack: LocalStack, flaky_switch: Path
) -> None:
    client = sdk(stack)
    lines = [request_line(f"ok{i}") for i in range(12)]
    lines += [request_line(f"flaky{i}", "FLAKY") for i in range(3)]
    file = client.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
    flaky_switch.touch()
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert run_until(stack, client, batch.id, "completed", "failed") == "completed"
    first = client.batches.retrieve(batch.id)
    assert first.request_counts is not None
    assert (first.request_counts.completed, first.request_counts.failed) == (12, 3)
    assert sorted(x["custom_id"] for x in file_lines(client, first.error_file_id)) == [
        "flaky0",
        "flaky1",
        "flaky2",
    ]
    letters = client.get(f"/batches/{batch.id}/dead_letters", cast_to=httpx.Response).json()
    assert sorted(d["custom_id"] for d in letters["data"]) == ["flaky0", "flaky1", "flaky2"]
    assert {d["status_code"] for d in letters["data"]} == {500}

    flaky_switch.unlink()  # the upstream recovered
    redriven = client.post(f"/batches/{batch.id}/retry", cast_to=httpx.Response, body={}).json()
    assert redriven["status"] == "in_progress"
    assert run_until(stack, client, batch.id, "completed", "failed") == "completed"
    done = client.batches.retrieve(batch.id)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (15, 0)
    outputs = sorted(x["custom_id"] for x in file_lines(client, done.output_file_id))
    assert outputs == sorted([f"ok{i}" for i in range(12)] + [f"flaky{i}" for i in range(3)])
    assert file_lines(client, done.error_file_id) == []
    after = client.get(f"/batches/{batch.id}/dead_letters", cast_to=httpx.Response).json()
    assert after["data"] == []
