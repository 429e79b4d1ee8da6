"""One bad batch or chunk never stops the others: a corrupt batch item, a chunk whose input
object has gone and an item the parser cannot read each fail alone, after a bounded number of
ticks and with an `errors` entry, while a healthy batch beside them completes and the tenant's
listing keeps answering.

The tick runs in process against moto (mock_aws) and a stand-in RunPod client that runs each
chunk at once through the same contract a worker honours (echo answers, output objects in S3,
a ChunkSummary); a chunk whose input is missing fails the job, as a worker's download would.
Ticks go forward two minutes at a time, so backoffs, leases and the failure span pass.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from botocore.parsers import ResponseParserError
from fastapi.testclient import TestClient

from control_plane import layout
from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.clients.runpod import EndpointError, RunPodClient
from control_plane.scheduler import isolate
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.tick import run_tick
from control_plane.store import BatchItem, Table, keys
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from handler.contract import (
    BatchRequestOutput,
    BatchResponseData,
    ChunkCounts,
    ChunkSummary,
    ChunkTimings,
    ChunkUsage,
    ProcessChunkInput,
    WorkerIdentity,
)
from tests.support.api import BUCKET, auth, create_batch, upload_id
from tests.support.lines import jsonl

STEP_S = 120  # seconds between ticks
SETTINGS = {"chunk_max_requests": 2, "keep_hot_schedule": "never"}
pytestmark = pytest.mark.parametrize("settings", [SETTINGS], indirect=True)


@dataclass
class StandInRunPod(RunPodClient):
    """RunPod's client API in process: `/run` processes the chunk on the spot."""

    aws: Aws | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Job ids drawn atomically: a dispatcher sends its chunks from several threads.
    ids: Iterator[int] = field(default_factory=itertools.count)

    def run(self, job_input: dict[str, Any], **_: Any) -> str:
        job = ProcessChunkInput.model_validate(job_input)
        job_id = f"job-{next(self.ids)}"
        self.jobs[job_id] = {"id": job_id, **self._process(job)}
        return job_id

    def status(self, job_id: str) -> dict[str, Any]:
        return self.jobs[job_id]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return {"id": job_id, "status": "CANCELLED"}

    def health(self) -> dict[str, Any]:
        raise EndpointError("the stand-in keeps no worker figures")

    def _process(self, job: ProcessChunkInput) -> dict[str, Any]:
        assert self.aws is not None
        s3 = self.aws.s3
        input_key = layout.chunk_input_key(job.batch_id, int(job.chunk_id))
        try:
            lines = layout.read_lines(s3, BUCKET, input_key)
        except s3.exceptions.NoSuchKey:
            return {"status": "FAILED", "error": f"input {input_key}: 404 Not Found"}
        outputs = [_answer(orjson.loads(line)["custom_id"]) for line in lines]
        batch_id, chunk_id, attempt = job.batch_id, job.chunk_id, job.attempt
        layout.put_lines(s3, BUCKET, layout.output_key(batch_id, chunk_id, attempt), outputs)
        layout.put_lines(s3, BUCKET, layout.error_key(batch_id, chunk_id, attempt), [])
        summary = ChunkSummary(
            batch_id=job.batch_id,
            chunk_id=job.chunk_id,
            attempt=job.attempt,
            endpoint=job.endpoint,
            counts=ChunkCounts(total=len(lines), completed=len(lines)),
            usage=ChunkUsage(prompt_tokens=len(lines), total_tokens=len(lines)),
            failures=[],
            timings=ChunkTimings(total_s=0.01),
            worker=WorkerIdentity(
                worker_id="standin",
                hostname="here",
                pid=0,
                model="echo",
                vllm_version="-",
                hotbatch_version="-",
            ),
        )
        return {"status": "COMPLETED", "output": summary.model_dump(), "executionTime": 10}


def _answer(custom_id: str) -> bytes:
    line = BatchRequestOutput(
        id=f"batch_req_{custom_id}",
        custom_id=custom_id,
        response=BatchResponseData(status_code=200, request_id=f"req_{custom_id}", body={}),
    )
    return line.model_dump_json().encode()


@dataclass
class Ticker:
    """Ticks against the stand-in, each STEP_S later than the one before."""

    runpod: StandInRunPod
    now: int = field(default_factory=lambda: int(time.time()))

    def __call__(self, aws: Aws) -> dict[str, Any]:
        self.now += STEP_S
        return run_tick(TickContext(aws=aws, runpod=self.runpod, now=self.now))


