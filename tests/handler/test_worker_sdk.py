"""`python -m handler` through the real runpod SDK entry, as a worker image is smoke-tested."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.blob_server import BlobServer
from tests.support.chunks import read_lines, stage_chunk
from tests.support.lines import request_line
from tests.support.tiny import TINY_MAX_MODEL_LEN

pytestmark = [pytest.mark.engine, pytest.mark.e2e]


def test_worker_runs_a_test_input_json_chunk_through_the_runpod_sdk(
    tiny_model: Path, blobs: BlobServer, tmp_path: Path
) -> None:
    lines = [request_line(f"r{i}", f"hello {i}", max_tokens=4) for i in range(8)]
    lines.append(request_line("missing-model", "hello", model="nope"))
    job = stage_chunk(blobs, lines)
    (tmp_path / "test_input.json").write_text(json.dumps({"input": job.model_dump()}))
    env = {
        **os.environ,
        "MODEL_NAME": str(tiny_model),
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
        "MAX_MODEL_LEN": str(TINY_MAX_MODEL_LEN),
        "RUNPOD_POD_ID": "sdk-worker",
    }
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)  # local mode: one job from test_input.json
    done = subprocess.run(
        [sys.executable, "-m", "handler"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert '"message": "engine ready"' in log and "cold_start_s" in log
    assert "Job local_test completed successfully" in log
    assert [line.custom_id for line in read_lines(blobs, job, "output")] == [
        f"r{i}" for i in range(8)
    ]
    assert [line.custom_id for line in read_lines(blobs, job, "errors")] == ["missing-model"]
    assert '"worker_id": "sdk-worker"' in log.replace("'", '"')
