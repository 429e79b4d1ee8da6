"""`hotbatch local up|run` without starting anything: what they print (`--json`, `-q`), their
exit statuses, the flags they hand the stack, and the log file that keeps `local run`'s terminal
free of log lines (the whole run, with workers, is in test_cli_stack.py)."""

from __future__ import annotations

import json
import logging
import logging.config
import shlex
import sys
import time
import warnings
from pathlib import Path

import pytest
from openai.types import Batch
from typer.testing import CliRunner

from infra import cli, local_stack
from infra.local_stack import LocalOptions, RunOutcome, ready_text
from infra.logfile_cli import LogFile

EXPORTS = {"HOTBATCH_API_URL": "http://127.0.0.1:8000/v1", "HOTBATCH_API_KEY": "k 'quoted'"}


def test_up_prints_eval_lines_or_one_json_object_then_ready() -> None:
    lines = ready_text(EXPORTS, as_json=False).splitlines()
    assert lines[-1] == "ready"
    parsed = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines[:-1])
    assert parsed == EXPORTS
    as_json = ready_text(EXPORTS, as_json=True).splitlines()
    assert len(as_json) == 2 and json.loads(as_json[0]) == EXPORTS and as_json[1] == "ready"


def test_up_json_reaches_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[LocalOptions] = []

    def up(options: LocalOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(local_stack, "up", up)
    monkeypatch.setattr("handler.logs.configure", lambda *args, **kwargs: None)
    assert cli.main(["local", "up", "--json"]) == 0
    assert cli.main(["local", "up"]) == 0
    assert [options.json_exports for options in seen] == [True, False]


def finished(status: str) -> Batch:
    now = int(time.time())
    return Batch.model_validate(
        {
            "id": "batch_local",
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "input_file_id": "file-in",
            "completion_window": "24h",
            "status": status,
            "created_at": now,
            "request_counts": {"total": 3, "completed": 2, "failed": 1},
        }
    )


@pytest.mark.parametrize(
    ("flags", "code", "status"),
    [([], 0, "completed"), (["--json"], 1, "failed"), (["-q"], 5, "in_progress")],
)
def test_run_prints_a_summary_the_batch_or_its_id_and_exits_with_the_runs_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: list[str], code: int, status: str
) -> None:
    seen: list[LocalOptions] = []

    def run(options: LocalOptions) -> RunOutcome:
        seen.append(options)
        out = options.out
        return RunOutcome(
            code, tmp_path / "run.log", finished(status), out / "output.jsonl", out / "errors.jsonl"
        )

    monkeypatch.setattr(local_stack, "run", run)
    path = tmp_path / "in.jsonl"
    result = CliRunner().invoke(cli.app, ["local", "run", str(path), "--workers", "2", *flags])
    assert result.exit_code == code, result.output
    assert seen[0].input == path and seen[0].workers == 2
    if flags == ["--json"]:
        assert json.loads(result.stdout)["status"] == "failed"
    elif flags == ["-q"]:
        assert result.stdout == "batch_local\n"
    else:
        assert result.stdout.splitlines() == [
            "batch batch_local completed: 3/3 done, 1 failed",
            f"results: {seen[0].out / 'output.jsonl'}",
            f"errors: {seen[0].out / 'errors.jsonl'}",
            f"logs: {tmp_path / 'run.log'}",
        ]


def test_run_stack_parses_the_flags_as_local_run_does(tmp_path: Path) -> None:
    stack, env = cli.run_stack(
        tmp_path / "in.jsonl", "--workers", "2", "--model", "/models/m", "--json", "-q"
    )
    assert stack.config.pool.min_workers == 2 and env["MODEL_NAME"] == "/models/m"


def test_the_log_file_takes_every_line_off_the_terminal_and_gives_it_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Lambda entry tests give `control_plane` powertools' handler (as a Lambda does, never
    # `local run`), bound to an earlier test's captured stdout: as a fresh CLI process has it.
    control_plane_logger = logging.getLogger("control_plane")
    monkeypatch.setattr(control_plane_logger, "handlers", [])
    monkeypatch.setattr(control_plane_logger, "propagate", True)
    # A logger that writes to the terminal itself (as `handler.logs.configure` leaves the
    # worker's), one that propagates (the control plane's), and one configured while the file
    # is in use, as uvicorn configures its own when the stack starts.
    own = logging.getLogger("test.own_terminal")
    terminal = logging.StreamHandler(sys.stderr)
    own.addHandler(terminal)
    own.propagate = False
    path = tmp_path / "logs" / "local-run.log"
    before = logging.getLogger().handlers[:]
    try:
        with LogFile(path) as logs:
            own.warning("from a logger with its own handler")
            logging.getLogger("control_plane.test").info("from the control plane", extra={"n": 1})
            logging.getLogger("a.library").info("one line per request: left out")
            logging.config.dictConfig(
                {
                    "version": 1,
                    "disable_existing_loggers": False,
                    "handlers": {
                        "h": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
                    },
                    "loggers": {
                        "test.configured": {"handlers": ["h"], "level": "INFO", "propagate": False}
                    },
                }
            )
            logs.claim()
            logging.getLogger("test.configured").warning("configured while running")
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("a library's warning", UserWarning, stacklevel=1)
            sys.stderr.write("progress stays on the terminal\n")
        captured = capsys.readouterr()
        assert captured.err == "progress stays on the terminal\n" and captured.out == ""
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [line["logger"] for line in lines] == [
            "test.own_terminal",
            "control_plane.test",
            "test.configured",
            "py.warnings",
        ]
        assert lines[1]["n"] == 1 and "a library's warning" in lines[3]["message"]

        # Given back: the logger's own handler, nothing of the file left on the root.
        assert own.handlers == [terminal]
        assert logging.getLogger().handlers == before
        assert logging.getLogger("test.configured").handlers == []  # its stream may be gone
        own.warning("after")
        assert "after" in capsys.readouterr().err
    finally:
        own.removeHandler(terminal)
