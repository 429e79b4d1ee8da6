"""Embeddings and Responses batches on the real vLLM engine (CPU build, tiny generated model):
`/v1/embeddings` on the pooling runner and `/v1/responses` on the generate runner, each
through vLLM's own serving object in process, parsed with the openai SDK's own models, usage
counted in the chunk summary; an endpoint a runner does not serve is vLLM's own 501 per line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.responses import Response

from handler import engine as adapter
from handler.runtime import Runtime
from handler.settings import WorkerSettings
from infra.blob_server import BlobServer
from tests.support.chunks import read_lines, stage_chunk
from tests.support.lines import CHAT, EMBED_MODEL, EMBEDDINGS, RESPONSES, request_line

pytestmark = pytest.mark.engine

HIDDEN_SIZE = 128  # infra/tiny_model.py


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def test_runner_setting_reaches_vllms_parser(tiny_model: Path) -> None:
    args = adapter.parse_serve_args(WorkerSettings(model_name=str(tiny_model), runner="pooling"))
    assert args.runner == "pooling"
    assert adapter.parse_serve_args(WorkerSettings(model_name=str(tiny_model))).runner == "auto"


async def test_embeddings_chunk_parses_as_openai_embeddings_with_usage(
    embed_runtime: Runtime, blobs: BlobServer, tokenizer: Any
) -> None:
    texts = [f"evaluate candidate {i} for the batch" for i in range(10)]
    lines = [
        request_line(f"e-{i}", text, url=EMBEDDINGS, model=EMBED_MODEL)
        for i, text in enumerate(texts)
    ]
    # One request may embed several inputs, as OpenAI's takes a list.
    lines.append(
        request_line("e-list", url=EMBEDDINGS, body={"model": EMBED_MODEL, "input": texts[:3]})
    )
    job = stage_chunk(blobs, lines, endpoint=EMBEDDINGS)
    summary = await embed_runtime.process(job)
    assert summary.counts.model_dump() == {"total": 11, "completed": 11, "failed": 0}
    assert read_lines(blobs, job, "errors") == []

    prompt_sum = 0
    outputs = {line.custom_id: line for line in read_lines(blobs, job, "output")}
    for i, text in enumerate(texts):
        line = outputs[f"e-{i}"]
        assert line.response is not None and line.response.status_code == 200
        reply = CreateEmbeddingResponse.model_validate(line.response.body)
        assert reply.object == "list" and reply.model == EMBED_MODEL
        (item,) = reply.data
        assert item.object == "embedding" and len(item.embedding) == HIDDEN_SIZE
        assert reply.usage.prompt_tokens == len(tokenizer(text).input_ids)
        assert reply.usage.total_tokens == reply.usage.prompt_tokens
        prompt_sum += reply.usage.prompt_tokens
    several = outputs["e-list"].response
    assert several is not None
    listed = CreateEmbeddingResponse.model_validate(several.body)
    assert [item.index for item in listed.data] == [0, 1, 2]
    # The same text embeds the same way whether alone or in a list.
    first = CreateEmbeddingResponse.model_validate(outputs["e-0"].response.body)  # type: ignore[union-attr]
    assert listed.data[0].embedding == pytest.approx(first.data[0].embedding, abs=1e-3)
    prompt_sum += listed.usage.prompt_tokens
    assert summary.usage.prompt_tokens == prompt_sum
    assert summary.usage.completion_tokens == 0
    assert summary.worker.model == EMBED_MODEL


async def test_pooling_worker_answers_chat_lines_with_vllms_501(
    embed_runtime: Runtime, blobs: BlobServer
) -> None:
    job = stage_chunk(blobs, [request_line("c", model=EMBED_MODEL)], chunk_id="00002")
    summary = await embed_runtime.process(job)
    assert summary.counts.failed == 1
    (line,) = read_lines(blobs, job, "errors")
    assert line.response is not None and line.response.status_code == 501
    assert "/v1/chat/completions" in str(line.response.body)
    assert summary.failures[0].code == "not_implemented"


async def test_embedding_bad_requests_get_error_lines_beside_good_ones(
    embed_runtime: Runtime, blobs: BlobServer
) -> None:
    lines = [
        request_line("good", "hello world", url=EMBEDDINGS, model=EMBED_MODEL),
        request_line("empty", url=EMBEDDINGS, body={"model": EMBED_MODEL, "input": []}),
        request_line("wrong-model", "hi", url=EMBEDDINGS, model="no-such-model"),
    ]
    job = stage_chunk(blobs, lines, endpoint=EMBEDDINGS, chunk_id="00003")
    summary = await embed_runtime.process(job)
    assert summary.counts.model_dump() == {"total": 3, "completed": 1, "failed": 2}
    errors = {line.custom_id: line for line in read_lines(blobs, job, "errors")}
    assert set(errors) == {"empty", "wrong-model"}
    assert all(e.response is not None and e.response.status_code >= 400 for e in errors.values())


async def test_responses_chunk_parses_as_openai_responses_with_usage(
    engine_runtime: Runtime, blobs: BlobServer
) -> None:
    lines = [
        request_line(f"r-{i}", f"question {i}: say yes", url=RESPONSES, max_output_tokens=5)
        for i in range(6)
    ]
    lines.append(
        request_line(
            "r-instructions",
            url=RESPONSES,
            body={
                "model": "tiny",
                "instructions": "answer with one word",
                "input": [{"role": "user", "content": "hello"}],
                "max_output_tokens": 4,
            },
        )
    )
    job = stage_chunk(blobs, lines, endpoint=RESPONSES)
    summary = await engine_runtime.process(job)
    assert summary.counts.model_dump() == {"total": 7, "completed": 7, "failed": 0}
    assert read_lines(blobs, job, "errors") == []
    input_sum = output_sum = 0
    for line in read_lines(blobs, job, "output"):
        assert line.response is not None and line.response.status_code == 200
        response = Response.model_validate(line.response.body)
        assert response.object == "response" and response.model == "tiny"
        assert response.status in ("completed", "incomplete")
        assert response.usage is not None and response.usage.input_tokens > 0
        assert response.usage.output_tokens <= 5
        assert response.output, "a response carries its output items"
        input_sum += response.usage.input_tokens
        output_sum += response.usage.output_tokens
    assert summary.usage.prompt_tokens == input_sum
    assert summary.usage.completion_tokens == output_sum > 0


async def test_generate_worker_answers_embedding_lines_with_vllms_501(
    engine_runtime: Runtime, blobs: BlobServer
) -> None:
    job = stage_chunk(
        blobs,
        [request_line("e", "hi", url=EMBEDDINGS, model="tiny")],
        endpoint=EMBEDDINGS,
        chunk_id="00004",
    )
    summary = await engine_runtime.process(job)
    (line,) = read_lines(blobs, job, "errors")
    assert line.response is not None and line.response.status_code == 501
    message = str(line.response.body)
    assert summary.counts.failed == 1 and "does not serve /v1/embeddings" in message
    assert f"it serves {CHAT}" in message
