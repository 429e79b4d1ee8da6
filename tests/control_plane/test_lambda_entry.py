"""The three Lambda entry points as Lambda calls them: an HTTP API event through Mangum, the
split's asynchronous event, and powertools' structured logs and EMF metrics on the way out."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from control_plane.clients.aws import Aws
from control_plane.models import FileObject
from control_plane.settings import Settings
from control_plane.store import apikeys
from control_plane.store import files as file_store
from tests.support.api import BUCKET, TABLE
from tests.support.lines import jsonl


@dataclass
class FakeContext:
    function_name: str = "hotbatch-test"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:hotbatch-test"
    aws_request_id: str = "req-1"


@pytest.fixture()
def lambda_env(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Aws:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "hotbatch-test")
    monkeypatch.setenv("HOTBATCH_TABLE_NAME", TABLE)
    monkeypatch.setenv("HOTBATCH_BUCKET_NAME", BUCKET)
    return aws


def http_event(method: str, path: str, key: str) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "limit=5",
        "headers": {"authorization": f"Bearer {key}", "host": "api.example"},
        "requestContext": {
            "http": {"method": method, "path": path, "sourceIp": "1.2.3.4", "protocol": "HTTP/1.1"},
            "requestId": "r1",
            "stage": "$default",
        },
        "isBase64Encoded": False,
    }


def test_the_api_answers_an_http_api_event_through_mangum(
    lambda_env: Aws, capfd: pytest.CaptureFixture[str]
) -> None:
    key = apikeys.create_key(lambda_env.table, tenant_id="t")
    module = importlib.reload(importlib.import_module("control_plane.entrypoints.api"))
    reply = module.handler(http_event("GET", "/v1/batches", key), FakeContext())
    assert reply["statusCode"] == 200
    body = json.loads(reply["body"])
    assert body["object"] == "list" and body["data"] == []
    denied = module.handler(http_event("GET", "/v1/batches", "hb-wrong"), FakeContext())
    assert denied["statusCode"] == 401
    assert json.loads(denied["body"])["error"]["type"] == "authentication_error"


def test_the_split_function_splits_logs_json_and_flushes_metrics(
    lambda_env: Aws,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="control_plane")
    from control_plane.models import CreateBatchBody
    from control_plane.services.batches import create_batch

    content = jsonl(7)
    lambda_env.s3.put_object(Bucket=BUCKET, Key="files/file-x", Body=content)
    file = FileObject(id="file-x", bytes=len(content), created_at=0, filename="f", purpose="batch")
    file_store.put_file(lambda_env.table, tenant_id="t", file=file, line_count=7)
    batch = create_batch(
        lambda_env,
        tenant_id="t",
        body=CreateBatchBody(
            input_file_id="file-x", endpoint="/v1/chat/completions", completion_window="24h"
        ),
    )
    module = importlib.reload(importlib.import_module("control_plane.entrypoints.split"))
    monkeypatch.setattr(module, "_aws", Aws(Settings()))  # made under this test's moto
    domain = logging.getLogger("control_plane")
    powertools_handler = domain.handlers[-1]
    domain.addHandler(caplog.handler)  # powertools stops propagation: listen where it writes

    result = module.handler({"batch_id": batch.id}, FakeContext())

    assert result == {"batch_id": batch.id, "status": "in_progress"}
    printed = [json.loads(x) for x in capfd.readouterr().out.splitlines() if x.startswith("{")]
    emf = [x for x in printed if "_aws" in x]
    assert emf and emf[-1]["RequestsAccepted"] == [7.0] and emf[-1]["BatchesSplit"] == [1.0]
    assert emf[-1]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "hotbatch"
    # The domain's stdlib log records leave through powertools' JSON formatter, with the ids
    # they carry and the invocation's context.
    (record,) = [r for r in caplog.records if r.getMessage() == "split done"]
    domain.removeHandler(caplog.handler)
    formatted = json.loads(powertools_handler.format(record))
    assert formatted["batch_id"] == batch.id and formatted["requests"] == 7
    assert formatted["function_name"] == "hotbatch-test" and formatted["service"] == "hotbatch"


@pytest.mark.stack  # a fresh interpreter: a subprocess
def test_the_lambda_entry_points_import_nothing_heavy() -> None:
    """Cold starts: no vLLM, torch, runpod SDK, openai SDK or moto on the Lambda path."""
    heavy = {"vllm", "torch", "transformers", "runpod", "openai", "moto", "handler.engine"}
    code = (
        "import sys, json; import control_plane.entrypoints.api, control_plane.entrypoints.split, "
        "control_plane.entrypoints.sweep; print(json.dumps(sorted(sys.modules)))"
    )
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not {m for m in loaded if m in heavy or m.split(".")[0] in heavy - {"handler.engine"}}
