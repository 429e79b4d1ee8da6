"""`/v1/files` through the app under moto: the file object, listing, retrieve, delete, content."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pytest
from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from control_plane.ids import new_id, now_s
from control_plane.models import FileObject
from control_plane.store import files as file_store
from tests.support.api import BUCKET, auth, upload, upload_id
from tests.support.lines import jsonl


def upload_several(client: TestClient, key: str, count: int) -> list[str]:
    """Upload `count` files; returns their ids oldest first."""
    ids = []
    for index in range(count):
        ids.append(upload_id(client, key, jsonl(1, prefix=f"f{index}-")))
        time.sleep(0.002)  # ids order by millisecond: keep creation order unambiguous
    return ids


def test_upload_returns_an_openai_file_object(client: TestClient, key_a: str) -> None:
    content = jsonl(3)
    before = now_s()
    reply = upload(client, key_a, content, filename="my-batch.jsonl")
    assert reply.status_code == 200, reply.text
    file = reply.json()
    assert file["id"].startswith("file-") and len(file["id"]) == len("file-") + 24
    assert file["object"] == "file"
    assert file["bytes"] == len(content)
    assert file["filename"] == "my-batch.jsonl"
    assert file["purpose"] == "batch"
    assert isinstance(file["created_at"], int) and before <= file["created_at"] <= now_s()
    assert file["expires_at"] is None


def test_uploaded_bytes_are_stored_in_s3_under_the_file_id(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    content = jsonl(4)
    file_id = upload_id(client, key_a, content)
    stored = aws.s3.get_object(Bucket=BUCKET, Key=f"files/{file_id}")["Body"].read()
    assert stored == content


def test_retrieve_returns_the_same_object_as_the_upload(client: TestClient, key_a: str) -> None:
    created = upload(client, key_a, jsonl(2)).json()
    reply = client.get(f"/v1/files/{created['id']}", headers=auth(key_a))
    assert reply.status_code == 200
    assert reply.json() == created


def test_list_is_newest_first_and_ascending_with_order_asc(client: TestClient, key_a: str) -> None:
    ids = upload_several(client, key_a, 3)

    newest_first = client.get("/v1/files", headers=auth(key_a)).json()
    oldest_first = client.get("/v1/files", params={"order": "asc"}, headers=auth(key_a)).json()

    assert newest_first["object"] == "list"
    assert [f["id"] for f in newest_first["data"]] == ids[::-1]
    assert [f["id"] for f in oldest_first["data"]] == ids
    assert newest_first["has_more"] is False


def test_list_pages_with_limit_and_after_cursor(client: TestClient, key_a: str) -> None:
    ids = upload_several(client, key_a, 5)[::-1]  # newest first
    pages = []
    after = None
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if after:
            params["after"] = after
        page = client.get("/v1/files", params=params, headers=auth(key_a)).json()
        pages.append(page)
        if not page["has_more"]:
            break
        after = page["last_id"]

    assert [[f["id"] for f in page["data"]] for page in pages] == [ids[0:2], ids[2:4], ids[4:]]
    assert [page["has_more"] for page in pages] == [True, True, False]
    assert [(page["first_id"], page["last_id"]) for page in pages] == [
        (ids[0], ids[1]),
        (ids[2], ids[3]),
        (ids[4], ids[4]),
    ]


def test_list_ascending_pages_continue_after_the_cursor(client: TestClient, key_a: str) -> None:
    ids = upload_several(client, key_a, 4)
    first = client.get("/v1/files", params={"order": "asc", "limit": 3}, headers=auth(key_a)).json()
    second = client.get(
        "/v1/files",
        params={"order": "asc", "limit": 3, "after": first["last_id"]},
        headers=auth(key_a),
    ).json()
    assert [f["id"] for f in first["data"]] == ids[:3] and first["has_more"] is True
    assert [f["id"] for f in second["data"]] == ids[3:] and second["has_more"] is False


def test_list_filters_by_purpose(client: TestClient, key_a: str, aws: Aws) -> None:
    batch_input = upload_id(client, key_a, jsonl(1))
    output = FileObject(
        id=new_id("file"),
        bytes=10,
        created_at=now_s(),
        filename="out.jsonl",
        purpose="batch_output",
    )
    file_store.put_file(aws.table, tenant_id="tenant-a", file=output, line_count=None)

    def listed(purpose: str) -> list[str]:
        reply = client.get("/v1/files", params={"purpose": purpose}, headers=auth(key_a))
        return [f["id"] for f in reply.json()["data"]]

    assert listed("batch") == [batch_input]
    assert listed("batch_output") == [output.id]


def test_delete_answers_deleted_then_the_file_is_404_and_its_object_gone(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    file_id = upload_id(client, key_a, jsonl(2))

    reply = client.delete(f"/v1/files/{file_id}", headers=auth(key_a))

    assert reply.status_code == 200
    assert reply.json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}", headers=auth(key_a)).status_code == 404
    assert client.get(f"/v1/files/{file_id}/content", headers=auth(key_a)).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=auth(key_a)).status_code == 404
    listed = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"files/{file_id}")
    assert listed.get("KeyCount", 0) == 0


def test_content_of_a_small_file_is_the_exact_uploaded_bytes(
    client: TestClient, key_a: str
) -> None:
    content = jsonl(3).replace(b"\n", b"\r\n") + b"\n  \n"  # CRLF and blank lines kept as sent
    file_id = upload_id(client, key_a, content)
    reply = client.get(f"/v1/files/{file_id}/content", headers=auth(key_a))
    assert reply.status_code == 200
    assert reply.content == content


@pytest.mark.parametrize("settings", [{"inline_content_max_bytes": 16}], indirect=True)
def test_content_above_the_inline_limit_redirects_to_a_presigned_s3_url(
    client: TestClient, key_a: str
) -> None:
    file_id = upload_id(client, key_a, jsonl(2))

    reply = client.get(f"/v1/files/{file_id}/content", headers=auth(key_a), follow_redirects=False)

    assert reply.status_code == 307
    location = urlparse(reply.headers["location"])
    assert BUCKET in location.netloc + location.path
    assert location.path.endswith(f"/files/{file_id}")
    query = parse_qs(location.query)
    assert query["X-Amz-Signature"][0]
    assert "input.jsonl" in query["response-content-disposition"][0]


@pytest.mark.parametrize("settings", [{"inline_content_max_bytes": len(jsonl(2))}], indirect=True)
def test_content_at_exactly_the_inline_limit_is_inline(client: TestClient, key_a: str) -> None:
    file_id = upload_id(client, key_a, jsonl(2))
    reply = client.get(f"/v1/files/{file_id}/content", headers=auth(key_a), follow_redirects=False)
    assert reply.status_code == 200 and reply.content == jsonl(2)


def test_expires_after_form_fields_set_expires_at(client: TestClient, key_a: str) -> None:
    reply = upload(
        client,
        key_a,
        jsonl(1),
        **{"expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"},
    )
    assert reply.status_code == 200, reply.text
    file = reply.json()
    assert file["expires_at"] == file["created_at"] + 7200
    retrieved = client.get(f"/v1/files/{file['id']}", headers=auth(key_a)).json()
    assert retrieved["expires_at"] == file["expires_at"]


@pytest.mark.parametrize("seconds", ["60", str(31 * 24 * 3600), "soon"])
def test_expires_after_seconds_out_of_range_is_a_400_naming_the_field(
    client: TestClient, key_a: str, seconds: str
) -> None:
    reply = upload(
        client,
        key_a,
        jsonl(1),
        **{"expires_after[anchor]": "created_at", "expires_after[seconds]": seconds},
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "expires_after[seconds]"


# OpenAI's published list schemas (openai-openapi: ListFilesResponse requires both ids as
# strings; ListBatchesResponse has them as optional strings): an empty page must pass both.
LIST_FILES_RESPONSE = {
    "type": "object",
    "required": ["object", "data", "first_id", "last_id", "has_more"],
    "properties": {
        "object": {"type": "string"},
        "data": {"type": "array"},
        "first_id": {"type": "string"},
        "last_id": {"type": "string"},
        "has_more": {"type": "boolean"},
    },
}
LIST_BATCHES_RESPONSE = {
    "type": "object",
    "required": ["object", "data", "has_more"],
    "properties": {
        "object": {"enum": ["list"]},
        "data": {"type": "array"},
        "first_id": {"type": "string"},
        "last_id": {"type": "string"},
        "has_more": {"type": "boolean"},
    },
}


def test_empty_lists_answer_as_openais_list_schemas_require(
    client: TestClient, key_a: str, key_b: str
) -> None:
    import jsonschema  # type: ignore[import-untyped]

    upload_id(client, key_a, jsonl(1))  # A's file: B's list stays empty all the same
    files = client.get("/v1/files", headers=auth(key_b)).json()
    batches = client.get("/v1/batches", headers=auth(key_b)).json()
    jsonschema.validate(files, LIST_FILES_RESPONSE)
    jsonschema.validate(batches, LIST_BATCHES_RESPONSE)
    assert (files["data"], files["first_id"], files["last_id"]) == ([], "", "")
    assert batches["data"] == [] and not batches["has_more"]
