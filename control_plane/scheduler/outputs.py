"""Where a chunk attempt's results live in S3, and the error lines hotbatch writes itself."""

from __future__ import annotations

import uuid

from handler.contract import BatchRequestOutput, BatchResponseData, error_body


def chunk_prefix(batch_id: str, chunk_id: str) -> str:
    return f"batches/{batch_id}/chunks/{chunk_id}"


def output_key(batch_id: str, chunk_id: str, attempt: int) -> str:
    # One object per attempt: a late result of an older attempt can never overwrite the one
    # that was recorded.
    return f"{chunk_prefix(batch_id, chunk_id)}/output-{attempt}.jsonl"


def error_key(batch_id: str, chunk_id: str, attempt: int) -> str:
    return f"{chunk_prefix(batch_id, chunk_id)}/errors-{attempt}.jsonl"


def error_line(custom_id: str, *, status: int, code: str, message: str) -> bytes:
    """An error-file line in the same shape the worker writes for a failed request."""
    body = error_body(message, status=status, param=None)
    body["error"]["code"] = code
    line = BatchRequestOutput(
        id=f"batch_req_{uuid.uuid4().hex}",
        custom_id=custom_id,
        response=BatchResponseData(
            status_code=status, request_id=f"req_{uuid.uuid4().hex}", body=body
        ),
        error=None,
    )
    return line.model_dump_json().encode() + b"\n"
