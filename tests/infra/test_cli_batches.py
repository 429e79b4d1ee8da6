"""`hotbatch batches …` and `hotbatch health` through typer's CliRunner against the control
plane in process: the official openai SDK speaks to the FastAPI app through its TestClient,
the app to moto. Nothing is started (the whole runs of a batch are in test_cli_stack.py). One
app serves the module; each test gets a tenant of its own, so it sees only its own batches."""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from moto import mock_aws
from typer.testing import CliRunner, Result

from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.settings import Settings
from control_plane.store import apikeys
from infra import cli
from infra import client as api
from infra.aws_resources import create_resources
from infra.batches_cli import parse_metadata
from infra.client import Deployment
from tests.support.lines import COMPLETIONS, request_line
from tests.support.moto_state import KEEP_BOTO3_SESSION, read_template_once

TABLE = BUCKET = "hotbatch-cli-test"


@pytest.fixture(scope="module")
def app_on_moto(template: dict[str, Any]) -> Iterator[tuple[Aws, TestClient]]:
    with pytest.MonkeyPatch.context() as env:
        read_template_once(template, env)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        for name in [name for name in os.environ if name.startswith("HOTBATCH_")]:
            env.delenv(name)
        with mock_aws(config=KEEP_BOTO3_SESSION):
            settings = Settings(table_name=TABLE, bucket_name=BUCKET, gpu_price_per_hour=2)
            aws = Aws(settings)
            create_resources(
                dynamodb=aws.dynamodb, s3=aws.s3, sqs=aws.sqs, table_name=TABLE, bucket_name=BUCKET
            )
            with TestClient(create_app(aws=aws)) as app:
                yield aws, app


@pytest.fixture()
def deployment(app_on_moto: tuple[Aws, TestClient], monkeypatch: pytest.MonkeyPatch) -> Deployment:
    """The app as a new tenant sees it (its own key), with no HOTBATCH_* in the environment."""
    aws, app = app_on_moto
    for name in [name for name in os.environ if name.startswith("HOTBATCH_")]:
        monkeypatch.delenv(name)
    key = apikeys.create_key(aws.table, tenant_id=f"cli-{uuid.uuid4().hex[:8]}")
    return Deployment(base_url="http://testserver/v1", api_key=key, http_client=app, max_retries=0)


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


def submitted(deployment: Deployment, *args: str) -> dict[str, Any]:
    result = hotbatch(deployment, "batches", "submit", *args)
    assert result.exit_code == 0, result.output
    batch: dict[str, Any] = json.loads(result.stdout)
    return batch


def file_ids(deployment: Deployment) -> list[str]:
    listed = hotbatch(deployment, "files", "list", "-q")
    assert listed.exit_code == 0, listed.output
    return listed.stdout.split()


def test_get_shows_one_batch_as_a_table_as_json_or_as_its_id(
    deployment: Deployment, tmp_path: Path
) -> None:
    batch = submitted(deployment, str(batch_file(tmp_path, 2)), "--metadata", "run=get")

    table = hotbatch(deployment, "batches", "get", batch["id"])
    assert table.exit_code == 0, table.output
    for shown in (batch["id"], batch["input_file_id"], "run=get", "0/2"):
        assert shown in table.stdout
    as_json = json.loads(hotbatch(deployment, "batches", "get", batch["id"], "--json").stdout)
    assert as_json["id"] == batch["id"] and as_json["metadata"] == {"run": "get"}
    assert hotbatch(deployment, "batches", "get", batch["id"], "-q").stdout == batch["id"] + "\n"
    missing = hotbatch(deployment, "batches", "get", "batch_nope")
    assert missing.exit_code == 1 and "error 404" in missing.stderr


