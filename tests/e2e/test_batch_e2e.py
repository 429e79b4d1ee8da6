"""End to end on real parts: the official openai SDK → the control plane under uvicorn → moto →
the tick → the local RunPod endpoint → real worker processes (`python -m handler`) on vLLM's
CPU build with the tiny model → webhooks → merged files read back through the SDK."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from infra.runpod_local.models import Job
from infra.stack import LocalStack, StackConfig, worker_pool
from infra.wait import wait_for
from tests.support.lines import CHAT, request_line
from tests.support.stack import file_lines, sdk
from tests.support.tiny import TINY_MAX_MODEL_LEN, TINY_MODEL_NAME

pytestmark = [pytest.mark.engine, pytest.mark.e2e]

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "schema": {
            "type": "object",
            "properties": {"hire": {"type": "boolean"}},
            "required": ["hire"],
        },
    },
}


@pytest.fixture(scope="module")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    env = {
        "MODEL_NAME": str(tiny_model),
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": TINY_MODEL_NAME,
        "MAX_MODEL_LEN": str(TINY_MAX_MODEL_LEN),
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    }
    pool = worker_pool(
        workers=1, max_workers=1, env=env, workdir=tmp_path_factory.mktemp("e2e-stack")
    )
    stack = LocalStack(
        StackConfig(pool=pool, tick_interval_s=0.5, settings={"chunk_max_requests": 40})
    ).start()
    assert stack.endpoint is not None and stack.endpoint.backend is not None
    backend = stack.endpoint.backend
    wait_for(
        lambda: backend.health()["workers"]["idle"] >= 1,
        "the worker to load its engine",
        timeout=600,
        every=0.5,
    )
    yield stack
    stack.stop()


# Short, greedy answers unless a line says otherwise.
line = functools.partial(request_line, max_tokens=8, temperature=0.0)


def wait(client: OpenAI, batch_id: str, timeout: float = 600) -> str:
    def ended() -> str | None:
        status = client.batches.retrieve(batch_id).status
        return status if status in ("completed", "failed", "expired", "cancelled") else None

    return wait_for(ended, f"batch {batch_id} to end", timeout=timeout, every=0.5)


def test_a_batch_runs_to_completed_with_every_request_once_and_exact_counts(
    stack: LocalStack,
) -> None:
    client = sdk(stack)
    lines = [line(f"chat-{i}", f"evaluate candidate {i}", seed=i) for i in range(90)]
    lines += [line(f"schema-{i}", f"verdict on {i}", response_format=SCHEMA) for i in range(8)]
    # A line vLLM refuses on its own (the split checks the model, not the sampling values).
    lines.append(line("bad-params", "hello", temperature=-1.0))
    lines.append(line("too-long", "word " * 2000))  # beyond the 512-token context
    file = client.files.create(file=("e2e.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")

    assert wait(client, batch.id) == "completed"
    done = client.batches.retrieve(batch.id)
    outputs, errors = (
        file_lines(client, done.output_file_id),
        file_lines(client, done.error_file_id),
    )
    seen = [x["custom_id"] for x in outputs + errors]
    assert sorted(seen) == sorted(json.loads(x)["custom_id"] for x in lines)  # each exactly once
    assert {x["custom_id"] for x in errors} == {"bad-params", "too-long"}
    assert {x["response"]["status_code"] for x in errors} == {400}
    assert all(x["response"]["status_code"] == 200 for x in outputs)

    counts, usage = done.request_counts, done.usage
    assert counts is not None and usage is not None
    assert (counts.total, counts.completed, counts.failed) == (100, len(outputs), len(errors))
    prompt = sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in outputs)
    completion = sum(x["response"]["body"]["usage"]["completion_tokens"] for x in outputs)
    assert (usage.input_tokens, usage.output_tokens) == (prompt, completion)
    assert usage.total_tokens == prompt + completion and completion > 0
    # Guided decoding ran (8 tokens cut the object short, but it starts as the schema says).
    for x in outputs:
        if x["custom_id"].startswith("schema-"):
            assert x["response"]["body"]["choices"][0]["message"]["content"].startswith("{")

    letters = client.get(f"/batches/{batch.id}/dead_letters", cast_to=httpx.Response).json()
    assert sorted(d["custom_id"] for d in letters["data"]) == ["bad-params", "too-long"]

    # A redrive runs just that request again on the engine; it fails the same way, so it is a
    # dead letter again and nothing else moves.
    body = {"custom_ids": ["too-long"]}
    again = client.post(f"/batches/{batch.id}/retry", cast_to=httpx.Response, body=body).json()
    assert again["status"] == "in_progress"
    assert wait(client, batch.id) == "completed"
    redone = client.batches.retrieve(batch.id)
    assert redone.request_counts is not None
    assert (redone.request_counts.completed, redone.request_counts.failed) == (98, 2)
    assert sorted(x["custom_id"] for x in file_lines(client, redone.error_file_id)) == [
        "bad-params",
        "too-long",
    ]
    assert len(file_lines(client, redone.output_file_id)) == 98


def test_a_worker_killed_mid_chunk_loses_and_duplicates_nothing(stack: LocalStack) -> None:
    client = sdk(stack)
    lines = [
        line(f"long-{i}", f"write about topic {i}", max_tokens=200, ignore_eos=True)
        for i in range(80)
    ]
    file = client.files.create(file=("kill.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert stack.endpoint is not None and stack.endpoint.backend and stack.endpoint.pool
    backend, pool = stack.endpoint.backend, stack.endpoint.pool

    def running() -> Job | None:
        jobs = list(backend.jobs.values())
        return next((j for j in jobs if j.status == "IN_PROGRESS" and j.worker_id), None)

    victim = wait_for(running, "a chunk to start", timeout=120)
    assert victim.worker_id is not None
    pool.kill(victim.worker_id)  # as an OOM kill would

    assert wait(client, batch.id) == "completed"
    done = client.batches.retrieve(batch.id)
    outputs = file_lines(client, done.output_file_id)
    ids = [x["custom_id"] for x in outputs]
    assert len(ids) == len(set(ids)) == 80
    assert done.request_counts is not None and done.request_counts.completed == 80
    assert backend.jobs[victim.id].retries >= 1 or backend.jobs[victim.id].status == "FAILED"
