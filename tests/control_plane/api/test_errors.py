"""Refusals through the app: bad uploads, authentication, unknown routes, tenant isolation.
Every one is a 4xx with OpenAI's error body, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.store import apikeys
from tests.support.api import BUCKET, Reply, auth, create_batch, upload, upload_id
from tests.support.lines import jsonl, request_line


def error_of(reply: Reply, status: int) -> dict[str, Any]:
    """The `error` object of an OpenAI error reply, after checking its status and shape."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert list(body) == ["error"]
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def nothing_stored(client: TestClient, key: str, aws: Aws) -> bool:
    listed = client.get("/v1/files", headers=auth(key)).json()["data"]
    objects = aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="files/").get("KeyCount", 0)
    return bool(listed == [] and objects == 0)


# --- bad uploads ---


@pytest.mark.parametrize(
    ("content_type", "body", "said"),
    [
        ("multipart/form-data; boundary=xyz", b"this is not multipart at all", "multipart"),
        (
            "multipart/form-data; boundary=xyz",
            b"--xyz\r\nContent-Disposition: form-data\r\n",
            "file",
        ),
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="',
            "file",
        ),
        ("multipart/form-data", b"--xyz\r\n\r\n--xyz--\r\n", "boundary"),
        ("application/json", b'{"purpose": "batch"}', "file"),
    ],
    ids=["garbage", "part-without-name", "cut-header", "no-boundary", "json"],
)
def test_malformed_multipart_body_is_a_400_saying_what_is_wrong(
    client: TestClient, key_a: str, aws: Aws, content_type: str, body: bytes, said: str
) -> None:
    reply = client.post(
        "/v1/files", headers={**auth(key_a), "Content-Type": content_type}, content=body
    )
    error = error_of(reply, 400)
    assert said in error["message"]
    assert nothing_stored(client, key_a, aws)


def test_missing_file_field_is_a_400_naming_file(client: TestClient, key_a: str) -> None:
    reply = client.post("/v1/files", headers=auth(key_a), data={"purpose": "batch"})
    error = error_of(reply, 400)
    assert error["param"] == "file" and "file" in error["message"]


def test_missing_purpose_is_a_400_naming_purpose(client: TestClient, key_a: str) -> None:
    reply = client.post(
        "/v1/files", headers=auth(key_a), files={"file": ("a.jsonl", jsonl(1), "text/plain")}
    )
    error = error_of(reply, 400)
    assert error["param"] == "purpose" and "purpose" in error["message"]


@pytest.mark.parametrize("purpose", ["fine-tune", "batch_output", "assistants"])
def test_a_purpose_other_than_batch_is_refused(
    client: TestClient, key_a: str, aws: Aws, purpose: str
) -> None:
    error = error_of(upload(client, key_a, jsonl(1), purpose=purpose), 400)
    assert (error["code"], error["param"]) == ("invalid_purpose", "purpose")
    assert purpose in error["message"]
    assert nothing_stored(client, key_a, aws)