@pytest.fixture()
def tick(aws: Aws) -> Ticker:
    runpod = StandInRunPod(base_url="http://standin", endpoint_id="standin", api_key="x", aws=aws)
    return Ticker(runpod)


@pytest.fixture()
def client(aws: Aws) -> Iterator[TestClient]:
    with TestClient(create_app(aws=aws), raise_server_exceptions=False) as test_client:
        yield test_client


def new_batch(client: TestClient, key: str, requests: int, prefix: str) -> str:
    reply = create_batch(client, key, upload_id(client, key, jsonl(requests, prefix=prefix)))
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


def stored(aws: Aws, batch_id: str) -> dict[str, Any]:
    item = aws.table.get(keys.batch(batch_id), attributes=["status", "errors", "tick_failures"])
    assert item is not None
    return item


def corrupt(aws: Aws, batch_id: str) -> None:
    """What no code path writes: a window end that is not a number, no endpoint, metadata that
    is not JSON."""
    aws.dynamodb.update_item(
        TableName=aws.settings.table_name,
        Key={"pk": {"S": f"BATCH#{batch_id}"}, "sk": {"S": "META"}},
        UpdateExpression="SET window_expires_at = :soon, metadata_json = :broken REMOVE endpoint",
        ExpressionAttributeValues={":soon": {"S": "soon"}, ":broken": {"S": "{broken"}},
    )


def test_a_corrupt_batch_and_a_lost_chunk_fail_alone_while_a_healthy_batch_completes(
    aws: Aws, client: TestClient, key_a: str, key_b: str, tick: Ticker
) -> None:
    healthy = new_batch(client, key_a, 5, "ok")
    broken = new_batch(client, key_a, 3, "bad")
    lost = new_batch(client, key_a, 2, "lost")
    corrupt(aws, broken)
    aws.s3.delete_object(Bucket=BUCKET, Key=layout.chunk_input_key(lost, 0))

    reports = [tick(aws) for _ in range(isolate.FAIL_AFTER_TICKS - 1)]
    assert client.get(f"/v1/batches/{healthy}", headers=auth(key_a)).json()["status"] == (
        "completed"
    )
    assert stored(aws, broken)["status"] == "in_progress"  # failing, not failed yet
    assert stored(aws, broken)["tick_failures"] == isolate.FAIL_AFTER_TICKS - 1
    assert all(r["failures"]["failing"] >= 1 for r in reports)

    for _ in range(20):
        report = tick(aws)
        if stored(aws, lost)["status"] == "failed":
            break
    assert report["failures"]["failed"] == 1
    for batch_id in (broken, lost):
        item = stored(aws, batch_id)
        assert item["status"] == "failed"
        (error,) = item["errors"]
        assert error["code"] == "batch_unprocessable"
        assert f"{isolate.FAIL_AFTER_TICKS} ticks in a row" in error["message"]
    assert "NoSuchKey" in stored(aws, lost)["errors"][0]["message"]
    for batch_id in (healthy, broken, lost):  # nothing left waiting or running
        states = {c["state"] for c in chunk_store.list_chunks(aws.table, batch_id=batch_id)}
        assert not states & {"pending", "dispatched"}, (batch_id, states)
    assert batch_store.tenant_stats(aws.table, "tenant-a") == {
        **batch_store.tenant_stats(aws.table, "tenant-a"),
        "active_batches": 0,
        "queued_requests": 0,
    }

    listed = client.get("/v1/batches", headers=auth(key_a))
    assert listed.status_code == 200, listed.text
    assert {b["id"]: b["status"] for b in listed.json()["data"]} == {
        healthy: "completed",
        lost: "failed",
    }
    unreadable = client.get(f"/v1/batches/{broken}", headers=auth(key_a))
    assert unreadable.status_code == 500
    assert unreadable.json()["error"]["code"] == "unreadable_object"
    assert broken in unreadable.json()["error"]["message"]
    assert client.get(f"/v1/batches/{broken}", headers=auth(key_b)).status_code == 404


def test_a_batch_that_recovers_starts_its_count_again_and_completes(
    aws: Aws, client: TestClient, key_a: str, tick: Ticker
) -> None:
    batch_id = new_batch(client, key_a, 3, "r")
    window_end = stored_window(aws, batch_id)
    corrupt_window(aws, batch_id, {"S": "soon"})
    for _ in range(10):  # its chunks run; then each look at the batch fails
        tick(aws)
        if stored(aws, batch_id).get("tick_failures") == 3:
            break
    assert stored(aws, batch_id)["tick_failures"] == 3

    corrupt_window(aws, batch_id, {"N": str(window_end)})
    report = tick(aws)
    assert report["failures"]["recovered"] == 1
    assert "tick_failures" not in stored(aws, batch_id)
    for _ in range(3):
        tick(aws)
    assert stored(aws, batch_id)["status"] == "completed"


