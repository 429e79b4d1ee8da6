"""`hotbatch local up` as a user runs it: wait for `ready`, eval the exports, use the runpod SDK,
then SIGTERM leaves no process behind; on a busy machine it still starts, and with a worker that
cannot start it stops soon, naming the cause."""

from __future__ import annotations

import contextlib
import json
import os
import re
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


def stack_env(**overrides: str) -> dict[str, str]:
    """The test's environment without the KV-cache size tests/conftest.py gives the workers it
    starts, so the stack's own default is what runs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **overrides}
    for name in ("KV_CACHE_MEMORY_BYTES", "VLLM_CPU_KVCACHE_SPACE"):
        if name not in overrides:
            env.pop(name, None)
    return env


def test_local_up_prints_exports_then_ready_and_stops_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GPU_MEMORY_UTILIZATION=0.99: vLLM's CPU build would want 99 % of the node's memory free
    # at start, which no busy machine has; the stack's explicit KV cache skips that check.
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
        env=stack_env(GPU_MEMORY_UTILIZATION="0.99"),
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
        # The stack's own tick may hand the worker a keep-hot ping or a chunk at any moment:
        # one worker, loaded, and idle again once that is done.
        wait_for(lambda: endpoint.health()["workers"]["idle"] == 1, "the worker idle", timeout=60)
        worker_log = (tmp_path / "stack" / "logs" / "local-worker-1.log").read_text()
        starting = next(
            json.loads(line) for line in worker_log.splitlines() if '"worker starting"' in line
        )
        assert starting["settings"]["gpu_memory_utilization"] == 0.99
        assert starting["settings"]["kv_cache_memory_bytes"] == "256M"
        assert re.search(r"Explicitly set \(0\.25/[\d.]+\) GiB for KV cache", worker_log)

        family = psutil.Process(stack.pid).children(recursive=True)
        assert family, "the stack should have started worker processes"
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(timeout=120) == 0
        gone, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, f"orphaned processes: {[p.pid for p in alive]}"
    finally:
        if stack.poll() is None:
            # A failed test must not leave workers behind (they run in sessions of their own
            # and outlive a killed stack): the whole family goes.
            leftovers = psutil.Process(stack.pid).children(recursive=True)
            stack.kill()
            for process in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


@pytest.mark.parametrize(
    ("command", "env", "cause"),
    [
        # A model path that does not exist.
        ("up", {"GPU_MEMORY_UTILIZATION": "0.9"}, "/nonexistent/model"),
        # No explicit KV cache and the whole node's memory asked for: vLLM's CPU build refuses
        # at start, as it did on a busy machine before the stack sized the cache itself.
        (
            "run",
            {"GPU_MEMORY_UTILIZATION": "1.0", "KV_CACHE_MEMORY_BYTES": "0"},
            "less than desired CPU memory utilization",
        ),
    ],
)
def test_a_stack_whose_worker_cannot_start_exits_naming_the_cause(
    tmp_path: Path, command: str, env: dict[str, str], cause: str
) -> None:
    argv = [sys.executable, "-m", "infra.cli", "local", command]
    if command == "up":
        argv += ["--model", "/nonexistent/model"]
        argv += ["--port", str(free_port()), "--aws-port", str(free_port())]
        argv += ["--runpod-port", str(free_port())]
    else:
        batch = tmp_path / "in.jsonl"
        batch.write_bytes(jsonl(2))
        argv += [str(batch), "--out", str(tmp_path / "out")]
    argv += ["--workdir", str(tmp_path / "stack")]
    started = time.monotonic()
    result = subprocess.run(
        argv, cwd=tmp_path, env=stack_env(**env), capture_output=True, text=True, timeout=300
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert elapsed < 180, f"took {elapsed:.0f} s"
    said = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    # The closing words name the worker's log (the interpreter may print a shutdown warning of
    # some library's coroutine after them, seen once: "coroutine ignored GeneratorExit").
    closing = [line for line in said if line.startswith("full log: ")]
    assert closing and closing[-1].endswith("local-worker-1.log"), said[-5:]
    assert any(line.startswith("hotbatch: worker local-worker-1 exited with code") for line in said)
    assert cause in "\n".join(said), result.stderr[-3000:]
    assert "ready" not in result.stdout.split()