def test_non_utf8_bytes_are_refused_naming_the_line(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    content = (request_line("r0") + "\n" + request_line("r1") + "\n").encode()
    content += b'{"custom_id": "\xff\xfe"}\n'
    error = error_of(upload(client, key_a, content), 400)
    assert error["code"] == "invalid_file_encoding"
    assert "line 3" in error["message"]
    assert nothing_stored(client, key_a, aws)


def test_a_file_cut_inside_a_multibyte_character_is_refused(client: TestClient, key_a: str) -> None:
    error = error_of(upload(client, key_a, request_line("é").encode()[:-3] + b"\xc3"), 400)
    assert error["code"] == "invalid_file_encoding"


@pytest.mark.parametrize("content", [b"", b"\n", b"\n  \n\r\n\t\n"], ids=["empty", "nl", "blank"])
def test_an_empty_or_blank_file_is_refused_at_upload(
    client: TestClient, key_a: str, aws: Aws, content: bytes
) -> None:
    error = error_of(upload(client, key_a, content), 400)
    assert (error["code"], error["param"]) == ("empty_file", "file")
    assert nothing_stored(client, key_a, aws)


@pytest.mark.parametrize("settings", [{"max_file_bytes": 300}], indirect=True)
def test_a_file_above_max_file_bytes_is_a_400_naming_the_limit_and_value(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    content = jsonl(10)
    assert len(content) > 300
    error = error_of(upload(client, key_a, content), 400)
    assert error["code"] == "max_file_bytes"
    assert "max_file_bytes=300" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert nothing_stored(client, key_a, aws)


@pytest.mark.parametrize("settings", [{"max_file_bytes": 300}], indirect=True)
def test_a_file_of_exactly_max_file_bytes_is_accepted(client: TestClient, key_a: str) -> None:
    line = request_line("r0").encode() + b"\n"
    content = line + b" " * (300 - len(line) - 1) + b"\n"
    assert len(content) == 300
    reply = upload(client, key_a, content)
    assert reply.status_code == 200, reply.text
    assert reply.json()["bytes"] == 300


# --- authentication and routing ---


def test_missing_authorization_is_a_401(client: TestClient) -> None:
    error = error_of(client.get("/v1/files"), 401)
    assert (error["type"], error["code"]) == ("authentication_error", "missing_api_key")


@pytest.mark.parametrize("header", ["Bearer ", "Basic abc", "hb-no-scheme"])
def test_an_authorization_header_without_a_bearer_key_is_a_401(
    client: TestClient, header: str
) -> None:
    error = error_of(client.get("/v1/files", headers={"Authorization": header}), 401)
    assert error["code"] == "missing_api_key"


def test_a_wrong_key_is_a_401(client: TestClient, key_a: str) -> None:
    error = error_of(client.get("/v1/batches", headers=auth(key_a + "x")), 401)
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")


def test_a_revoked_key_is_a_401(client: TestClient, aws: Aws) -> None:
    key = apikeys.create_key(aws.table, tenant_id="tenant-c")
    assert apikeys.revoke_key(aws.table, key) is True
    error = error_of(client.get("/v1/files", headers=auth(key)), 401)
    assert error["code"] == "invalid_api_key"


def test_a_key_revoked_after_use_is_refused_by_a_fresh_app(
    client: TestClient, key_a: str, aws: Aws
) -> None:
    assert client.get("/v1/files", headers=auth(key_a)).status_code == 200
    apikeys.revoke_key(aws.table, key_a)
    with TestClient(create_app(aws=aws)) as fresh:
        error_of(fresh.get("/v1/files", headers=auth(key_a)), 401)


def test_revoking_an_unknown_key_reports_false(aws: Aws) -> None:
    assert apikeys.revoke_key(aws.table, "hb-never-issued") is False


def test_an_unknown_route_is_a_404_with_an_openai_body(client: TestClient, key_a: str) -> None:
    error = error_of(client.get("/v1/fine_tuning/jobs", headers=auth(key_a)), 404)
    assert error["type"] == "invalid_request_error"
    assert "/v1/fine_tuning/jobs" in error["message"]


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/v1/files"), ("DELETE", "/v1/batches"), ("GET", "/v1/uploads")]
)
def test_a_wrong_method_is_a_405_with_an_openai_body(
    client: TestClient, key_a: str, method: str, path: str
) -> None:
    error = error_of(client.request(method, path, headers=auth(key_a)), 405)
    assert method in error["message"]


def test_a_batch_body_that_is_not_json_is_a_400(client: TestClient, key_a: str) -> None:
    reply = client.post(
        "/v1/batches",
        headers={**auth(key_a), "Content-Type": "application/json"},
        content=b"{not json",
    )
    error_of(reply, 400)


# --- tenant isolation ---


@pytest.fixture()
def batch_of_a(client: TestClient, key_a: str) -> tuple[str, str]:
    """A file and an in-progress batch of tenant a: (file_id, batch_id)."""
    file_id = upload_id(client, key_a, jsonl(3))
    reply = create_batch(client, key_a, file_id)
    assert reply.status_code == 200, reply.text
    return file_id, str(reply.json()["id"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/files/{file}"),
        ("GET", "/v1/files/{file}/content"),
        ("DELETE", "/v1/files/{file}"),
        ("GET", "/v1/batches/{batch}"),
        ("POST", "/v1/batches/{batch}/cancel"),
    ],
)
def test_another_tenants_objects_are_404(
    client: TestClient,
    key_a: str,
    key_b: str,
    batch_of_a: tuple[str, str],
    method: str,
    path: str,
) -> None:
    file_id, batch_id = batch_of_a
    url = path.format(file=file_id, batch=batch_id)

    error = error_of(client.request(method, url, headers=auth(key_b)), 404)

    assert error["code"] == "not_found"
    assert client.get(f"/v1/files/{file_id}", headers=auth(key_a)).status_code == 200
    batch = client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).json()
    assert batch["status"] == "in_progress"


def test_a_batch_cannot_be_created_from_another_tenants_file(
    client: TestClient, key_b: str, batch_of_a: tuple[str, str]
) -> None:
    error = error_of(create_batch(client, key_b, batch_of_a[0]), 404)
    assert error["param"] == "input_file_id"
    assert client.get("/v1/batches", headers=auth(key_b)).json()["data"] == []


def test_listings_show_only_the_callers_objects(
    client: TestClient, key_a: str, key_b: str, batch_of_a: tuple[str, str]
) -> None:
    file_b = upload_id(client, key_b, jsonl(2, prefix="b"))
    batch_b = create_batch(client, key_b, file_b).json()["id"]

    def ids(key: str, path: str) -> list[str]:
        return [o["id"] for o in client.get(path, headers=auth(key)).json()["data"]]

    assert ids(key_a, "/v1/files") == [batch_of_a[0]]
    assert ids(key_a, "/v1/batches") == [batch_of_a[1]]
    assert ids(key_b, "/v1/files") == [file_b]
    assert ids(key_b, "/v1/batches") == [batch_b]
