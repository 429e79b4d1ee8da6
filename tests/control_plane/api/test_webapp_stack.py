"""The web app's side on the local stack (moto's server, the control plane under uvicorn, the
local RunPod endpoint with real runpod SDK workers around the stand-in engine), only through the
official `openai` SDK: `upload_file_chunked` with 1 MiB parts yields the whole file, and a
completed batch delivers `batch.completed` that `client.webhooks.unwrap` accepts unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from openai import OpenAI

from infra.stack import LocalStack, StackConfig, worker_pool
from tests.support.lines import CHAT, jsonl
from tests.support.receiver import Receiver
from tests.support.stack import REPO, STANDIN_WORKER

pytestmark = pytest.mark.stack

STANDIN = STANDIN_WORKER
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    pool = worker_pool(
        workers=1,
        max_workers=1,
        command=STANDIN,
        env={"PYTHONPATH": str(REPO)},
        workdir=tmp_path_factory.mktemp("stack"),
    )
    stack = LocalStack(
        StackConfig(pool=pool, tick_interval_s=None, settings={"chunk_max_requests": 20})
    ).start()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def client(stack: LocalStack) -> OpenAI:
    return OpenAI(
        base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key, max_retries=0
    )


def test_upload_file_chunked_with_1_mib_parts_yields_the_whole_file(stack: LocalStack) -> None:
    sdk = client(stack)
    content = jsonl(44_000)  # ~6.3 MiB: seven parts, assembled into two S3 parts
    assert 6 * MiB < len(content) < 7 * MiB
    done = sdk.uploads.upload_file_chunked(
        file=content,
        filename="big.jsonl",
        bytes=len(content),
        mime_type="application/jsonl",
        purpose="batch",
        part_size=MiB,
    )
    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == len(content) and done.file.status == "uploaded"
    assert sdk.files.content(done.file.id).content == content
    stack.tick()
    assert sdk.files.retrieve(done.file.id).status == "processed"


def test_a_completed_batch_delivers_batch_completed_that_unwrap_accepts(
    stack: LocalStack, receiver: Receiver
) -> None:
    sdk = client(stack)
    hook = sdk.webhooks.create(
        name="web app", url=f"{receiver.url}/done", event_types=["batch.completed"]
    )
    sdk.webhooks.create(name="failures", url=f"{receiver.url}/failed", event_types=["batch.failed"])
    assert hook.signing_secret.startswith("whsec_")
    assert hook.id in [e.id for e in sdk.webhooks.list()]

    content = jsonl(45)
    upload = sdk.uploads.upload_file_chunked(
        file=content,
        filename="in.jsonl",
        bytes=len(content),
        mime_type="application/jsonl",
        purpose="batch",
        part_size=MiB,
    )
    assert upload.file is not None
    batch = sdk.batches.create(input_file_id=upload.file.id, endpoint=CHAT, completion_window="24h")
    deadline = time.monotonic() + 120
    while not receiver.on("/done") and time.monotonic() < deadline:
        stack.tick()
        time.sleep(0.3)
    assert sdk.batches.retrieve(batch.id).status == "completed"
    (got,) = receiver.on("/done")
    event = sdk.webhooks.unwrap(got.body, got.headers, secret=hook.signing_secret)
    assert event.type == "batch.completed" and event.data.id == batch.id
    assert event.object == "event" and event.id.startswith("evt_")
    stack.tick()
    assert len(receiver.on("/done")) == 1 and receiver.on("/failed") == []
