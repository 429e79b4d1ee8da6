"""`hotbatch local up` and `hotbatch local run FILE`: the local stack on this machine.

moto's server with the table, bucket and event queues from template.yaml, the control plane
under uvicorn with the sweep every 2 seconds and its event queues handled as events arrive, and
the local RunPod endpoint with N real workers (`python -m handler` on vLLM's CPU build, the
tiny generated model unless `--model`: `smollm2` is SmolLM2-135M-Instruct, made from its package).

With the tiny model (no `--model`) it serves two models, as a deployment with HOTBATCH_MODELS
does: `tiny` (chat, completions, responses) on the endpoint `local` and `tiny-embed` (the same
weights under vLLM's pooling runner: embeddings) on a second endpoint, `local-embed`, with one
worker of its own. With `--model` one endpoint serves that model and no map is set.

`up` stays in the foreground: once everything answers and every worker's engine has loaded it
prints shell lines to `eval` (or one JSON object), then `ready`, and stops everything on Ctrl-C
or SIGTERM; its logs go to stderr. `run` submits one batch file through the official openai
SDK, shows its progress, writes the output and error files, and stops; its logs, the stack's
and the workers', go to files under `<workdir>/logs/`, so the terminal shows only progress.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from infra import smollm2_model, views
from infra.batch_file import endpoint_of
from infra.logfile_cli import LogFile
from infra.output_cli import Exit, batch_exit
from infra.stack import LocalStack, StackConfig, worker_pool

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

log = logging.getLogger("handler.local")
TERMINAL = ("completed", "failed", "expired", "cancelled")
# The KV cache of CPU workers serving a model of your own (`--model`) when the shell sets no
# KV_CACHE_MEMORY_BYTES; the tiny model's is `tiny_model.KV_CACHE_BYTES`.
MODEL_KV_CACHE = "2G"
TINY_CHAT = "tiny"
TINY_EMBED = "tiny-embed"
# `--model smollm2`: SmolLM2-135M-Instruct, made from its package (infra/smollm2_model.py).
SMOLLM2 = "smollm2"


@dataclass
class LocalOptions:
    """The flags of `hotbatch local up` and `local run` (infra/cli.py declares them)."""

    api_key: str | None = None
    tenant: str = "local"
    runpod_api_key: str = "local-runpod-key"
    workers: int = 1
    max_workers: int | None = None
    idle_timeout: float = 5.0
    cold_start_delay: float = 0.0
    model: str | None = None
    served_model_name: str | None = None
    # Requests per chunk at most; None: HOTBATCH_CHUNK_MAX_REQUESTS (sizing may go lower).
    chunk_size: int | None = None
    workdir: Path = Path(".hotbatch")
    ready_timeout: float = 900.0
    start_attempts: int = 1
    gpu_price_per_hour: float = 0.0
    # The workers' command (None: `python -m handler`); the tests' stand-in engine is another.
    worker_command: list[str] | None = None
    # `up` only
    port: int = 8000
    aws_port: int = 5000
    runpod_port: int = 8100
    json_exports: bool = False  # the exports as one JSON object instead of `export` lines
    # `run` only
    input: Path = Path("batch.jsonl")
    endpoint: str | None = None
    out: Path = Path(".hotbatch/out")
    timeout: float = 3600.0


def up(args: LocalOptions) -> int:
    with _stop_on_signals() as stop:
        try:
            stack = _stack(args, ports=True)
        except smollm2_model.ModelPackageMissing as exc:
            sys.stderr.write(f"error: {exc}\n")
            return int(Exit.USAGE)
        code = 0
        try:
            stack.start()
            ready = _wait_ready(stack, args.workers, args.ready_timeout, stop, args.start_attempts)
            if ready is not Exit.OK:
                code = int(ready)
            else:
                sys.stdout.write(ready_text(stack.exports(), as_json=args.json_exports))
                sys.stdout.flush()
                # stdout is the exports and `ready`, nothing after: a caller reads up to `ready`
                # and stops reading, and a line written later into its full pipe would block the
                # writer (and every logger behind it, the stop's included) for good.
                os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
                # Timed waits: an untimed one sat through a SIGTERM in tests (the handler,
                # which runs on the main thread, never ran) and a second signal woke it.
                while not stop.wait(0.5):
                    pass
        finally:
            log.info("stopping the local stack")
            overrun = threading.Timer(STOP_GRACE_S, _give_up_the_stop, args=(stack,))
            overrun.daemon = True
            overrun.start()
            stack.stop()
            overrun.cancel()
    return leave(code)


# A SIGTERM'd `up` ends within this: every part of the stop is bounded, but their sum is not
# tight, and a stop that overran this in CI once (workers never signalled in 120 s) left no
# trace of where it was.
STOP_GRACE_S = 75.0


def _give_up_the_stop(stack: LocalStack) -> None:
    """The stop overran its grace: say where every thread is, kill the workers' process groups
    (they run in sessions of their own and would outlive us) and exit."""
    log.error(
        "the stop overran %.0f s: every thread's stack follows; killing the workers", STOP_GRACE_S
    )
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    if stack.endpoint is not None:
        for pool in list(stack.endpoint.pools.values()):
            pool.kill_all()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the stop was asked for, and nothing of the stack is left running


def leave(code: int) -> int:
    """Exit now if a thread that is not a daemon outlived the stop (a pool thread finishing a
    send to a server that is gone): the interpreter would wait for it, and a SIGTERM'd `up`
    must end in bounded time. The stop has logged each such thread with its stack."""
    held = [
        thread
        for thread in threading.enumerate()
        if not thread.daemon and thread is not threading.main_thread() and thread.is_alive()
    ]
    if not held:
        return code
    log.warning("exiting without waiting for %d threads", len(held))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def ready_text(exports: dict[str, str], *, as_json: bool) -> str:
    """What `up` prints once it is ready: `export` lines for `eval` (or the variables as one
    JSON object on one line), then `ready`."""
    if as_json:
        lines = [json.dumps(exports)]
    else:
        lines = [f"export {key}={shlex.quote(value)}" for key, value in exports.items()]
    return "\n".join([*lines, "ready"]) + "\n"


@dataclass
class RunOutcome:
    """What `local run` ended with: its exit status and, once a batch ran, the batch and where
    its results and the logs went."""

    code: int
    log_file: Path
    batch: Batch | None = None
    output_file: Path | None = None
    error_file: Path | None = None


def run_log(args: LocalOptions) -> Path:
    """Where `local run` writes the logs of this process (the workers': beside it)."""
    return (args.workdir / "logs" / "local-run.log").resolve()


def run(args: LocalOptions, *, stack: LocalStack | None = None) -> RunOutcome:
    """Start the stack, run one batch through the openai SDK, show its progress on stderr, save
    its results; every log line goes to `run_log(args)`. `stack`: one already started to use
    (and leave running) instead (the tests' own)."""
    console = Console(stderr=True, soft_wrap=True)
    log_file = run_log(args)
    if not args.input.is_file():
        console.print(Text(f"error: input file not found: {args.input}"), highlight=False)
        return RunOutcome(int(Exit.USAGE), log_file)
    console.print(Text(f"logs: {log_file}"), highlight=False)
    with LogFile(log_file) as logs, _stop_on_signals() as stop:
        if stack is None and args.model == SMOLLM2 and not smollm2_model.is_made():
            console.print("making the SmolLM2 model from its package (once, about 40 s)")
        try:
            started = stack or _stack(args, ports=False)
        except smollm2_model.ModelPackageMissing as exc:
            console.print(Text(f"error: {exc}"), highlight=False)
            return RunOutcome(int(Exit.USAGE), log_file)
        try:
            if stack is None:
                console.print("starting the local stack (moto, control plane, RunPod, workers)")
                started.start()
                logs.claim()  # uvicorn gave its loggers terminal handlers of their own at start
            ready = _wait_ready(
                started, max(args.workers, 1), args.ready_timeout, stop, args.start_attempts
            )
            if ready is not Exit.OK:
                return RunOutcome(int(ready), log_file)
            return _run_batch(started, args, console, stop, log_file)
        finally:
            if stack is None:
                started.stop()


def _run_batch(
    stack: LocalStack,
    args: LocalOptions,
    console: Console,
    stop: threading.Event,
    log_file: Path,
) -> RunOutcome:
    from infra import client as api  # the openai SDK: a dev dependency, imported when needed

    exports = stack.exports()
    deployment = api.Deployment(base_url=exports["HOTBATCH_API_URL"], api_key=stack.api_key)
    client = deployment.client()
    file = api.upload(deployment, client, args.input, progress=lambda _: None)
    batch = api.create_batch(
        client,
        file_id=file.id,
        endpoint=args.endpoint or endpoint_of(args.input),
        priority="normal",
        metadata=None,
    )
    console.print(f"batch {batch.id} created from {file.id} ({file.bytes} bytes)")
    batch_id = batch.id
    batch = views.follow(
        lambda: client.batches.retrieve(batch_id),
        console,
        interval=1.0,
        timeout=args.timeout,
        stop=stop,
    )
    output_file, error_file = _save(client, batch, args.out)
    code = batch_exit(batch)
    if code is Exit.TIMEOUT and stop.is_set():
        code = Exit.FAILED  # stopped by Ctrl-C or SIGTERM, not by --timeout
    return RunOutcome(int(code), log_file, batch, output_file, error_file)


def _stack(args: LocalOptions, *, ports: bool) -> LocalStack:
    settings: dict[str, object] = {}
    if args.chunk_size:
        settings["chunk_max_requests"] = args.chunk_size
    if args.gpu_price_per_hour:
        settings["gpu_price_per_hour"] = args.gpu_price_per_hour
    pool = worker_pool(
        workers=args.workers,
        max_workers=args.max_workers,
        idle_timeout_s=args.idle_timeout,
        cold_start_delay_s=args.cold_start_delay,
        env=_worker_env(args),
        command=args.worker_command,
        workdir=args.workdir,
    )
    config = StackConfig(
        api_key=args.api_key,
        tenant=args.tenant,
        runpod_api_key=args.runpod_api_key,
        pool=pool,
        settings=settings,
        keep_off_engine_cores=True,
    )
    if args.model is None:
        config.chat_model, config.embed_model = TINY_CHAT, TINY_EMBED
        config.embed_pool = worker_pool(
            workers=min(args.workers, 1),
            max_workers=1,
            idle_timeout_s=args.idle_timeout,
            cold_start_delay_s=args.cold_start_delay,
            env=_embed_env(args),
            workdir=args.workdir,
        )
        config.embed_pool.id_prefix = "local-embed-worker"
    if ports:
        config.api_port, config.aws_port, config.runpod_port = (
            args.port,
            args.aws_port,
            args.runpod_port,
        )
    return LocalStack(config)


def _worker_env(args: LocalOptions) -> dict[str, str]:
    """Worker variables: the model from the flags; defaults only where the shell sets none.

    The KV cache always gets an explicit size: without one, vLLM's CPU build refuses to start
    unless GPU_MEMORY_UTILIZATION of the node's memory is free, which a full page cache or
    another process decides, not the model.
    """
    model, served = args.model, args.served_model_name
    defaults = {"VLLM_LOGGING_STREAM": "ext://sys.stderr", "KV_CACHE_MEMORY_BYTES": MODEL_KV_CACHE}
    if model is None:
        from infra.tiny_model import KV_CACHE_BYTES, generate

        model = str(generate((args.workdir / "tiny-model").resolve()))
        served = served or TINY_CHAT
        defaults.update({"MAX_MODEL_LEN": "512", "KV_CACHE_MEMORY_BYTES": KV_CACHE_BYTES})
    elif model == SMOLLM2:
        model = str(smollm2_model.make())
        served = served or SMOLLM2
        # The model is stored in bf16 for GPUs; a CPU without bf16 instructions runs bf16
        # ~20x slower than fp32 (200 requests: 57 s in fp32, unfinished after 8 min in bf16).
        # Eager: vLLM 0.32's CPU build cannot reload its compiled graph ("'function' object has
        # no attribute 'finalize_loading'"), so every start compiled for ~95 s to gain 5-10 %.
        defaults.update({**smollm2_model.WORKER_ENV, "DTYPE": "float32", "ENFORCE_EAGER": "true"})
    env = {key: value for key, value in defaults.items() if key not in os.environ}
    env["MODEL_NAME"] = model
    if served:
        env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] = served
    return env


