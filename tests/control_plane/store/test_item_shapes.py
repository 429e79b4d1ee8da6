"""What a client sends cannot change the shape of a stored item: metadata is one JSON string
attribute, so keys named like DynamoDB's type tags (`S`, `N`, `M`, `L`, `NULL`, `BOOL`), empty
strings, unusual unicode and 512-character values come back exactly — through moto's server
(real HTTP, where the fuzz run once got an item back that botocore could not parse) as well as
mock_aws. Strings no UTF-8 store can hold (an escaped unpaired surrogate) are a 400.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from fastapi.testclient import TestClient

from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.store import apikeys, deadletters, keys
from infra.local_control_plane import LocalAws
from tests.support.api import (
    BUCKET,
    TABLE,
    auth,
    create_batch,
    make_settings,
    tick,
    upload,
    upload_id,
)
from tests.support.lines import jsonl

# What schemathesis sent, and the edges of OpenAI's metadata rules: 16 pairs, 64-character
# keys, 512-character values.
FUZZED_METADATA = {
    "S": "x",
    "N": "12",
    "M": "{}",
    "L": "[]",
    "NULL": "true",
    "BOOL": "false",
    "SS": "a",
    "": "",
    "\x00": "nul \x00 inside",
    "k" * 64: "v" * 512,
    "ключ": "значение",
    "emoji": "😀" * 128,
    "separators": "\u2028\u2029\u0085\ufeff\u200b",
    "rtl": "\u202eabc",
    "astral": "\U0010fffd\U0001f600",
    "json": '{"S": "x"}',
}
# Sent as multipart filenames (httpx percent-encodes quotes and line breaks there, so those go
# through the JSON uploads API below).
FILENAMES = ["S", "ünï cödé ü.jsonl", "a;b=c d'.jsonl", "\u2028\u202e.jsonl", "f" * 255]
UPLOAD_NAMES = ['"quoted" name.jsonl', "line\nbreak.jsonl", "back\\slash.jsonl", "\x00.jsonl"]


@pytest.fixture()
def moto_server(aws_credentials: None) -> Iterator[Aws]:
    local = LocalAws(table_name=TABLE, bucket_name=BUCKET).start()
    try:
        yield Aws(make_settings(aws_endpoint_url=local.url, inline_content_max_bytes=10))
    finally:
        local.stop()


@pytest.fixture(params=["mock_aws", pytest.param("moto_server", marks=pytest.mark.stack)])
def backend(request: pytest.FixtureRequest) -> Aws:
    """The same tests in process (mock_aws) and over real HTTP (moto's server)."""
    fixture = "aws" if request.param == "mock_aws" else "moto_server"
    aws: Aws = request.getfixturevalue(fixture)
    return aws


@pytest.fixture()
def api(backend: Aws) -> Iterator[tuple[TestClient, str]]:
    # A tenant of its own: moto's server keeps its data for the whole process, so an earlier
    # test's files on the same table would show in this one's listings.
    key = apikeys.create_key(backend.table, tenant_id=f"tenant-{secrets.token_hex(4)}", name="a")
    with TestClient(create_app(aws=backend), raise_server_exceptions=False) as client:
        yield client, key


def raw_batch(aws: Aws, batch_id: str) -> dict[str, Any]:
    reply = aws.dynamodb.get_item(
        TableName=aws.settings.table_name,
        Key={"pk": {"S": f"BATCH#{batch_id}"}, "sk": {"S": "META"}},
    )
    item: dict[str, Any] = reply["Item"]
    return item


def test_fuzzed_metadata_round_trips_exactly_as_one_string_attribute(
    backend: Aws, api: tuple[TestClient, str]
) -> None:
    client, key = api
    created = create_batch(client, key, upload_id(client, key, jsonl(2)), metadata=FUZZED_METADATA)
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    assert created.json()["metadata"] == FUZZED_METADATA

    item = raw_batch(backend, batch_id)
    assert "metadata" not in item
    assert json.loads(item["metadata_json"]["S"]) == FUZZED_METADATA
    # Every attribute is one of the shapes the store writes: user strings are leaves, never maps.
    assert {next(iter(value)) for value in item.values()} <= {"S", "N", "M", "L", "BOOL", "NULL"}

    retrieved = client.get(f"/v1/batches/{batch_id}", headers=auth(key))
    assert retrieved.status_code == 200, retrieved.text
    assert retrieved.json()["metadata"] == FUZZED_METADATA
    listed = client.get("/v1/batches", headers=auth(key)).json()["data"]
    assert [(b["id"], b["metadata"]) for b in listed] == [(batch_id, FUZZED_METADATA)]
    report = tick(backend)  # the tick reads and moves the batch like any other
    assert report["failures"]["failing"] == 0
    cancelled = client.post(f"/v1/batches/{batch_id}/cancel", headers=auth(key))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["metadata"] == FUZZED_METADATA


def test_unusual_filenames_round_trip_and_name_the_download(
    backend: Aws, api: tuple[TestClient, str]
) -> None:
    client, key = api
    for filename in FILENAMES:
        reply = upload(client, key, jsonl(1), filename=filename)
        assert reply.status_code == 200, reply.text
        assert reply.json()["filename"] == filename
        file_id = reply.json()["id"]
        assert client.get(f"/v1/files/{file_id}", headers=auth(key)).json()["filename"] == filename
    listed = client.get("/v1/files", headers=auth(key)).json()["data"]
    assert sorted(f["filename"] for f in listed) == sorted(FILENAMES)
    for filename in UPLOAD_NAMES:
        body = {"bytes": 10, "filename": filename, "mime_type": "text/jsonl", "purpose": "batch"}
        created = client.post("/v1/uploads", headers=auth(key), json=body)
        assert created.status_code == 200, created.text
        pending = created.json()["id"]
        cancelled = client.post(f"/v1/uploads/{pending}/cancel", headers=auth(key))
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["filename"] == filename  # as stored
    if backend.settings.aws_endpoint_url is None:
        return  # a presigned URL needs moto's server to answer it
    content = client.get(f"/v1/files/{file_id}/content", headers=auth(key), follow_redirects=False)
    assert content.status_code == 307
    download = urllib3.request("GET", content.headers["location"])
    assert download.status == 200 and download.data == jsonl(1)
    assert "filename*=UTF-8''" + "f" * 255 in download.headers["content-disposition"]


UNPAIRED = [
    (
        "/v1/batches",
        '{"input_file_id": "x", "endpoint": "/v1/chat/completions", '
        '"completion_window": "24h", "metadata": {"\\ud800": "v"}}',
        "metadata",
    ),
    (
        "/v1/batches",
        '{"input_file_id": "x", "endpoint": "/v1/chat/completions", '
        '"completion_window": "24h", "metadata": {"S": "a\\udfffb"}}',
        "metadata.S",
    ),
    (
        "/v1/batches",
        '{"input_file_id": "file-\\ud83d", "endpoint": "/v1/chat/completions", '
        '"completion_window": "24h"}',
        "input_file_id",
    ),
    (
        "/v1/uploads",
        '{"bytes": 10, "filename": "\\udc00.jsonl", "mime_type": "text/jsonl", "purpose": "batch"}',
        "filename",
    ),
]


@pytest.mark.parametrize(("path", "body", "param"), UNPAIRED)
def test_an_unpaired_surrogate_is_a_400_naming_the_field(
    aws: Aws, client: TestClient, key_a: str, path: str, body: str, param: str
) -> None:
    reply = client.post(
        path, headers={**auth(key_a), "Content-Type": "application/json"}, content=body.encode()
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", param)
    assert "unicode" in error["message"].lower()
    assert client.get("/v1/batches", headers=auth(key_a)).json()["data"] == []


def test_a_batch_stored_with_a_metadata_map_is_still_read(
    aws: Aws, client: TestClient, key_a: str
) -> None:
    batch_id = create_batch(client, key_a, upload_id(client, key_a, jsonl(1))).json()["id"]
    aws.dynamodb.update_item(
        TableName=aws.settings.table_name,
        Key={"pk": {"S": f"BATCH#{batch_id}"}, "sk": {"S": "META"}},
        UpdateExpression="SET metadata = :old",
        ExpressionAttributeValues={":old": {"M": {"run": {"S": "7"}, "S": {"S": "x"}}}},
    )
    retrieved = client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).json()
    assert retrieved["metadata"] == {"run": "7", "S": "x"}


def test_custom_ids_longer_than_a_sort_key_still_have_one_dead_letter_each(aws: Aws) -> None:
    long_ids = ["x" * 5000, "x" * 5000 + "y", "é" * 600]
    letters = [
        deadletters.dead_letter_item(
            "batch_1",
            custom_id=custom_id,
            chunk_id="00000",
            status_code=500,
            code="worker_failure",
            type="server_error",
            message="boom",
            attempts=1,
            created_at=1,
        )
        for custom_id in long_ids
    ]
    assert all(len(item["sk"].encode()) <= keys.SORT_KEY_MAX_BYTES for item in letters)
    assert len({item["sk"] for item in letters}) == 3
    deadletters.put_dead_letters(aws.table, letters)
    found = deadletters.get_dead_letters(aws.table, batch_id="batch_1", custom_ids=long_ids)
    assert [item["custom_id"] if item else None for item in found] == long_ids
    page, _ = deadletters.list_dead_letters(aws.table, batch_id="batch_1", limit=10, after=None)
    assert sorted(item["custom_id"] for item in page) == sorted(long_ids)
