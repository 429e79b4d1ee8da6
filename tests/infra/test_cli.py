"""README's main job: `hotbatch run-chunk examples/chunk.jsonl` on the real engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from handler.contract import BatchRequestOutput

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.engine, pytest.mark.e2e]


def test_run_chunk_processes_the_example_file_with_the_generated_model(tmp_path: Path) -> None:
    example = REPO / "examples" / "chunk.jsonl"
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
