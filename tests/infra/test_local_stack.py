"""`hotbatch local up` as a user runs it: wait for `ready`, eval the exports, use the runpod SDK,
then SIGTERM leaves no process behind."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psutil
import pytest
import runpod
from openai import OpenAI

from infra.wait import wait_for
from tests.support.lines import CHAT, jsonl

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.engine, pytest.mark.e2e]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_local_up_prints_exports_then_ready_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "local",
            "up",
            "--workers",
            "1",
            "--runpod-port",
            str(free_port()),
            "--port",
            str(free_port()),
            "--aws-port",
            str(free_port()),
            "--api-key",
            "hb-script-key",
            "--workdir",
            str(tmp_path / "stack"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        exports: dict[str, str] = {}
        assert stack.stdout is not None
        deadline = time.monotonic() + 600
        for line in stack.stdout:
            if line.strip() == "ready":
                break
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").strip().partition("=")
                exports[key] = shlex.split(value)[0]
            assert time.monotonic() < deadline
        assert set(exports) >= {"RUNPOD_ENDPOINT_BASE_URL", "RUNPOD_ENDPOINT_ID", "RUNPOD_API_KEY"}
        assert exports["RUNPOD_ENDPOINT_BASE_URL"].endswith("/v2")
        assert exports["HOTBATCH_API_KEY"] == exports["OPENAI_API_KEY"] == "hb-script-key"

        # The control plane answers the openai SDK with the exported URL and key, and its
        # table and bucket live in the exported moto endpoint.
        client = OpenAI(base_url=exports["HOTBATCH_API_URL"], api_key=exports["HOTBATCH_API_KEY"])
        file = client.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
        batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
        wait_for(
            lambda: client.batches.retrieve(batch.id).status != "validating",
            "the split",
            every=0.1,
        )
        assert client.batches.retrieve(batch.id).request_counts.total == 3  # type: ignore[union-attr]
        s3 = boto3.client(
            "s3",
            endpoint_url=exports["AWS_ENDPOINT_URL"],
            aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
            region_name=exports["AWS_DEFAULT_REGION"],
        )
        stored = s3.list_objects_v2(Bucket=exports["HOTBATCH_BUCKET_NAME"], Prefix="files/")
        assert [o["Key"] for o in stored["Contents"]] == [f"files/{file.id}"]

        monkeypatch.setattr(runpod, "endpoint_url_base", exports["RUNPOD_ENDPOINT_BASE_URL"])
        endpoint = runpod.Endpoint(exports["RUNPOD_ENDPOINT_ID"], api_key=exports["RUNPOD_API_KEY"])
        report = endpoint.run_sync({"action": "health"}, timeout=60)
        assert report["engine"]["model"] == "tiny" and report["status"] == "ok"
        assert endpoint.health()["workers"]["idle"] == 1

        family = psutil.Process(stack.pid).children(recursive=True)
        assert family, "the stack should have started worker processes"
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(timeout=120) == 0
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"orphaned processes: {[p.pid for p in alive]}"
    finally:
        if stack.poll() is None:
            stack.kill()
