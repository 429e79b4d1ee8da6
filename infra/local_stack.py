"""`hotbatch local up` and `hotbatch local run FILE`: the local stack on this machine.

moto's server with the table and bucket from template.yaml, the control plane under uvicorn
with the tick every second, and the local RunPod endpoint with N real workers (`python -m
handler` on vLLM's CPU build, the tiny generated model unless `--model`).

`up` stays in the foreground: once everything answers and every worker's engine has loaded it
prints shell lines to `eval`, then `ready`, and stops everything on Ctrl-C or SIGTERM.
`run` submits one batch file through the official openai SDK, shows its progress, writes the
output and error files, and stops.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from infra.batch_file import endpoint_of
from infra.stack import LocalStack, StackConfig, worker_pool

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

log = logging.getLogger("handler.local")
TERMINAL = ("completed", "failed", "expired", "cancelled")


def add_arguments(parser: argparse.ArgumentParser, *, ports: bool = True) -> None:
    if ports:
        parser.add_argument("--port", type=int, default=8000, help="control plane (API) port")
        parser.add_argument("--aws-port", type=int, default=5000, help="moto server port")
        parser.add_argument("--runpod-port", type=int, default=8100, help="local RunPod port")
    parser.add_argument(
        "--api-key", default=None, help="fixed API key for scripts (default: a new random one)"
    )
    parser.add_argument("--tenant", default="local", help="tenant of the API key")
    parser.add_argument("--runpod-api-key", default="local-runpod-key")
    parser.add_argument("--workers", type=int, default=1, help="workers kept warm (min workers)")
    parser.add_argument("--max-workers", type=int, default=None, help="default: --workers")
    parser.add_argument("--idle-timeout", type=float, default=5.0, help="seconds (RunPod: 5)")
    parser.add_argument("--cold-start-delay", type=float, default=0.0, help="extra seconds")
    parser.add_argument("--model", default=None, help="model path (default: the tiny model)")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help=(
            "requests per chunk at most (default: HOTBATCH_CHUNK_MAX_REQUESTS, 1000; smaller "
            "when the measured throughput or the estimated tokens say so)"
        ),
    )
    parser.add_argument("--workdir", type=Path, default=Path(".hotbatch"))
    parser.add_argument("--ready-timeout", type=float, default=900.0)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="OpenAI batch input JSONL")
    parser.add_argument("--endpoint", default=None, help="default: the first line's url")
    parser.add_argument("--out", type=Path, default=Path(".hotbatch/out"))
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for the batch")
    add_arguments(parser, ports=False)


def up(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    stack = _stack(args, ports=True)
    try:
        stack.start()
        if not _wait_ready(stack, args.workers, args.ready_timeout, stop):
            return 1
        for key, value in stack.exports().items():
            sys.stdout.write(f"export {key}={shlex.quote(value)}\n")
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        stop.wait()
    finally:
        log.info("stopping the local stack")
        stack.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Start the stack, run one batch through the openai SDK, print its progress and result."""
    import openai  # a dev dependency: imported only when a run needs it

    if not args.input.is_file():
        log.error("input file not found", extra={"path": str(args.input)})
        return 2
    stop = _stop_on_signals()
    stack = _stack(args, ports=False)
    try:
        stack.start()
        _progress("starting the local stack (moto, control plane, RunPod endpoint, workers)")
        if not _wait_ready(stack, max(args.workers, 1), args.ready_timeout, stop):
            return 1
        exports = stack.exports()
        client = openai.OpenAI(base_url=exports["HOTBATCH_API_URL"], api_key=stack.api_key)
        with args.input.open("rb") as handle:
            file = client.files.create(file=(args.input.name, handle), purpose="batch")
        endpoint = args.endpoint or endpoint_of(args.input)
        batch = client.batches.create(
            input_file_id=file.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
        )
        _progress(f"batch {batch.id} created from {file.id} ({file.bytes} bytes)")
        batch = _follow(client, batch.id, args.timeout, stop)
        result = _save(client, batch, args.out)
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0 if batch.status == "completed" else 1
    finally:
        stack.stop()


def _stack(args: argparse.Namespace, *, ports: bool) -> LocalStack:
    settings: dict[str, object] = {}
    if args.chunk_size:
        settings["chunk_max_requests"] = args.chunk_size
    pool = worker_pool(
        workers=args.workers,
        max_workers=args.max_workers,
        idle_timeout_s=args.idle_timeout,
        cold_start_delay_s=args.cold_start_delay,
        env=_worker_env(args),
        workdir=args.workdir,
    )
    config = StackConfig(
        api_key=args.api_key,
        tenant=args.tenant,
        runpod_api_key=args.runpod_api_key,
        pool=pool,
        settings=settings,
    )
    if ports:
        config.api_port, config.aws_port, config.runpod_port = (
            args.port,
            args.aws_port,
            args.runpod_port,
        )
    return LocalStack(config)


def _worker_env(args: argparse.Namespace) -> dict[str, str]:
    """Worker variables: the model from the flags; defaults only where the shell sets none."""
    model, served = args.model, args.served_model_name
    defaults = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}
    if model is None:
        from infra.tiny_model import generate

        model = str(generate((args.workdir / "tiny-model").resolve()))
        served = served or "tiny"
        defaults.update({"MAX_MODEL_LEN": "512", "VLLM_CPU_KVCACHE_SPACE": "1"})
    env = {key: value for key, value in defaults.items() if key not in os.environ}
    env["MODEL_NAME"] = model
    if served:
        env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] = served
    return env


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _wait_ready(stack: LocalStack, workers: int, timeout: float, stop: threading.Event) -> bool:
    assert stack.endpoint is not None and stack.endpoint.backend is not None
    backend = stack.endpoint.backend
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if backend.health()["workers"]["idle"] >= workers:
            return True
        if time.monotonic() > deadline:
            log.error("workers did not load their engines in time", extra={"timeout_s": timeout})
            return False
        time.sleep(0.5)
    return False


def _follow(client: OpenAI, batch_id: str, timeout: float, stop: threading.Event) -> Batch:
    started = time.monotonic()
    last = ""
    while True:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "0/?"
        line = f"{batch.status:<11} {done} requests done"
        if counts and counts.failed:
            line += f", {counts.failed} failed"
        if line != last:
            _progress(f"[{time.monotonic() - started:6.1f}s] {line}")
            last = line
        if batch.status in TERMINAL or stop.is_set() or time.monotonic() - started > timeout:
            return batch
        stop.wait(1.0)


def _save(client: OpenAI, batch: Batch, out: Path) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, object] = {}
    for name, file_id in (
        ("output.jsonl", batch.output_file_id),
        ("errors.jsonl", batch.error_file_id),
    ):
        path = out / name
        path.write_bytes(client.files.content(file_id).content if file_id else b"")
        written[name.removesuffix(".jsonl") + "_file"] = str(path)
    return {**written, "batch": batch.model_dump(mode="json")}


def _progress(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def run_stack(input_path: Path, *flags: str) -> tuple[LocalStack, dict[str, str]]:
    """The stack `hotbatch local run INPUT FLAGS…` would start (not started) and its workers'
    environment, for benchmarks that must measure exactly the command's defaults."""
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args([str(input_path), *flags])
    return _stack(args, ports=False), _worker_env(args)
