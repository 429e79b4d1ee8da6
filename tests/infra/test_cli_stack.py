"""The CLI against a running local stack (moto's server, the control plane under uvicorn with
its tick, the local RunPod endpoint with real runpod SDK workers around the stand-in engine):
estimate, submit in presigned parts, follow to the end, download, and the batch's figures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from infra import cli, local_stack
from infra.client import Deployment
from infra.stack import LocalStack, StackConfig, worker_pool
from tests.support.lines import request_line
from tests.support.stack import STANDIN_WORKER

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
STANDIN = STANDIN_WORKER
PRICE = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    pool = worker_pool(
        workers=1,
        command=STANDIN,
        env={"PYTHONPATH": str(REPO), "STANDIN_DELAY_S": "0.2"},
        workdir=tmp_path_factory.mktemp("cli-stack"),
    )
    settings = {"chunk_max_requests": 10, "gpu_price_per_hour": PRICE}
    stack = LocalStack(StackConfig(pool=pool, tick_interval_s=0.3, settings=settings)).start()
    yield stack
    stack.stop()


def hotbatch(stack: LocalStack, *args: str) -> Result:
    target = Deployment(base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key)
    return CliRunner().invoke(cli.app, list(args), obj=target)


def requests_file(path: Path, count: int, *, prefix: str) -> Path:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    path.write_text("\n".join(request_line(f"{prefix}{i}", body=body) for i in range(count)) + "\n")
    return path


def submit_and_wait(stack: LocalStack, path: Path, *extra: str) -> tuple[Result, dict[str, Any]]:
    result = hotbatch(
        stack, "batches", "submit", str(path), "--wait", "--interval", "0.3", "--timeout", "120"
    )
    return result, json.loads(result.stdout) if result.stdout.strip() else {}


def test_submit_wait_download_and_the_estimate_against_the_actual(
    stack: LocalStack, tmp_path: Path
) -> None:
    # Earlier chunks to measure: the estimate rests on them.
    warm, warm_batch = submit_and_wait(stack, requests_file(tmp_path / "w.jsonl", 40, prefix="w"))
    assert warm.exit_code == 0, warm.output
    assert warm_batch["status"] == "completed"

    path = requests_file(tmp_path / "main.jsonl", 40, prefix="m")
    # Uploaded in presigned parts, as a large file is: its copy expires all the same.
    shown = hotbatch(stack, "batches", "estimate", str(path), "--json", "--parts-above", "100")
    assert shown.exit_code == 0, shown.output
    estimate = json.loads(shown.stdout)
    copy = json.loads(hotbatch(stack, "files", "get", estimate["input_file_id"], "--json").stdout)
    assert copy["expires_at"] - copy["created_at"] == 24 * 3600
    # Four chunks on one worker: its first is kept apart (one-time costs), and so is the second
    # when the worker took both at once (it shared those costs); two or three are the basis.
    assert estimate["basis"]["chunks"] in (2, 3)
    assert estimate["input_tokens_method"] == "measured_per_byte"

    # Above the (lowered) single-request limit: /v1/uploads and PUTs of presigned parts.
    submitted = hotbatch(
        stack,
        "batches",
        "submit",
        str(path),
        "--wait",
        "--interval",
        "0.3",
        "--timeout",
        "120",
        "--parts-above",
        "100",
        "--metadata",
        "run=cli",
    )
    assert submitted.exit_code == 0, submitted.output
    assert "in presigned parts" in submitted.stderr
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "completed" and batch["metadata"] == {"run": "cli"}
    assert batch["request_counts"] == {"total": 40, "completed": 40, "failed": 0}
    figures = batch["hotbatch"]
    assert figures["engine_seconds"] > 0
    assert figures["cost_usd"] == pytest.approx(figures["engine_seconds"] * PRICE / 3600, rel=1e-3)
    assert figures["cache_hit_rate"] == pytest.approx(1 / 3, abs=1e-4)  # stand-in: 1 of 3
    assert figures["tokens_per_second"] > 0 and figures["eta_at"] is None

    out = tmp_path / "results"
    fetched = hotbatch(stack, "batches", "download", batch["id"], "--out", str(out))
    assert fetched.exit_code == 0, fetched.output
    ids = sorted(json.loads(line)["custom_id"] for line in (out / "output.jsonl").open())
    assert ids == sorted(f"m{i}" for i in range(40))
    assert (out / "errors.jsonl").read_bytes() == b""

    actual = {
        "requests": batch["request_counts"]["total"],
        "input_tokens": batch["usage"]["input_tokens"],
        "output_tokens": batch["usage"]["output_tokens"],
        "engine_seconds": figures["engine_seconds"],
        "duration_seconds": batch["completed_at"] - batch["created_at"],
        "cost_usd": figures["cost_usd"],
    }
    print("\nestimate vs actual (stand-in workers):")  # noqa: T201
    for name, value in actual.items():
        print(f"  {name:17} estimate {estimate[name]!s:>12}  actual {value!s:>12}")  # noqa: T201
    assert estimate["requests"] == actual["requests"]
    assert estimate["output_tokens"] == actual["output_tokens"]  # max_tokens, all used
    assert estimate["input_tokens"] == pytest.approx(actual["input_tokens"], rel=0.1)
    assert estimate["engine_seconds"] == pytest.approx(actual["engine_seconds"], rel=0.5)
    assert estimate["duration_seconds"] > 0 and estimate["cost_usd"] > 0

    watched = hotbatch(stack, "batches", "watch", batch["id"])
    assert watched.exit_code == 0 and json.loads(watched.stdout)["status"] == "completed"
    listed = json.loads(hotbatch(stack, "batches", "list", "--json").stdout)
    assert {warm_batch["id"], batch["id"]} <= {row["id"] for row in listed}


def test_wait_exits_1_when_the_batch_does_not_complete(stack: LocalStack, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(request_line("ok") + "\n{not json\n")
    result, batch = submit_and_wait(stack, path)
    assert result.exit_code == 1
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["line"] == 2


def test_local_run_shows_progress_only_and_keeps_every_log_line_in_the_file_it_names(
    stack: LocalStack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """`hotbatch local run` on this module's stack (starting its own would cost ~10 s more;
    tests/infra/test_cli_local.py has the log file taking over loggers configured at start)."""
    run = local_stack.run
    monkeypatch.setattr(local_stack, "run", lambda options: run(options, stack=stack))
    path = requests_file(tmp_path / "run.jsonl", 4, prefix="r")
    workdir, out = tmp_path / "stack", tmp_path / "out"
    # The stack logs at INFO from its own threads (sweep, queues, endpoint) while the batch runs.
    result = CliRunner().invoke(
        cli.app,
        ["local", "run", str(path), "--workdir", str(workdir), "--out", str(out)]
        + ["--timeout", "60", "--ready-timeout", "60"],
    )
    terminal = capfd.readouterr()  # whatever reached the file descriptors themselves

    assert result.exit_code == 0, result.output
    log_file = (workdir / "logs" / "local-run.log").resolve()
    assert result.stderr.splitlines()[0] == f"logs: {log_file}"
    assert "created from file-" in result.stderr  # the progress stays
    assert result.stdout.splitlines()[0].endswith("completed: 4/4 done, 0 failed")
    for shown in (result.stdout, result.stderr, terminal.out, terminal.err):
        assert not [line for line in shown.splitlines() if line.lstrip().startswith("{")], shown
    logged = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert logged and all({"time", "level", "logger", "message"} <= set(line) for line in logged)
    assert {line["logger"].split(".")[0] for line in logged} & {"control_plane", "handler"}
    assert sorted(json.loads(line)["custom_id"] for line in (out / "output.jsonl").open()) == [
        f"r{i}" for i in range(4)
    ]
