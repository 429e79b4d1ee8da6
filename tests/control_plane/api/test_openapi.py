"""The OpenAPI document (`/openapi.json`) says what the server does; the cases the fuzzer
found, pinned down one by one (test_fuzz.py runs the fuzzer itself)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from tests.support.api import auth, upload, upload_id
from tests.support.lines import jsonl

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture()
def document(client: TestClient) -> dict[str, Any]:
    reply = client.get("/openapi.json")
    assert reply.status_code == 200
    body: dict[str, Any] = reply.json()
    return body


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def test_every_operation_declares_its_errors_with_openais_body(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for method, path, operation in operations(document):
        responses = operation["responses"]
        assert "422" not in responses, (method, path)
        assert operation["security"] == [{"bearer": []}]
        names = [p["name"].lower() for p in operation.get("parameters", [])]
        assert "authorization" not in names
        expected = {"401", "500"} | ({"400"} if names or "requestBody" in operation else set())
        assert expected <= set(responses), (method, path, sorted(responses))
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == ERROR_BODY


@pytest.mark.parametrize(
    ("label", "statuses"),
    [
        ("POST /v1/batches", {"400", "404", "429", "503"}),
        ("POST /v1/batches/{batch_id}/cancel", {"404", "409"}),
        ("POST /v1/uploads/{upload_id}/complete", {"404", "409"}),
        ("GET /v1/files/{file_id}/content", {"200", "307", "404"}),
    ],
)
def test_route_specific_statuses_are_declared(
    document: dict[str, Any], label: str, statuses: set[str]
) -> None:
    method, path = label.split(" ")
    assert statuses <= set(document["paths"][path][method.lower()]["responses"])


def test_content_types_say_what_comes_back(document: dict[str, Any]) -> None:
    content = document["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]
    assert list(content["200"]["content"]) == ["application/octet-stream"]
    assert "Location" in content["307"]["headers"]
    create = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert list(create) == ["multipart/form-data"]


def test_request_schemas_carry_the_limits_the_server_checks(
    document: dict[str, Any], aws: Aws
) -> None:
    schemas = document["components"]["schemas"]
    upload_body = schemas["CreateUploadBody"]["properties"]
    assert upload_body["bytes"]["maximum"] == aws.settings.max_file_bytes
    assert upload_body["purpose"]["enum"] == ["batch"]
    metadata = schemas["CreateBatchBody"]["properties"]["metadata"]["anyOf"][0]
    assert (metadata["maxProperties"], metadata["propertyNames"]["maxLength"]) == (16, 64)
    assert metadata["additionalProperties"]["maxLength"] == 512
    endpoint = schemas["CreateBatchBody"]["properties"]["endpoint"]
    assert endpoint["enum"] == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
    ]


def test_links_lead_from_a_file_to_a_batch(document: dict[str, Any]) -> None:
    links = document["paths"]["/v1/files"]["post"]["responses"]["200"]["links"]
    create = links["CreateBatch"]
    assert create["requestBody"] == {"input_file_id": "$response.body#/id"}
    assert create["operationId"] == document["paths"]["/v1/batches"]["post"]["operationId"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/files/file-x", {"GET", "DELETE"}),
        ("OPTIONS", "/v1/files/file-x", {"GET", "DELETE"}),
        ("PATCH", "/v1/batches", {"GET", "POST"}),
        ("GET", "/v1/uploads", {"POST"}),
    ],
)
def test_a_405_names_every_method_of_the_path_in_allow(
    client: TestClient, key_a: str, method: str, path: str, allowed: set[str]
) -> None:
    reply = client.request(method, path, headers=auth(key_a))
    assert reply.status_code == 405
    assert {m.strip() for m in reply.headers["allow"].split(",")} == allowed
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_a_null_body_completing_an_upload_is_answered_not_a_500(
    client: TestClient, key_a: str
) -> None:
    body = {"bytes": 10, "filename": "x.jsonl", "mime_type": "text/jsonl", "purpose": "batch"}
    pending = client.post("/v1/uploads", headers=auth(key_a), json=body).json()["id"]
    headers = {**auth(key_a), "Content-Type": "application/json"}
    for upload_ref, status in ((pending, 409), ("upload_unknown", 404)):
        reply = client.post(f"/v1/uploads/{upload_ref}/complete", headers=headers, content=b"null")
        assert reply.status_code == status, reply.text


def test_a_missing_body_names_the_body_not_none(client: TestClient, key_a: str) -> None:
    reply = client.post("/v1/batches", headers=auth(key_a))
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] is None and "body" in error["message"]
    assert "None" not in error["message"]


def test_what_the_schema_allows_the_server_accepts(client: TestClient, key_a: str) -> None:
    # The smallest file the schema allows (one non-blank character) and a form with seconds
    # but no anchor (the only anchor is created_at).
    reply = upload(client, key_a, b"0", **{"expires_after[seconds]": "3600"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["expires_at"] == reply.json()["created_at"] + 3600
    mime = {
        "bytes": 1,
        "filename": "x",
        "mime_type": "text/jsonl; charset=utf-8",
        "purpose": "batch",
    }
    assert client.post("/v1/uploads", headers=auth(key_a), json=mime).status_code == 200


@pytest.mark.parametrize(
    ("path", "param"),
    [(f"/v1/batches/batch_{'0' * 80}", "batch_id"), (f"/v1/batches?after={'b' * 65}", "after")],
)
def test_an_id_longer_than_any_id_is_a_400_not_a_store_error(
    client: TestClient, key_a: str, path: str, param: str
) -> None:
    upload_id(client, key_a, jsonl(1))
    reply = client.get(path, headers=auth(key_a))
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == param
