"""`hotbatch files …` through typer's CliRunner against the control plane in process (the
fixtures of test_cli_batches.py: the openai SDK on the app's TestClient, the app on moto)."""

from __future__ import annotations

import json
from pathlib import Path

from infra.client import Deployment
from tests.infra.test_cli_batches import app_on_moto, batch_file, deployment, hotbatch

# Fixtures shared with test_cli_batches.py (pytest finds them by name in this module).
FIXTURES = (app_on_moto, deployment)


def uploaded(deployment: Deployment, path: Path) -> str:
    """A file as `batches estimate` uploads it; its id."""
    shown = hotbatch(deployment, "batches", "estimate", str(path), "-q")
    assert shown.exit_code == 0, shown.output
    return shown.stdout.strip()


def test_files_list_get_download_and_delete(deployment: Deployment, tmp_path: Path) -> None:
    path = batch_file(tmp_path, 3)
    file_id = uploaded(deployment, path)

    table = hotbatch(deployment, "files", "list")
    assert table.exit_code == 0, table.output
    assert file_id in table.stdout and "batch" in table.stdout, table.stdout
    (listed,) = json.loads(hotbatch(deployment, "files", "list", "--json").stdout)
    assert listed["id"] == file_id and listed["bytes"] == path.stat().st_size
    shown = hotbatch(deployment, "files", "get", file_id)
    assert shown.exit_code == 0 and path.name in shown.stdout and "expires" in shown.stdout
    assert hotbatch(deployment, "files", "get", file_id, "-q").stdout == file_id + "\n"

    # To stdout, as it is: the bytes uploaded and nothing else.
    raw = hotbatch(deployment, "files", "download", file_id)
    assert raw.exit_code == 0, raw.output
    assert raw.stdout_bytes == path.read_bytes()
    out = tmp_path / "copy.jsonl"
    saved = hotbatch(deployment, "files", "download", file_id, "--out", str(out), "--json")
    size = len(raw.stdout_bytes)
    assert json.loads(saved.stdout) == {"id": file_id, "path": str(out), "bytes": size}
    assert out.read_bytes() == path.read_bytes()
    to_stdout_as_json = hotbatch(deployment, "files", "download", file_id, "--json")
    assert to_stdout_as_json.exit_code == 2 and "--out PATH" in to_stdout_as_json.stderr

    deleted = hotbatch(deployment, "files", "delete", file_id, "-q")
    assert deleted.exit_code == 0 and deleted.stdout == file_id + "\n"
    assert hotbatch(deployment, "files", "list", "-q").stdout == ""
    gone = hotbatch(deployment, "files", "get", file_id)
    assert gone.exit_code == 1 and "error 404" in gone.stderr


def test_files_list_filters_by_purpose_and_stops_at_limit(
    deployment: Deployment, tmp_path: Path
) -> None:
    first = uploaded(deployment, batch_file(tmp_path, 1))
    second = uploaded(deployment, batch_file(tmp_path, 2))

    assert hotbatch(deployment, "files", "list", "-q").stdout.split() == [second, first]
    assert hotbatch(deployment, "files", "list", "-q", "--limit", "1").stdout.split() == [second]
    after = hotbatch(deployment, "files", "list", "-q", "--after", second).stdout.split()
    assert after == [first]
    outputs = hotbatch(deployment, "files", "list", "--purpose", "batch_output", "-q")
    assert outputs.exit_code == 0 and outputs.stdout == ""
    inputs = hotbatch(deployment, "files", "list", "--purpose", "batch", "-q")
    assert inputs.stdout.split() == [second, first]
