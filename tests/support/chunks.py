"""Building chunk inputs and reading chunk outputs in tests."""

from __future__ import annotations

import json
from typing import Any

from handler.contract import BatchRequestOutput, ProcessChunkInput
from infra.blob_server import BlobServer

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat_line(custom_id: str, content: str, *, model: str = "tiny", **body: Any) -> str:
    request = {"model": model, "messages": [{"role": "user", "content": content}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": request})


def completion_line(custom_id: str, prompt: str, *, model: str = "tiny", **body: Any) -> str:
    request = {"model": model, "prompt": prompt, **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": COMPLETIONS, "body": request}
    )


def stage_chunk(
    blobs: BlobServer, lines: list[str], *, endpoint: str = CHAT, chunk_id: str = "00001"
) -> ProcessChunkInput:
    prefix = f"batches/batch_test/chunks/{chunk_id}"
    blobs.put(f"{prefix}/input.jsonl", ("\n".join(lines) + "\n").encode())
    return ProcessChunkInput(
        action="process_chunk",
        batch_id="batch_test",
        chunk_id=chunk_id,
        attempt=1,
        endpoint=endpoint,
        input_url=blobs.presign("GET", f"{prefix}/input.jsonl"),
        output_url=blobs.presign("PUT", f"{prefix}/output.jsonl"),
        error_url=blobs.presign("PUT", f"{prefix}/errors.jsonl"),
    )


def read_lines(blobs: BlobServer, job: ProcessChunkInput, which: str) -> list[BatchRequestOutput]:
    key = f"batches/{job.batch_id}/chunks/{job.chunk_id}/{which}.jsonl"
    body = blobs.get(key)
    assert body is not None, f"{which} was not uploaded"
    return [BatchRequestOutput.model_validate_json(line) for line in body.decode().splitlines()]
