"""The control plane under uvicorn against moto's server, driven by the official `openai` SDK:
every answer is parsed by the SDK's own models, and its errors are the SDK's exception types."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from openai import OpenAI

from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.settings import Settings
from control_plane.store import apikeys
from infra.local_control_plane import LocalApi, LocalAws
from infra.wait import wait_for
from tests.support.api import tick
from tests.support.lines import CHAT, jsonl, request_line

pytestmark = pytest.mark.stack

INLINE_MAX = 4096
PART = 5 * 1024 * 1024  # S3's smallest multipart part


@dataclass
class Stack:
    url: str
    key_a: str
    key_b: str
    aws: Aws

    def client(self, key: str | None = None) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key_a, max_retries=0)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    local_aws = LocalAws(table_name="sdk-test", bucket_name="sdk-test").start()
    settings = Settings(
        table_name="sdk-test",
        bucket_name="sdk-test",
        aws_endpoint_url=local_aws.url,
        split_mode="inline",
        inline_content_max_bytes=INLINE_MAX,
        upload_part_bytes=PART,
        max_active_batches=8,
        chunk_max_requests=100,
    )
    aws = Aws(settings)
    key_a = apikeys.create_key(aws.table, tenant_id="acme")
    key_b = apikeys.create_key(aws.table, tenant_id="globex")
    api = LocalApi(create_app(aws=aws)).start()
    try:
        yield Stack(url=api.url, key_a=key_a, key_b=key_b, aws=aws)
    finally:
        api.stop()
        local_aws.stop()


def wait_status(client: OpenAI, batch_id: str, *statuses: str) -> str:
    def reached() -> str | None:
        status = client.batches.retrieve(batch_id).status
        return status if status in statuses else None

    return wait_for(reached, f"batch {batch_id} to reach {statuses}", timeout=60)


def test_upload_create_retrieve_and_split_through_the_sdk(stack: Stack) -> None:
    client = stack.client()
    content = jsonl(250)
    file = client.files.create(file=("input.jsonl", content), purpose="batch")
    assert file.id.startswith("file-") and file.bytes == len(content)
    assert file.purpose == "batch" and file.filename == "input.jsonl"

    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"team": "search", "run": "7"},
        extra_body={"priority": "high"},
    )
    assert batch.status == "validating" and batch.id.startswith("batch_")
    assert wait_status(client, batch.id, "in_progress", "failed") == "in_progress"
    done = client.batches.retrieve(batch.id)
    assert done.request_counts is not None and done.request_counts.total == 250
    assert done.metadata == {"team": "search", "run": "7"}
    assert done.model == "tiny" and done.in_progress_at is not None
    assert done.expires_at == done.created_at + 24 * 3600
    assert (done.model_extra or {}).get("priority") == "high"
    keys = stack.aws.s3.list_objects_v2(Bucket="sdk-test", Prefix=f"batches/{batch.id}/")
    assert len(keys["Contents"]) == 3  # 250 requests, 100 per chunk


def test_bad_lines_fail_the_batch_with_line_numbers(stack: Stack) -> None:
    client = stack.client()
    lines = [request_line("a"), request_line("b"), request_line("a"), "{oops"]
    file = client.files.create(file=("bad.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert wait_status(client, batch.id, "failed", "in_progress") == "failed"
    failed = client.batches.retrieve(batch.id)
    assert failed.errors is not None and failed.errors.data is not None
    found = [(e.code, e.line, e.param) for e in failed.errors.data]
    assert found == [("duplicate_custom_id", 3, "custom_id"), ("invalid_json_line", 4, None)]
    assert failed.failed_at is not None


def test_list_paginates_newest_first_and_cancel(stack: Stack) -> None:
    client = stack.client(stack.key_b)
    file = client.files.create(file=("few.jsonl", jsonl(3)), purpose="batch")
    created = [
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h").id
        for _ in range(5)
    ]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == created[::-1][:2] and first.has_more
    every = [b.id for b in client.batches.list(limit=2)]  # the SDK follows `after` itself
    assert every == created[::-1]

    cancelled = client.batches.cancel(created[0])
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    tick(stack.aws)
    assert wait_status(client, created[0], "cancelled") == "cancelled"
    assert client.batches.cancel(created[0]).status == "cancelled"  # idempotent


def test_file_content_small_inline_and_large_through_a_redirect(stack: Stack) -> None:
    client = stack.client()
    small = jsonl(2)
    large = jsonl(200)
    assert len(small) < INLINE_MAX < len(large)
    small_file = client.files.create(file=("small.jsonl", small), purpose="batch")
    large_file = client.files.create(file=("large.jsonl", large), purpose="batch")
    assert client.files.content(small_file.id).content == small
    # The API answers 307 to a presigned S3 URL; the SDK follows it.
    raw = httpx.get(
        f"{stack.url}/v1/files/{large_file.id}/content",
        headers={"Authorization": f"Bearer {stack.key_a}"},
    )
    assert raw.status_code == 307 and "X-Amz-Signature" in raw.headers["location"]
    assert client.files.content(large_file.id).content == large

    listed = [f.id for f in client.files.list()]
    assert listed.index(large_file.id) < listed.index(small_file.id)  # newest first
    assert client.files.retrieve(small_file.id).bytes == len(small)
    deleted = client.files.delete(small_file.id)
    assert deleted.deleted and deleted.id == small_file.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(small_file.id)


def test_large_file_goes_through_an_upload_with_presigned_parts(stack: Stack) -> None:
    client = stack.client()
    content = jsonl(40_000)
    assert len(content) > PART
    upload = client.uploads.create(
        bytes=len(content), filename="big.jsonl", mime_type="application/jsonl", purpose="batch"
    )
    parts = (upload.model_extra or {})["part_urls"]
    assert upload.status == "pending" and len(parts) == 2
    offset = 0
    for part in parts:
        reply = httpx.put(part["url"], content=content[offset : offset + part["bytes"]])
        assert reply.status_code == 200
        offset += part["bytes"]
    completed = client.uploads.complete(upload.id, part_ids=[])
    assert completed.status == "completed" and completed.file is not None
    assert completed.file.bytes == len(content)
    batch = client.batches.create(
        input_file_id=completed.file.id, endpoint=CHAT, completion_window="24h"
    )
    assert wait_status(client, batch.id, "in_progress", "failed") == "in_progress"
    counts = client.batches.retrieve(batch.id).request_counts
    assert counts is not None and counts.total == 40_000


def test_incomplete_upload_is_refused_and_can_be_cancelled(stack: Stack) -> None:
    client = stack.client()
    upload = client.uploads.create(
        bytes=100, filename="x.jsonl", mime_type="application/jsonl", purpose="batch"
    )
    with pytest.raises(openai.ConflictError, match="declared 100 bytes"):
        client.uploads.complete(upload.id, part_ids=[])
    assert client.uploads.cancel(upload.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.uploads.complete(upload.id, part_ids=[])


def test_errors_are_the_sdks_exception_types(stack: Stack) -> None:
    client = stack.client()
    other = stack.client(stack.key_b)
    file = client.files.create(file=("mine.jsonl", jsonl(1)), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(file.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.AuthenticationError):
        stack.client("hb-wrong").files.list()
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", jsonl(1)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="UTF-8"):
        client.files.create(file=("x.jsonl", b'{"a": "\xff"}\n'), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/audio/transcriptions",  # type: ignore[arg-type]
            completion_window="24h",
        )


def test_active_batch_limit_is_a_429_naming_the_limit(stack: Stack) -> None:
    client = stack.client()
    file = client.files.create(file=("one.jsonl", jsonl(1)), purpose="batch")
    with pytest.raises(openai.RateLimitError, match="max_active_batches=8"):
        for _ in range(9):
            client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
