"""Issue 12's fuzz run against the running local stack: `hotbatch local up` with no extra flags
(moto's server, the control plane under uvicorn, real workers on vLLM's CPU build), schemathesis
over real HTTP with every check and a fixed seed, as a tenant of its own on the stack the e2e
tests share. No server error, no undocumented status; afterwards the tenant lists and retrieves
its batches, a new batch completes on the workers and nothing the fuzzer started is still running.

The in-process twin (`tests/control_plane/api/test_fuzz.py`) runs the same configuration
against the app itself; this one meets everything between: uvicorn, moto's wire format, the
inline split and the tick that runs beside the fuzzer on the stack's own schedule.
"""

from __future__ import annotations

import io

import pytest
import schemathesis
from openai import OpenAI
from openai.types import Batch

from infra.wait import wait_for
from tests.control_plane.api.test_fuzz import MAX_EXAMPLES, fuzz_config, run_fuzzer
from tests.support.lines import CHAT, jsonl

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
TERMINAL = ("completed", "failed", "expired", "cancelled")


def test_fuzzing_the_running_local_stack_finds_nothing_and_leaves_it_working(
    local_up_tenant: dict[str, str],
) -> None:
    url, key = local_up_tenant["HOTBATCH_API_URL"], local_up_tenant["HOTBATCH_API_KEY"]
    client = OpenAI(base_url=url, api_key=key, max_retries=0)
    before = submit(client, "before.jsonl")
    root = url.removesuffix("/v1")
    schema = schemathesis.openapi.from_url(
        f"{root}/openapi.json", config=fuzz_config(key, max_examples=MAX_EXAMPLES["moto_server"])
    )
    run = run_fuzzer(schema)

    assert run.failures == [], "\n".join(sorted(set(run.failures)))
    assert sum(run.cases.values()) > 500, run.cases
    assert {"coverage", "fuzzing", "stateful"} <= set(run.cases), run.cases
    assert run.statuses[500] == 0 and run.statuses[200] > 100, run.statuses

    listed = [batch.id for batch in client.batches.list(limit=100)]
    assert before.id in listed
    for batch_id in listed:
        assert client.batches.retrieve(batch_id).id == batch_id
    for batch in (before, submit(client, "after.jsonl")):
        assert_completes(client, batch)
    # The stack is shared (tests/e2e/conftest.py): whatever the fuzzer started has ended, so no
    # test after this one finds the workers busy with it.
    wait_for(lambda: not unfinished(client), "the fuzzed batches to end", timeout=300, every=1.0)


def unfinished(client: OpenAI) -> list[str]:
    return [batch.id for batch in client.batches.list(limit=100) if batch.status not in TERMINAL]


def submit(client: OpenAI, name: str) -> Batch:
    file = client.files.create(file=(name, io.BytesIO(jsonl(4))), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")


def assert_completes(client: OpenAI, batch: Batch) -> None:
    final = wait_for(
        lambda: b if (b := client.batches.retrieve(batch.id)).status in TERMINAL else None,
        f"batch {batch.id} to end",
        timeout=300,
        every=1.0,
    )
    assert final.status == "completed", final.errors
    assert final.request_counts is not None and final.request_counts.completed == 4
