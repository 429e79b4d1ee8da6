"""moto-backed fixtures: the table and bucket built from template.yaml, the app, tenant keys."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import pytest
from fastapi.testclient import TestClient
from moto import mock_aws

from control_plane.api import create_app
from control_plane.aws import Aws
from control_plane.settings import Settings
from control_plane.store import apikeys
from infra.aws_resources import create_resources

CHAT = "/v1/chat/completions"
TABLE, BUCKET = "hotbatch-test", "hotbatch-test"


@pytest.fixture()
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("HOTBATCH_"):
            monkeypatch.delenv(name)


def make_settings(**overrides: Any) -> Settings:
    return Settings(table_name=TABLE, bucket_name=BUCKET, split_mode="inline", **overrides)


@pytest.fixture()
def settings(aws_credentials: None, request: pytest.FixtureRequest) -> Settings:
    """Default test settings; a test changes some with
    `@pytest.mark.parametrize("settings", [{"field": value}], indirect=True)`."""
    return make_settings(**getattr(request, "param", {}))


@pytest.fixture()
def aws(aws_credentials: None, settings: Settings) -> Iterator[Aws]:
    with mock_aws():
        handle = Aws(settings)
        create_resources(
            dynamodb=handle.dynamodb, s3=handle.s3, table_name=TABLE, bucket_name=BUCKET
        )
        yield handle


@pytest.fixture()
def client(aws: Aws) -> Iterator[TestClient]:
    with TestClient(create_app(aws=aws), raise_server_exceptions=False) as test_client:
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture()
def key_a(aws: Aws) -> str:
    return apikeys.create_key(aws.table, tenant_id="tenant-a", name="a")


@pytest.fixture()
def key_b(aws: Aws) -> str:
    return apikeys.create_key(aws.table, tenant_id="tenant-b", name="b")


class Reply(Protocol):
    """What the tests read of a TestClient reply (httpx's or httpx2's `Response`, whichever
    starlette uses)."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def content(self) -> bytes: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def json(self, **kwargs: Any) -> Any: ...


def upload(
    client: TestClient,
    key: str,
    content: bytes,
    *,
    filename: str = "input.jsonl",
    purpose: str = "batch",
    **fields: str,
) -> Reply:
    return client.post(
        "/v1/files",
        headers=auth(key),
        files={"file": (filename, content, "application/jsonl")},
        data={"purpose": purpose, **fields},
    )


def upload_id(client: TestClient, key: str, content: bytes) -> str:
    reply = upload(client, key, content)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def create_batch(client: TestClient, key: str, file_id: str, **body: Any) -> Reply:
    return client.post(
        "/v1/batches",
        headers=auth(key),
        json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h", **body},
    )


def tick(aws: Aws) -> dict[str, Any]:
    """One tick against a RunPod endpoint that does not answer (nothing in these tests is
    dispatched on purpose: cancels and finalizes of chunks that never ran need no RunPod)."""
    from control_plane.runpod import RunPodClient
    from control_plane.scheduler.context import TickContext
    from control_plane.scheduler.tick import run_tick

    unreachable = RunPodClient(base_url="http://127.0.0.1:9/v2", endpoint_id="none", api_key="x")
    return run_tick(TickContext(aws=aws, runpod=unreachable, now=int(time.time())))


def stored_file(
    aws: Aws, content: bytes, *, line_count: int | None, tenant_id: str = "tenant-a"
) -> str:
    """A file put straight into S3 and the table, as an upload leaves it (`line_count=None`:
    unknown, as after an upload in parts)."""
    from control_plane import layout
    from control_plane.ids import new_id, now_s
    from control_plane.models import FileObject
    from control_plane.store import files as file_store

    file = FileObject(
        id=new_id("file"),
        bytes=len(content),
        created_at=now_s(),
        filename="input.jsonl",
        purpose="batch",
    )
    aws.s3.put_object(Bucket=BUCKET, Key=layout.file_key(file.id), Body=content)
    file_store.put_file(aws.table, tenant_id=tenant_id, file=file, line_count=line_count)
    return file.id