def stored_window(aws: Aws, batch_id: str) -> int:
    item = aws.table.get(keys.batch(batch_id), attributes=["window_expires_at"])
    assert item is not None
    return int(item["window_expires_at"])


def corrupt_window(aws: Aws, batch_id: str, value: dict[str, str]) -> None:
    aws.dynamodb.update_item(
        TableName=aws.settings.table_name,
        Key={"pk": {"S": f"BATCH#{batch_id}"}, "sk": {"S": "META"}},
        UpdateExpression="SET window_expires_at = :v",
        ExpressionAttributeValues={":v": value},
    )


class UnparseableItem:
    """A DynamoDB client whose replies holding one item fail to parse, as botocore failed on
    the item moto's server returned after the fuzz run: a page or a read that includes it
    raises; a read projected to other attributes, and every write, still work."""

    def __init__(self, real: Any, pk: str) -> None:
        self.real, self.pk = real, pk

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def query(self, **kwargs: Any) -> Any:
        reply = self.real.query(**kwargs)
        if "ProjectionExpression" not in kwargs and any(
            item.get("pk", {}).get("S") == self.pk for item in reply.get("Items", [])
        ):
            raise ResponseParserError("Unable to parse response: malformed item")
        return reply

    def get_item(self, **kwargs: Any) -> Any:
        if kwargs["Key"]["pk"]["S"] == self.pk and "ProjectionExpression" not in kwargs:
            raise ResponseParserError("Unable to parse response: malformed item")
        return self.real.get_item(**kwargs)


def test_an_item_the_parser_refuses_is_skipped_in_listings_and_failed_by_the_tick(
    aws: Aws, key_a: str, tick: Ticker
) -> None:
    with TestClient(create_app(aws=aws)) as setup:
        first = new_batch(setup, key_a, 2, "a")
        bad = new_batch(setup, key_a, 2, "b")
        last = new_batch(setup, key_a, 2, "c")
    view = Aws(aws.settings)
    # The API and the tick see the table through the client that cannot parse `bad`.
    view.__dict__["table"] = Table(
        UnparseableItem(aws.dynamodb, f"BATCH#{bad}"), aws.settings.table_name
    )

    with TestClient(create_app(aws=view), raise_server_exceptions=False) as client:
        listed = client.get("/v1/batches", headers=auth(key_a))
        assert listed.status_code == 200, listed.text
        assert [b["id"] for b in listed.json()["data"]] == [last, first]
        reply = client.get(f"/v1/batches/{bad}", headers=auth(key_a))
        assert (reply.status_code, reply.json()["error"]["code"]) == (500, "unreadable_object")

        # The sweep's periodic look at the batch finds it unreadable, then looks again every
        # tick until it has failed FAIL_AFTER_TICKS times over FAIL_AFTER_S.
        for _ in range(3 * isolate.FAIL_AFTER_TICKS):
            tick(view)
            if aws.table.get(keys.batch(bad), attributes=["status"]) == {"status": "failed"}:
                break
        for batch_id in (first, last):
            assert (
                client.get(f"/v1/batches/{batch_id}", headers=auth(key_a)).json()["status"]
                == "completed"
            )
    failed: BatchItem | None = batch_store.get_batch(aws.table, bad)
    assert failed is not None and failed["status"] == "failed"
    assert failed["errors"][0]["code"] == "batch_unprocessable"
    assert "Unreadable" in failed["errors"][0]["message"]


def test_a_corrupt_file_item_is_skipped_in_the_listing_and_answers_a_clear_error(
    aws: Aws, client: TestClient, key_a: str
) -> None:
    good = upload_id(client, key_a, jsonl(1))
    bad = upload_id(client, key_a, jsonl(1))
    aws.dynamodb.update_item(
        TableName=aws.settings.table_name,
        Key={"pk": {"S": f"FILE#{bad}"}, "sk": {"S": "META"}},
        UpdateExpression="SET #b = :b",
        ExpressionAttributeNames={"#b": "bytes"},
        ExpressionAttributeValues={":b": {"S": "many"}},
    )
    listed = client.get("/v1/files", headers=auth(key_a))
    assert listed.status_code == 200, listed.text
    assert [f["id"] for f in listed.json()["data"]] == [good]
    reply = client.get(f"/v1/files/{bad}", headers=auth(key_a))
    assert (reply.status_code, reply.json()["error"]["code"]) == (500, "unreadable_object")
