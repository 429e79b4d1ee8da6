"""Issue 14's web-app side, shown only through the official openai SDK against `hotbatch local
up` with its default flags (real workers on vLLM's CPU build: the tiny chat model on one
endpoint, the same weights under the pooling runner as `tiny-embed` on a second; the stack the
e2e tests share, this module a tenant of its own):
`models.list()` names both; `webhooks.create` returns a signing secret, `webhooks.list` shows
the endpoint and a completed batch delivers `batch.completed` that `webhooks.unwrap` accepts;
`uploads.upload_file_chunked` with 1 MiB parts yields the whole file; an `/v1/embeddings` and a
`/v1/responses` batch complete with one parsed object per line, their usage counted."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from openai import OpenAI
from openai.types import Batch, CreateEmbeddingResponse, Upload
from openai.types.responses import Response

from infra.wait import wait_for
from tests.support.lines import EMBED_MODEL, EMBEDDINGS, MODEL, RESPONSES, jsonl, request_line
from tests.support.receiver import Received, Receiver

pytestmark = [pytest.mark.engine, pytest.mark.e2e]
REQUESTS = 12
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def client(local_up_tenant: dict[str, str]) -> OpenAI:
    return OpenAI(
        base_url=local_up_tenant["HOTBATCH_API_URL"],
        api_key=local_up_tenant["HOTBATCH_API_KEY"],
        max_retries=2,
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def upload_chunked(client: OpenAI, content: bytes, filename: str) -> Upload:
    """The SDK's own large-file helper, with 1 MiB parts (`POST /v1/uploads/{id}/parts`)."""
    return client.uploads.upload_file_chunked(
        file=content,
        filename=filename,
        bytes=len(content),
        mime_type="application/jsonl",
        purpose="batch",
        part_size=MiB,
    )


def run_batch(client: OpenAI, endpoint: str, lines: list[str]) -> tuple[Batch, list[dict]]:  # type: ignore[type-arg]
    file = client.files.create(
        file=("input.jsonl", io.BytesIO(("\n".join(lines) + "\n").encode())), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    final = wait_for(
        lambda: (
            b
            if (b := client.batches.retrieve(batch.id)).status in ("completed", "failed")
            else None
        ),
        f"batch {batch.id} to finish",
        timeout=600,
        every=1.0,
    )
    assert final.status == "completed", final.errors
    assert final.output_file_id is not None
    content = client.files.content(final.output_file_id).content
    return final, [json.loads(line) for line in content.splitlines()]


def test_models_list_names_the_chat_and_the_embedding_model(client: OpenAI) -> None:
    names = {model.id for model in client.models.list()}
    assert names == {MODEL, EMBED_MODEL}
    assert client.models.retrieve(EMBED_MODEL).object == "model"


def test_an_embeddings_batch_completes_with_one_embedding_per_line(client: OpenAI) -> None:
    lines = [
        request_line(f"e{i}", f"embed item {i}", url=EMBEDDINGS, model=EMBED_MODEL)
        for i in range(REQUESTS)
    ]
    batch, outputs = run_batch(client, EMBEDDINGS, lines)
    assert batch.request_counts is not None and batch.request_counts.completed == REQUESTS
    assert sorted(line["custom_id"] for line in outputs) == sorted(f"e{i}" for i in range(REQUESTS))
    prompt_tokens = 0
    for line in outputs:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        reply = CreateEmbeddingResponse.model_validate(line["response"]["body"])
        assert reply.model == EMBED_MODEL and len(reply.data) == 1
        assert len(reply.data[0].embedding) > 0
        prompt_tokens += reply.usage.prompt_tokens
    assert batch.model == EMBED_MODEL
    assert batch.usage is not None and batch.usage.input_tokens == prompt_tokens > 0
    assert batch.usage.output_tokens == 0


def test_a_responses_batch_completes_with_one_response_per_line(client: OpenAI) -> None:
    lines = [
        request_line(f"r{i}", f"question {i}: answer yes", url=RESPONSES, max_output_tokens=6)
        for i in range(REQUESTS)
    ]
    batch, outputs = run_batch(client, RESPONSES, lines)
    assert len(outputs) == REQUESTS
    output_tokens = 0
    for line in outputs:
        assert line["response"]["status_code"] == 200
        response = Response.model_validate(line["response"]["body"])
        assert response.object == "response" and response.model == MODEL
        assert response.usage is not None and 0 < response.usage.output_tokens <= 6
        output_tokens += response.usage.output_tokens
    assert batch.usage is not None and batch.usage.output_tokens == output_tokens


def test_an_embedding_model_on_the_chat_endpoint_fails_validation(client: OpenAI) -> None:
    file = client.files.create(
        file=("bad.jsonl", io.BytesIO((request_line("x", model=EMBED_MODEL) + "\n").encode())),
        purpose="batch",
    )
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    final = wait_for(
        lambda: b if (b := client.batches.retrieve(batch.id)).status == "failed" else None,
        "the batch to fail validation",
        timeout=60,
        every=0.5,
    )
    assert final.errors is not None and final.errors.data is not None
    assert [(e.code, e.line) for e in final.errors.data] == [("unsupported_model_endpoint", 1)]


def test_a_completed_batch_delivers_batch_completed_that_unwrap_accepts(
    client: OpenAI, receiver: Receiver
) -> None:
    # A receiver on 127.0.0.1 over http: `local up` allows private webhook URLs, a deployment
    # does not (https on a public name only).
    hook = client.webhooks.create(
        name="web app", url=f"{receiver.url}/done", event_types=["batch.completed"]
    )
    assert hook.signing_secret.startswith("whsec_")
    listed = {endpoint.id: endpoint for endpoint in client.webhooks.list()}
    assert listed[hook.id].url == f"{receiver.url}/done"
    assert listed[hook.id].event_types == ["batch.completed"]

    upload = upload_chunked(client, jsonl(REQUESTS, prefix="hook"), "hooked.jsonl")
    assert upload.file is not None
    batch = client.batches.create(
        input_file_id=upload.file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    def delivered() -> list[Received]:
        return [got for got in receiver.on("/done") if batch.id.encode() in got.body]

    wait_for(delivered, f"batch.completed for {batch.id}", timeout=600, every=1.0)
    assert client.batches.retrieve(batch.id).status == "completed"
    (got,) = delivered()
    event = client.webhooks.unwrap(got.body, got.headers, secret=hook.signing_secret)
    assert event.type == "batch.completed" and event.data.id == batch.id
    assert event.object == "event" and event.id.startswith("evt_")
    # A wrong secret is refused: the signature is checked, not only parsed.
    with pytest.raises(Exception, match="(?i)signature"):
        client.webhooks.unwrap(got.body, got.headers, secret="whsec_" + "A" * 32)


def test_upload_file_chunked_with_1_mib_parts_yields_the_whole_file(client: OpenAI) -> None:
    content = jsonl(20_000, prefix="big")  # ~2.8 MiB: three parts
    assert 2 * MiB < len(content) < 4 * MiB
    done = upload_chunked(client, content, "big.jsonl")
    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == len(content)
    assert client.files.content(done.file.id).content == content
