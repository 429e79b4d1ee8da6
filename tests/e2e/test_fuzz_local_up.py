"""Issue 12's fuzz run against the running local stack: `hotbatch local up` with no extra flags
(moto's server, the control plane under uvicorn, real workers on vLLM's CPU build), schemathesis
over real HTTP with every check and a fixed seed. No server error, no undocumented status;
afterwards the tenant lists and retrieves its batches and a new batch completes on the workers.

The in-process twin (`tests/control_plane/api/test_fuzz.py`) runs the same configuration
against the app itself; this one meets everything between: uvicorn, moto's wire format, the
inline split and the tick that runs beside the fuzzer on the stack's own schedule.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
import schemathesis
from openai import OpenAI
from openai.types import Batch

from infra.wait import wait_for
from tests.control_plane.api.test_fuzz import MAX_EXAMPLES, fuzz_config, run_fuzzer
from tests.support.lines import CHAT, jsonl
from tests.support.stack import local_up

pytestmark = [pytest.mark.engine, pytest.mark.e2e]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with local_up(tmp_path_factory.mktemp("fuzz-local-up")) as exports:
        yield exports


def test_fuzzing_the_running_local_stack_finds_nothing_and_leaves_it_working(
    stack: dict[str, str],
) -> None:
    url, key = stack["HOTBATCH_API_URL"], stack["HOTBATCH_API_KEY"]
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


def submit(client: OpenAI, name: str) -> Batch:
    file = client.files.create(file=(name, io.BytesIO(jsonl(4))), purpose="batch")
    return client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")


def assert_completes(client: OpenAI, batch: Batch) -> None:
    final = wait_for(
        lambda: (
            b
            if (b := client.batches.retrieve(batch.id)).status
            in ("completed", "failed", "expired", "cancelled")
            else None
        ),
        f"batch {batch.id} to end",
        timeout=300,
        every=1.0,
    )
    assert final.status == "completed", final.errors
    assert final.request_counts is not None and final.request_counts.completed == 4
