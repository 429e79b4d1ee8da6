"""`POST /v1/uploads/{id}/parts` through the official `openai` SDK (in process):
`uploads.upload_file_chunked` works unchanged, `complete` assembles exactly the named parts in
the named order, and a part larger than a Lambda request is a clear 413."""

from __future__ import annotations

import random

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from control_plane.clients.aws import Aws
from control_plane.store import files as file_store
from tests.support.api import BUCKET, auth, create_batch, tick
from tests.support.lines import jsonl

MiB = 1024 * 1024


def sdk(client: TestClient, key: str) -> OpenAI:
    return OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client, max_retries=0)


def stored(aws: Aws, file_id: str) -> bytes:
    item = file_store.get_file(aws.table, file_id)
    assert item is not None
    body: bytes = aws.s3.get_object(Bucket=BUCKET, Key=item["s3_key"])["Body"].read()
    return body


def leftovers(aws: Aws) -> tuple[list[str], list[str]]:
    """Part objects and open multipart uploads left in the bucket."""
    parts = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="uploads/").get("Contents", [])
    open_uploads = aws.s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return [p["Key"] for p in parts], [u["Key"] for u in open_uploads]


def test_upload_file_chunked_with_1_mib_parts_yields_the_whole_file(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    content = jsonl(80_000)  # ~11.6 MiB: twelve 1 MiB parts, gathered into three S3 parts
    assert 11 * MiB < len(content) < 12 * MiB
    done = sdk(client, key_a).uploads.upload_file_chunked(
        file=content,
        filename="big.jsonl",
        bytes=len(content),
        mime_type="application/jsonl",
        purpose="batch",
        part_size=MiB,
    )
    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == len(content) and done.file.filename == "big.jsonl"
    assert done.file.status == "uploaded"  # not read yet: the tick checks it
    assert stored(aws, done.file.id) == content
    assert leftovers(aws) == ([], [])  # parts deleted, the presigned multipart upload aborted

    tick(aws)
    checked = sdk(client, key_a).files.retrieve(done.file.id)
    assert checked.status == "processed"
    item = file_store.get_file(aws.table, done.file.id)
    assert item is not None and item["line_count"] == 80_000


def test_complete_assembles_the_named_parts_in_the_named_order(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    uploads = sdk(client, key_a).uploads
    content = random.Random(7).randbytes(6 * MiB + 123)
    pieces = [content[i : i + 700_000] for i in range(0, len(content), 700_000)]
    upload = uploads.create(
        bytes=len(content), filename="x.bin", mime_type="text/plain", purpose="batch"
    )
    order = list(range(len(pieces)))
    random.Random(3).shuffle(order)
    ids = {i: uploads.parts.create(upload.id, data=pieces[i]).id for i in order}
    assert all(part_id.startswith("part_") for part_id in ids.values())

    with pytest.raises(openai.BadRequestError, match="declared .* but the parts named hold"):
        uploads.complete(upload.id, part_ids=[ids[i] for i in range(len(pieces) - 1)])
    with pytest.raises(openai.BadRequestError, match="is not a part of upload"):
        uploads.complete(upload.id, part_ids=[*ids.values(), "part_0000"])
    with pytest.raises(openai.BadRequestError, match="more than once"):
        uploads.complete(upload.id, part_ids=[ids[0], *ids.values()])

    done = uploads.complete(upload.id, part_ids=[ids[i] for i in range(len(pieces))])
    assert done.file is not None and done.file.bytes == len(content)
    assert stored(aws, done.file.id) == content
    with pytest.raises(openai.ConflictError):
        uploads.parts.create(upload.id, data=b"late")


@pytest.mark.parametrize("settings", [{"upload_part_max_bytes": 1024}], indirect=True)
def test_a_part_over_the_limit_is_a_413_naming_it_and_pointing_to_part_urls(
    client: TestClient, key_a: str
) -> None:
    uploads = sdk(client, key_a).uploads
    upload = uploads.create(bytes=5000, filename="x", mime_type="text/plain", purpose="batch")
    assert uploads.parts.create(upload.id, data=b"x" * 1024).object == "upload.part"
    with pytest.raises(openai.APIStatusError) as caught:
        uploads.parts.create(upload.id, data=b"x" * 1025)
    assert caught.value.status_code == 413
    message = str(caught.value)
    assert "1025 bytes" in message and "upload_part_max_bytes=1024" in message
    assert "part_urls" in message
    # A body far over the limit is refused from its Content-Length, before it is read.
    with pytest.raises(openai.APIStatusError, match="The request is") as early:
        uploads.parts.create(upload.id, data=b"x" * 200_000)
    assert early.value.status_code == 413


def test_parts_of_another_tenants_upload_or_without_data_are_refused(
    client: TestClient, key_a: str, key_b: str
) -> None:
    upload = sdk(client, key_a).uploads.create(
        bytes=10, filename="x", mime_type="text/plain", purpose="batch"
    )
    with pytest.raises(openai.NotFoundError):
        sdk(client, key_b).uploads.parts.create(upload.id, data=b"0123456789")
    reply = client.post(
        f"/v1/uploads/{upload.id}/parts", headers=auth(key_a), data={"other": "field"}
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "data"
    empty = client.post(
        f"/v1/uploads/{upload.id}/parts", headers=auth(key_a), files={"data": ("d", b"")}
    )
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "empty_part"


def test_cancel_drops_the_parts(client: TestClient, key_a: str, aws: Aws) -> None:
    uploads = sdk(client, key_a).uploads
    upload = uploads.create(bytes=10, filename="x", mime_type="text/plain", purpose="batch")
    uploads.parts.create(upload.id, data=b"01234")
    assert len(leftovers(aws)[0]) == 1
    assert uploads.cancel(upload.id).status == "cancelled"
    assert leftovers(aws) == ([], [])


def test_a_batch_runs_from_a_file_uploaded_in_parts(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    content = jsonl(30)
    done = sdk(client, key_a).uploads.upload_file_chunked(
        file=content,
        filename="in.jsonl",
        bytes=len(content),
        mime_type="application/jsonl",
        purpose="batch",
        part_size=1000,
    )
    assert done.file is not None
    reply = create_batch(client, key_a, done.file.id)
    assert reply.status_code == 200, reply.text
    batch = client.get(f"/v1/batches/{reply.json()['id']}", headers=auth(key_a)).json()
    assert batch["status"] == "in_progress" and batch["request_counts"]["total"] == 30


@pytest.mark.parametrize("settings", [{"upload_max_parts": 2}], indirect=True)
def test_an_upload_takes_at_most_upload_max_parts_parts_through_the_api(
    client: TestClient, key_a: str, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = sdk(client, key_a).uploads
    upload = uploads.create(bytes=10, filename="x", mime_type="text/plain", purpose="batch")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("S3 is down")

    with monkeypatch.context() as patch:  # a part S3 did not store leaves its place free
        patch.setattr(aws.s3, "upload_fileobj", broken)
        with pytest.raises(openai.InternalServerError):
            uploads.parts.create(upload.id, data=b"01234")
    ids = [uploads.parts.create(upload.id, data=piece).id for piece in (b"01234", b"56789")]
    with pytest.raises(openai.BadRequestError, match="already has 2 parts") as caught:
        uploads.parts.create(upload.id, data=b"x")
    assert caught.value.code == "upload_max_parts"
    assert "upload_max_parts=2" in str(caught.value)
    assert len(leftovers(aws)[0]) == 2  # the refused part was never stored

    done = uploads.complete(upload.id, part_ids=ids)
    assert done.file is not None and stored(aws, done.file.id) == b"0123456789"
    # Another upload of the tenant has its own count.
    other = uploads.create(bytes=10, filename="y", mime_type="text/plain", purpose="batch")
    assert uploads.parts.create(other.id, data=b"0123456789").object == "upload.part"
