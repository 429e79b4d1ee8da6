"""Driving the control plane in process (FastAPI's TestClient under moto): the table and bucket
names, keys, uploads, batches, a tick, a file stored as an upload leaves it."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final, Protocol

from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from control_plane.settings import Settings
from tests.support.lines import CHAT

TABLE: Final = "hotbatch-test"
BUCKET: Final = "hotbatch-test"


def make_settings(**overrides: Any) -> Settings:
    return Settings(table_name=TABLE, bucket_name=BUCKET, split_mode="inline", **overrides)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


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
    from control_plane.clients.runpod import RunPodClient
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


class KeyCacheClock:
    """Stands in for the `time` module inside `api/deps.py` (the key cache's clock):
    monotonic time moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def files_status(client: TestClient, key: str) -> int:
    """The status `GET /v1/files` answers for `key` (200 while it works, 401 once refused)."""
    return client.get("/v1/files", headers=auth(key)).status_code
