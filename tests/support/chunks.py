"""Staging a chunk in the presigned-URL blob store and reading what a worker wrote back."""

from __future__ import annotations

from handler.contract import BatchRequestOutput, ProcessChunkInput
from infra.blob_server import BlobServer
from tests.support.lines import CHAT


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
