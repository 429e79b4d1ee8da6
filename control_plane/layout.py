"""The S3 layout: every key and object name hotbatch writes, in one place, and reading an
object back as lines. docs/storage.md draws the same layout.

    files/{file_id}                                      uploaded inputs and merged results
    batches/{batch_id}/chunks/{n:05d}/input.jsonl        one chunk, as the split cut it
    batches/{batch_id}/chunks/{n:05d}/output-{a}.jsonl   attempt a's output lines (the worker)
    batches/{batch_id}/chunks/{n:05d}/errors-{a}.jsonl   attempt a's error lines (the worker)
    …/errors-dead.jsonl, …/errors-expired.jsonl          error lines the tick writes itself
    …/errors-{a}-r{g}.jsonl                              an error object after redrive g
    uploads/{upload_id}/parts/{part_id}                  a part sent through the API
"""

from __future__ import annotations

from typing import Any

FILES = "files/"


def file_key(file_id: str) -> str:
    return f"{FILES}{file_id}"


def file_id_of(key: str) -> str:
    """The file id a `files/…` key stands for (an upload fixes the key before the file exists)."""
    return key.removeprefix(FILES)


def upload_parts_prefix(upload_id: str) -> str:
    return f"uploads/{upload_id}/parts/"


def upload_part_key(upload_id: str, part_id: str) -> str:
    """A part sent through `POST /v1/uploads/{id}/parts`, until `complete` assembles it."""
    return f"{upload_parts_prefix(upload_id)}{part_id}"


def part_id_of(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def chunk_id(index: int) -> str:
    return f"{index:05d}"


def chunk_prefix(batch_id: str, chunk_id: str) -> str:
    return f"batches/{batch_id}/chunks/{chunk_id}"


def chunk_input_key(batch_id: str, index: int) -> str:
    return f"{chunk_prefix(batch_id, chunk_id(index))}/input.jsonl"


def output_key(batch_id: str, chunk_id: str, attempt: int) -> str:
    # One object per attempt: a late result of an older attempt can never overwrite the one
    # that was recorded.
    return f"{chunk_prefix(batch_id, chunk_id)}/output-{attempt}.jsonl"


def error_key(batch_id: str, chunk_id: str, attempt: int) -> str:
    return f"{chunk_prefix(batch_id, chunk_id)}/errors-{attempt}.jsonl"


def dead_error_key(batch_id: str, chunk_id: str) -> str:
    """The error line of a request that failed alone on a worker (the end of a bisection)."""
    return f"{chunk_prefix(batch_id, chunk_id)}/errors-dead.jsonl"


def expired_error_key(batch_id: str, chunk_id: str) -> str:
    """The `batch_expired` lines of a chunk the completion window ran out on."""
    return f"{chunk_prefix(batch_id, chunk_id)}/errors-expired.jsonl"


def redriven_error_key(error_key: str, generation: int) -> str:
    """A chunk's error object without the lines redrive `generation` took away to run again."""
    return f"{error_key.removesuffix('.jsonl')}-r{generation}.jsonl"


def read_lines(s3: Any, bucket: str, key: str) -> list[bytes]:
    """The non-blank lines of a small object (a chunk or one attempt's results), in order."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with body:
        data: bytes = body.read()
    return [line for line in data.split(b"\n") if line.strip()]


def put_lines(s3: Any, bucket: str, key: str, lines: list[bytes]) -> int:
    """Write `lines` as a JSONL object; return its size."""
    content = b"".join(line + b"\n" for line in lines)
    s3.put_object(Bucket=bucket, Key=key, Body=content, ContentType="application/jsonl")
    return len(content)