def test_list_status_keeps_only_that_status_paging_through_older_batches(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    oldest = submitted(deployment, str(batch_file(tmp_path, 1)))["id"]
    newer = submitted(deployment, str(batch_file(tmp_path, 1)))["id"]
    cancelled = json.loads(hotbatch(deployment, "batches", "cancel", oldest).stdout)
    # One batch per page: the cancelled one is on the second, as the 101st would be at 100.
    monkeypatch.setattr(api, "PAGE", 1)

    found = hotbatch(deployment, "batches", "list", "--status", cancelled["status"], "-q")
    assert found.exit_code == 0, found.output
    assert found.stdout.split() == [oldest]
    assert hotbatch(deployment, "batches", "list", "--status", "completed", "-q").stdout == ""
    everything = hotbatch(deployment, "batches", "list", "-q", "--limit", "2").stdout.split()
    assert everything == [newer, oldest]  # newest first, two pages of one
    bad = hotbatch(deployment, "batches", "list", "--status", "done")
    assert bad.exit_code == 2 and "--status" in bad.output


def test_estimate_uploads_an_expiring_copy_that_submit_file_id_reuses(
    deployment: Deployment, tmp_path: Path
) -> None:
    path = batch_file(tmp_path, 3)
    shown = hotbatch(deployment, "batches", "estimate", str(path), "-q")
    assert shown.exit_code == 0, shown.output
    (file_id,) = shown.stdout.split()  # -q: the uploaded file's id, nothing else
    assert f"batches submit --file-id {file_id}" in shown.stderr
    copy = json.loads(hotbatch(deployment, "files", "get", file_id, "--json").stdout)
    # The estimate's copy does not stay forever: a day, as the CLI says.
    assert copy["expires_at"] - copy["created_at"] == api.ESTIMATE_COPY_EXPIRES_S

    again = hotbatch(deployment, "batches", "estimate", file_id, "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["requests"] == 3
    batch = submitted(deployment, "--file-id", file_id)
    assert batch["input_file_id"] == file_id
    assert file_ids(deployment) == [file_id]  # estimated twice, submitted: one upload


def test_submit_by_file_id_takes_the_endpoint_of_the_files_first_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    path = tmp_path / "completions.jsonl"
    path.write_text(request_line("p0", url=COMPLETIONS) + "\n")
    file_id = hotbatch(deployment, "batches", "estimate", str(path), "-q").stdout.strip()
    by_option = hotbatch(deployment, "batches", "submit", "--file-id", file_id)
    assert by_option.exit_code == 0, by_option.output
    assert json.loads(by_option.stdout)["endpoint"] == COMPLETIONS
    assert submitted(deployment, file_id)["endpoint"] == COMPLETIONS  # an id as FILE


def test_submit_takes_one_of_file_and_file_id(deployment: Deployment, tmp_path: Path) -> None:
    neither = hotbatch(deployment, "batches", "submit")
    both = hotbatch(deployment, "batches", "submit", str(batch_file(tmp_path, 1)), "--file-id", "f")
    for refused in (neither, both):
        assert refused.exit_code == 2 and "FILE or --file-id" in refused.stderr
    assert file_ids(deployment) == []  # refused before anything was uploaded


def test_watch_and_submit_wait_give_up_after_their_timeout_with_exit_5(
    deployment: Deployment, tmp_path: Path
) -> None:
    # Nothing ticks in process: the batch never leaves validating.
    waited = hotbatch(
        deployment,
        "batches",
        "submit",
        str(batch_file(tmp_path, 1)),
        "--wait",
        "--timeout",
        "0.05",
        "--interval",
        "0.02",
        "-q",
    )
    assert waited.exit_code == 5, waited.output
    batch_id = waited.stdout.strip()
    assert batch_id.startswith("batch_")
    assert re.search(r"is still (validating|in_progress) after 0\.05 s", waited.stderr)
    watched = hotbatch(
        deployment, "batches", "watch", batch_id, "--timeout", "0.05", "--interval", "0.02"
    )
    assert watched.exit_code == 5 and json.loads(watched.stdout)["id"] == batch_id


def test_quiet_prints_ids_only_and_refuses_json_beside_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    batch_id = hotbatch(
        deployment, "batches", "submit", str(batch_file(tmp_path, 2)), "-q"
    ).stdout.strip()
    assert batch_id.startswith("batch_") and "\n" not in batch_id
    assert hotbatch(deployment, "batches", "cancel", batch_id, "-q").stdout == batch_id + "\n"
    assert hotbatch(deployment, "batches", "dead-letters", batch_id, "-q").stdout == ""
    both = hotbatch(deployment, "batches", "list", "--json", "-q")
    assert both.exit_code == 2 and "choose one" in both.stderr


def test_a_refused_api_key_exits_4_naming_the_url_and_the_flag(deployment: Deployment) -> None:
    refused = hotbatch(deployment, "--api-key", "sk-wrong", "batches", "list")
    assert refused.exit_code == 4, refused.output
    assert refused.stderr.startswith("error 401: http://testserver/v1 refused the API key")
    assert "--api-key / HOTBATCH_API_KEY" in refused.stderr and refused.stderr.count("\n") == 1


def test_health_prints_the_components(deployment: Deployment) -> None:
    result = hotbatch(deployment, "health", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["components"]) == {"gpu", "workers", "queue", "endpoint"}
    table = hotbatch(deployment, "health")
    for component in ("gpu", "workers", "queue", "endpoint"):
        assert component in table.stdout
    assert hotbatch(deployment, "health", "-q").stdout == report["status"] + "\n"


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
