"""`hotbatch run-chunk` on the real engine (tests/data/tiny-chunk.jsonl, the tiny model); and
`hotbatch keys …` against moto in process."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.loaders import Loader, create_loader
from moto import mock_aws
from typer.testing import CliRunner, Result

from control_plane.clients.aws import Aws
from control_plane.settings import Settings
from control_plane.store import apikeys
from handler.contract import BatchRequestOutput
from infra import cli
from infra.aws_resources import create_resources
from infra.keys_cli import parse_expires
from tests.support.moto_state import KEEP_BOTO3_SESSION, read_template_once

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.engine
@pytest.mark.e2e
def test_run_chunk_processes_the_example_file_with_the_generated_model(tmp_path: Path) -> None:
    example = REPO / "tests" / "data" / "tiny-chunk.jsonl"
    sent = [json.loads(line)["custom_id"] for line in example.read_text().splitlines()]
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "run-chunk", str(example)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)  # stdout is only the result; logs go to stderr
    out = tmp_path / ".hotbatch" / "out"
    outputs = [
        BatchRequestOutput.model_validate_json(line)
        for line in (out / "output.jsonl").read_text().splitlines()
    ]
    errors = [
        BatchRequestOutput.model_validate_json(line)
        for line in (out / "errors.jsonl").read_text().splitlines()
    ]
    assert sorted(line.custom_id for line in outputs + errors) == sorted(sent)
    assert [line.custom_id for line in errors] == ["candidate-bad-model"]
    assert result["counts"] == {"total": len(sent), "completed": len(sent) - 1, "failed": 1}
    assert json.loads((out / "summary.json").read_text())["counts"] == result["counts"]
    schema_checked = 0
    for line in outputs:
        assert line.response is not None and line.response.body is not None
        choice = line.response.body["choices"][0]
        # Every fourth request asks for a json_schema; a finished one must parse and match it
        # (the random-weight model may run out of tokens padding JSON with whitespace).
        if int(line.custom_id[-3:]) % 4 == 0 and choice["finish_reason"] == "stop":
            verdict = json.loads(choice["message"]["content"])
            assert set(verdict) == {"score", "hire"} and verdict["score"] in range(1, 6)
            schema_checked += 1
    assert schema_checked >= 3


@pytest.mark.engine
@pytest.mark.e2e
def test_run_chunk_with_a_missing_file_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "run-chunk", str(tmp_path / "nope.jsonl")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "input file not found" in done.stderr


# --- hotbatch keys ---------------------------------------------------------------------------

KEYS_TABLE = "hotbatch-keys-test"
JAN_31_2027 = calendar.timegm((2027, 1, 31, 0, 0, 0))  # 00:00 UTC; "now" below is Jan 15


def _without_aws_or_hotbatch_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith(("HOTBATCH_", "AWS_"))]:
        monkeypatch.delenv(name)
    # No config or credentials file, no instance metadata: nothing to find but what a test sets.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


@pytest.fixture(scope="module")
def service_models() -> Loader:
    """botocore's service models, endpoint rules and waiters, read once a module: each test's
    session is new (it reads this test's environment), only these files are shared (~0.3 s a
    test to read again)."""
    return create_loader()


@pytest.fixture()
def table(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    service_models: Loader,
    template: dict[str, Any],
) -> Iterator[Aws]:
    _without_aws_or_hotbatch_settings(monkeypatch, tmp_path)
    read_template_once(template, monkeypatch)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HOTBATCH_TABLE_NAME": KEYS_TABLE,
    }.items():
        monkeypatch.setenv(name, value)
    session = botocore.session.get_session()
    session.register_component("data_loader", service_models)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", boto3.Session(botocore_session=session))
    with mock_aws(config=KEEP_BOTO3_SESSION):
        aws = Aws(Settings(table_name=KEYS_TABLE))
        create_resources(
            dynamodb=aws.dynamodb, s3=aws.s3, table_name=KEYS_TABLE, bucket_name=KEYS_TABLE
        )
        yield aws


def keys(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli.app, ["keys", *args], input=stdin)


def test_keys_create_prints_the_key_once_with_its_id_and_expiry(table: Aws) -> None:
    created = keys("create", "--tenant", "acme", "--name", "ci", "--expires", "30d")
    assert created.exit_code == 0, created.output
    shown = json.loads(created.stdout)
    assert apikeys.tenant_for(table.table, shown["api_key"]) == "acme"
    assert shown["id"].startswith("key_") and shown["table"] == KEYS_TABLE
    assert shown["expires_at"] - shown["created_at"] in range(30 * 86400 - 2, 30 * 86400 + 2)

    listed = keys("list", "--json")
    assert listed.exit_code == 0, listed.output
    (info,) = json.loads(listed.stdout)
    assert info == {
        name: value for name, value in shown.items() if name not in ("api_key", "table")
    }
    assert shown["api_key"] not in listed.stdout + keys("list").stdout
    assert apikeys.digest(shown["api_key"]) not in listed.stdout


@pytest.mark.parametrize(
    ("expires", "at"),
    [
        ("12h", 1_800_000_000 + 12 * 3600),
        ("2w", 1_800_000_000 + 14 * 86400),
        ("2027-01-31", JAN_31_2027),
        ("2027-01-31T18:00:00Z", JAN_31_2027 + 18 * 3600),
        ("2027-01-31T18:00:00+02:00", JAN_31_2027 + 16 * 3600),
    ],
)
def test_expiry_takes_durations_dates_and_times(expires: str, at: int) -> None:
    assert parse_expires(expires, now=1_800_000_000) == at


@pytest.mark.parametrize("expires", ["soon", "30x", "2020-01-01", "0d"])
def test_an_unreadable_or_past_expiry_is_refused_before_anything_is_written(
    table: Aws, expires: str
) -> None:
    created = keys("create", "--tenant", "acme", "--expires", expires)
    assert created.exit_code == 2 and "--expires" in created.output
    assert apikeys.list_keys(table.table) == []


def test_keys_revoke_by_id_revokes_that_key_only(table: Aws) -> None:
    kept, _ = apikeys.issue_key(table.table, tenant_id="a")
    gone, info = apikeys.issue_key(table.table, tenant_id="b")

    revoked = keys("revoke", "--id", info.id)

    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.stdout) == {"revoked": True, "id": info.id}
    assert apikeys.tenant_for(table.table, gone) is None
    assert apikeys.tenant_for(table.table, kept) == "a"
    assert keys("revoke", "--id", "key_nope").exit_code == 1


def test_keys_revoke_reads_the_key_from_stdin(table: Aws) -> None:
    key = apikeys.create_key(table.table, tenant_id="a")
    revoked = keys("revoke", stdin=key + "\n")
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.stdout) == {"revoked": True}
    assert apikeys.tenant_for(table.table, key) is None
    assert keys("revoke", stdin="").exit_code == 2


def test_keys_revoke_refuses_a_key_on_the_command_line(table: Aws) -> None:
    key = apikeys.create_key(table.table, tenant_id="a")
    refused = keys("revoke", key)
    assert refused.exit_code == 2
    assert "pipe it on stdin" in refused.stderr and "--id" in refused.stderr
    assert apikeys.tenant_for(table.table, key) == "a"  # not revoked from argv either


@pytest.mark.parametrize(
    "command", [["create", "--tenant", "t"], ["list"], ["revoke", "--id", "x"]]
)
def test_keys_commands_need_the_table_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: list[str]
) -> None:
    _without_aws_or_hotbatch_settings(monkeypatch, tmp_path)
    result = keys(*command)
    assert result.exit_code == 2
    assert "--table" in result.stderr and "HOTBATCH_TABLE_NAME" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}, "no AWS region"),
        ({"AWS_DEFAULT_REGION": "us-east-1"}, "no AWS credentials"),
    ],
)
def test_keys_commands_say_what_aws_setting_is_missing_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, environment: dict[str, str], message: str
) -> None:
    _without_aws_or_hotbatch_settings(monkeypatch, tmp_path)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = keys("list", "--table", "t")
    assert result.exit_code == 2  # configuration, as a missing table is
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.output


def test_keys_create_with_no_aws_config_exits_2_with_one_line_naming_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _without_aws_or_hotbatch_settings(monkeypatch, tmp_path)
    monkeypatch.setenv("HOTBATCH_TABLE_NAME", KEYS_TABLE)
    result = keys("create", "--tenant", "acme")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: no AWS region: set AWS_REGION (or AWS_PROFILE to a profile that has one)\n"
    )
    assert result.stdout == ""


def test_a_table_that_does_not_exist_is_named_with_exit_2(table: Aws) -> None:
    result = keys("list", "--table", "not-this-stack")
    assert result.exit_code == 2
    assert "no table not-this-stack" in result.stderr and result.stderr.count("\n") == 1


def test_keys_quiet_and_json_print_what_scripts_need(table: Aws) -> None:
    created = keys("create", "--tenant", "acme", "-q")
    assert created.exit_code == 0, created.output
    (key,) = created.stdout.split()  # the key itself: it is never shown again
    assert apikeys.tenant_for(table.table, key) == "acme"
    (info,) = apikeys.list_keys(table.table)
    assert info.id in created.stderr
    assert keys("list", "-q").stdout == info.id + "\n"
    assert json.loads(keys("create", "--tenant", "b", "--json").stdout)["tenant"] == "b"
    revoked = keys("revoke", "--id", info.id, "-q")
    assert revoked.exit_code == 0 and revoked.stdout == info.id + "\n"
    unknown = keys("revoke", "--id", "key_nope", "--json")
    assert unknown.exit_code == 1 and json.loads(unknown.stdout) == {
        "revoked": False,
        "id": "key_nope",
    }
