"""`hotbatch batches …` and `hotbatch health` through typer's CliRunner against the control
plane in process: the official openai SDK speaks to the FastAPI app through its TestClient,
the app to moto. Nothing is started (the whole runs of a batch are in test_cli_stack.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from moto import mock_aws
from typer.testing import CliRunner, Result

from control_plane.api import create_app
from control_plane.aws import Aws
from control_plane.settings import Settings
from control_plane.store import apikeys
from infra import cli
from infra.aws_resources import create_resources
from infra.batches_cli import parse_metadata
from infra.client import Deployment
from tests.support.lines import request_line

TABLE = BUCKET = "hotbatch-cli-test"


@pytest.fixture()
def deployment(monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in [name for name in os.environ if name.startswith("HOTBATCH_")]:
        monkeypatch.delenv(name)
    with mock_aws():
        settings = Settings(table_name=TABLE, bucket_name=BUCKET, gpu_price_per_hour=2)
        aws = Aws(settings)
        create_resources(
            dynamodb=aws.dynamodb, s3=aws.s3, sqs=aws.sqs, table_name=TABLE, bucket_name=BUCKET
        )
        key = apikeys.create_key(aws.table, tenant_id="cli")
        with TestClient(create_app(aws=aws)) as app:
            yield Deployment(base_url="http://testserver/v1", api_key=key, http_client=app)


def hotbatch(deployment: Deployment, *args: str) -> Result:
    return CliRunner().invoke(cli.app, list(args), obj=deployment)


def batch_file(tmp_path: Path, count: int, *, max_tokens: int = 8) -> Path:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
    path = tmp_path / "requests.jsonl"
    path.write_text(
        "\n".join(
            request_line(f"c{i}", body={**body, "max_tokens": max_tokens}) for i in range(count)
        )
        + "\n"
    )
    return path


def test_submit_uploads_the_file_and_creates_the_batch_with_extras(
    deployment: Deployment, tmp_path: Path
) -> None:
    result = hotbatch(
        deployment,
        "batches",
        "submit",
        str(batch_file(tmp_path, 5)),
        "--priority",
        "high",
        "--metadata",
        "run=nightly",
        "-m",
        "team=ml",
    )
    assert result.exit_code == 0, result.output
    batch = json.loads(result.stdout)  # stdout is the batch; the messages went to stderr
    assert batch["status"] in ("validating", "in_progress")
    assert batch["priority"] == "high"
    assert batch["metadata"] == {"run": "nightly", "team": "ml"}
    assert batch["hotbatch"]["engine_seconds"] == 0.0
    assert f"batch {batch['id']} created" in result.stderr

    listed = hotbatch(deployment, "batches", "list", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == [batch["id"]]
    assert rows[0]["request_counts"]["total"] == 5
    table = hotbatch(deployment, "batches", "list")
    assert batch["id"] in table.stdout and "0/5" in table.stdout


def test_submit_accepts_an_uploaded_file_id_and_refuses_a_missing_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    first = json.loads(
        hotbatch(deployment, "batches", "submit", str(batch_file(tmp_path, 2))).stdout
    )
    again = hotbatch(deployment, "batches", "submit", first["input_file_id"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["input_file_id"] == first["input_file_id"]
    missing = hotbatch(deployment, "batches", "submit", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and "input file not found" in missing.stderr


def test_estimate_before_submit_counts_requests_and_tokens(
    deployment: Deployment, tmp_path: Path
) -> None:
    result = hotbatch(deployment, "batches", "estimate", str(batch_file(tmp_path, 12)), "--json")
    assert result.exit_code == 0, result.output
    estimate: dict[str, Any] = json.loads(result.stdout)
    assert estimate["requests"] == 12 and estimate["output_tokens"] == 12 * 8
    assert estimate["input_tokens_method"] == "characters"  # nothing measured yet
    assert estimate["duration_seconds"] is None and estimate["cost_usd"] is None
    shown = hotbatch(deployment, "batches", "estimate", str(batch_file(tmp_path, 12)))
    assert shown.exit_code == 0 and "no measured throughput yet" in shown.stdout


def test_cancel_then_dead_letters_download_and_retry_say_what_is_possible(
    deployment: Deployment, tmp_path: Path
) -> None:
    batch = json.loads(
        hotbatch(deployment, "batches", "submit", str(batch_file(tmp_path, 3))).stdout
    )
    cancelled = hotbatch(deployment, "batches", "cancel", batch["id"])
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.stdout)["status"] in ("cancelling", "cancelled")

    letters = hotbatch(deployment, "batches", "dead-letters", batch["id"], "--json")
    assert letters.exit_code == 0 and json.loads(letters.stdout) == []
    # No results yet: a clear message and exit 1, not an empty folder that looks complete.
    download = hotbatch(deployment, "batches", "download", batch["id"], "--out", str(tmp_path))
    assert download.exit_code == 1 and "no results yet" in download.stderr
    # The API's own error (409: the batch has not completed) reaches the user as one line.
    retried = hotbatch(deployment, "batches", "retry", batch["id"], "--custom-id", "c0")
    assert retried.exit_code == 1
    assert "error 409" in retried.stderr and "redriven once it has completed" in retried.stderr
    unknown = hotbatch(deployment, "batches", "watch", "batch_nope")
    assert unknown.exit_code == 1 and "error 404" in unknown.stderr


def test_health_prints_the_components(deployment: Deployment) -> None:
    result = hotbatch(deployment, "health", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["components"]) == {"gpu", "workers", "queue", "endpoint"}
    table = hotbatch(deployment, "health")
    for component in ("gpu", "workers", "queue", "endpoint"):
        assert component in table.stdout


def test_without_a_deployment_the_batch_commands_name_the_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HOTBATCH_API_URL", raising=False)
    monkeypatch.delenv("HOTBATCH_API_KEY", raising=False)
    result = CliRunner().invoke(cli.app, ["batches", "list"])
    assert result.exit_code == 2
    assert "HOTBATCH_API_URL" in result.stderr and "HOTBATCH_API_KEY" in result.stderr


def test_metadata_pairs_are_parsed_and_a_bad_one_is_refused() -> None:
    assert parse_metadata(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    assert parse_metadata(None) is None
    result = CliRunner().invoke(
        cli.app, ["batches", "submit", "file-x", "--metadata", "novalue"], obj=object()
    )
    assert result.exit_code == 2 and "key=value" in result.output


def test_the_local_commands_keep_their_flags() -> None:
    for command in (["local", "up"], ["local", "run"]):
        shown = CliRunner().invoke(cli.app, [*command, "--help"], terminal_width=200)
        assert shown.exit_code == 0
        for flag in (
            "--workers",
            "--max-workers",
            "--idle-timeout",
            "--cold-start-delay",
            "--model",
            "--served-model-name",
            "--chunk-size",
            "--api-key",
            "--tenant",
            "--gpu-price-per-hour",
        ):
            assert flag in shown.stdout, (command, flag)
    up = CliRunner().invoke(cli.app, ["local", "up", "--help"], terminal_width=200).stdout
    assert all(flag in up for flag in ("--port", "--aws-port", "--runpod-port"))
