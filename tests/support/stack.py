"""Worker processes and the whole local stack for the `stack` tier: the stand-in and echo
worker commands (they import this checkout, so they get it on PYTHONPATH), and the openai SDK
pointed at a LocalStack."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from openai import OpenAI

from infra.runpod_local import PoolConfig
from infra.stack import LocalStack, worker_pool

REPO = Path(__file__).resolve().parents[2]
STANDIN_WORKER = [sys.executable, "-m", "tests.support.standin_worker"]
ECHO_WORKER = [sys.executable, "-m", "tests.support.echo_worker"]


def worker_env(**env: str) -> dict[str, str]:
    """A test worker's environment: this checkout importable, plus `env`."""
    return {"PYTHONPATH": str(REPO), **env}


def standin_pool(
    workdir: Path, *, workers: int, env: dict[str, str] | None = None, **pool: Any
) -> PoolConfig:
    """Workers running the real handler around the stand-in engine (STANDIN_* in `env`)."""
    return worker_pool(
        workers=workers,
        command=STANDIN_WORKER,
        env=worker_env(**(env or {})),
        workdir=workdir,
        **pool,
    )


def sdk(stack: LocalStack) -> OpenAI:
    """The openai SDK on the stack's API, failing at once instead of retrying."""
    return OpenAI(
        base_url=stack.exports()["HOTBATCH_API_URL"], api_key=stack.api_key, max_retries=0
    )


def file_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """A result file's lines, parsed (none for no file)."""
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def local_up(workdir: Path, *flags: str) -> Iterator[dict[str, str]]:
    """`hotbatch local up FLAGS` as an operator runs it (free ports, its own workdir and key,
    nothing else): yields the variables it exports once it prints `ready`, stops it after."""
    command = [sys.executable, "-m", "infra.cli", "local", "up", *flags]
    for flag in ("--port", "--aws-port", "--runpod-port"):
        command += [flag, str(free_port())]
    command += ["--api-key", "hb-e2e", "--workdir", str(workdir / "stack")]
    stack = subprocess.Popen(
        command,
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        found: dict[str, str] = {}
        assert stack.stdout is not None
        for line in stack.stdout:
            if line.strip() == "ready":
                break
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").strip().partition("=")
                found[key] = shlex.split(value)[0]
        assert "HOTBATCH_API_URL" in found, "the stack never printed ready"
        yield found
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=120)
        except subprocess.TimeoutExpired:
            stack.kill()
