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
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
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
def local_up(
    workdir: Path, *flags: str, env: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """`hotbatch local up FLAGS` as an operator runs it (free ports, its own workdir and key,
    nothing else; `env` added to the environment): yields the variables it exports once it
    prints `ready`, stops it after."""
    command = [sys.executable, "-m", "infra.cli", "local", "up", *flags]
    for flag in ("--port", "--aws-port", "--runpod-port"):
        command += [flag, str(free_port())]
    command += ["--api-key", "hb-e2e", "--workdir", str(workdir / "stack")]
    stack = subprocess.Popen(
        command,
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
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
        stop(stack)
        if stack.stdout is not None:
            stack.stdout.close()


# A `local up` that sees SIGTERM ends within 75 s: past that it kills its workers and exits
# (infra/local_stack.py).
STOP_S = 120


def stop(stack: subprocess.Popen[str]) -> None:
    """SIGTERM, as Ctrl-C would. A stack still running after STOP_S is killed with its workers,
    which run in sessions of their own and would outlive it (polling for jobs to the end of the
    session), with a warning: whether the stop works is tests/infra/test_local_stack.py's to
    say, not every test's that uses a stack."""
    stack.send_signal(signal.SIGTERM)
    try:
        stack.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        family = psutil.Process(stack.pid).children(recursive=True)
        stack.kill()
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        stack.wait()
        psutil.wait_procs(family, timeout=30)
        warnings.warn(
            f"`local up` was still running {STOP_S} s after SIGTERM: killed, and its "
            f"{len(family)} processes",
            stacklevel=1,
        )


def tenant_exports(exports: dict[str, str], tenant: str) -> dict[str, str]:
    """`exports` of a running `local up` with the API key of a new key for `tenant` in place of
    the stack's own, made as an operator makes one (`hotbatch keys create` on the stack's
    table): its files, batches, webhooks and rate limit are that tenant's alone."""
    created = subprocess.run(
        [sys.executable, "-m", "infra.cli", "keys", "create", "--tenant", tenant, "-q"],
        env={**os.environ, "PYTHONPATH": str(REPO), **exports},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert created.returncode == 0, created.stderr[-3000:]
    key = created.stdout.strip()
    return {**exports, "HOTBATCH_API_KEY": key, "OPENAI_API_KEY": key}