def _embed_env(args: LocalOptions) -> dict[str, str]:
    """The embedding workers': the tiny model's weights under the pooling runner. Their KV cache
    is sized on its own (a pooled request holds blocks only while its prompt is read)."""
    from infra.tiny_model import EMBED_KV_CACHE_BYTES

    env = _worker_env(args)
    env.update(
        {
            "OPENAI_SERVED_MODEL_NAME_OVERRIDE": TINY_EMBED,
            "RUNNER": "pooling",
            "KV_CACHE_MEMORY_BYTES": EMBED_KV_CACHE_BYTES,
            "MAX_NUM_SEQS": "64",
        }
    )
    return env


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event Ctrl-C and SIGTERM set; the previous handlers come back after."""
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _wait_ready(
    stack: LocalStack, workers: int, timeout: float, stop: threading.Event, start_attempts: int
) -> Exit:
    """Wait until `workers` engines have loaded. FAILED, with the worker's own error lines on
    stderr, as soon as `start_attempts` workers have exited before loading theirs: a worker that
    cannot start (bad model, engine error, out of memory) fails the same way every time, so
    waiting out `timeout` (TIMEOUT) would only hide the cause."""
    endpoint = stack.endpoint
    assert endpoint is not None and endpoint.backend is not None and endpoint.pool is not None
    # Every endpoint's workers: the embedding endpoint's one beside the chat ones.
    wanted = {
        endpoint_id: (workers if endpoint_id == endpoint.config.endpoint_id else 1)
        for endpoint_id, pool in endpoint.pools.items()
        if endpoint_id == endpoint.config.endpoint_id or pool.config.min_workers
    }
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if all(
            endpoint.backends[endpoint_id].health()["workers"]["idle"] >= count
            for endpoint_id, count in wanted.items()
        ):
            return Exit.OK
        failed = [pool for pool in endpoint.pools.values() if pool.failed_starts >= start_attempts]
        if failed:
            failure = failed[0].start_failures[-1]
            log.error(
                "a worker could not start",
                extra={"worker_id": failure.worker_id, "code": failure.code},
            )
            _progress(f"hotbatch: {failure.report()}")
            return Exit.FAILED
        if time.monotonic() > deadline:
            log.error("workers did not load their engines in time", extra={"timeout_s": timeout})
            _progress(
                f"hotbatch: the workers did not load their engines within {timeout:g} s "
                "(--ready-timeout); their logs are in the workdir's logs/"
            )
            return Exit.TIMEOUT
        time.sleep(0.5)
    return Exit.FAILED


def _save(client: OpenAI, batch: Batch, out: Path) -> tuple[Path, Path]:
    """The output and error files in `out` (an empty one where the batch has none)."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, file_id in (
        ("output.jsonl", batch.output_file_id),
        ("errors.jsonl", batch.error_file_id),
    ):
        path = out / name
        path.write_bytes(client.files.content(file_id).content if file_id else b"")
        written.append(path)
    return written[0], written[1]


def _progress(message: str) -> None:
    """A start failure's own lines, as the worker wrote them (no rich markup applied)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def planned(options: LocalOptions) -> tuple[LocalStack, dict[str, str]]:
    """The stack `hotbatch local run` would start with these options (not started) and its
    workers' environment, for benchmarks that must measure exactly the command's defaults."""
    return _stack(options, ports=False), _worker_env(options)
