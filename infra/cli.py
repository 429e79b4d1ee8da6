"""The `hotbatch` command (typer + rich).

hotbatch batches submit FILE [--wait]  a batch on any deployment (HOTBATCH_API_URL / _KEY);
hotbatch batches list|watch|download|dead-letters|retry|cancel|estimate   see `--help`
hotbatch health                  the deployment's health components as a table
hotbatch local up                the local stack (moto, control plane, RunPod endpoint + workers)
hotbatch local run FILE.jsonl    the local stack, one batch through it end to end, then stop
hotbatch keys create --tenant T  create an API key (printed once) in HOTBATCH_TABLE_NAME
hotbatch keys revoke KEY         revoke one
hotbatch run-chunk FILE.jsonl    run one chunk through the real worker code and vLLM locally
hotbatch tiny-model DIR          write the tiny random-weight test model
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core
import typer.main

from infra import batches_cli
from infra.batch_file import DEFAULT_ENDPOINT, first_url

if TYPE_CHECKING:
    from infra.stack import LocalStack

log = logging.getLogger("handler.cli")

DEFAULT_WORKDIR = Path(".hotbatch")

app = typer.Typer(
    name="hotbatch",
    help="hotbatch: an OpenAI-compatible Batch API on RunPod serverless.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(batches_cli.app, name="batches")
app.command("health")(batches_cli.health)
local_app = typer.Typer(help="The whole stack on this machine.", no_args_is_help=True)
app.add_typer(local_app, name="local")
keys_app = typer.Typer(
    help="API keys in the table named by HOTBATCH_TABLE_NAME (AWS credentials).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def main(argv: list[str] | None = None) -> int:
    """The console script: runs the app, returns its exit status."""
    try:
        app(args=argv, prog_name="hotbatch", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


@app.command("run-chunk")
def run_chunk(
    input: Annotated[Path, typer.Argument(help="OpenAI batch input JSONL")],
    model: Annotated[
        str | None, typer.Option(help="model path (default: generate the tiny test model)")
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="the `model` requests must name")
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="default: the first line's url")] = None,
    out: Annotated[Path, typer.Option()] = DEFAULT_WORKDIR / "out",
    max_model_len: Annotated[int | None, typer.Option()] = None,
    kv_cache_memory_bytes: Annotated[
        str | None,
        typer.Option(
            help="KV-cache size, e.g. 256M (default: KV_CACHE_MEMORY_BYTES; 256M for the tiny "
            "model)"
        ),
    ] = None,
) -> None:
    """Process an OpenAI batch JSONL file as one chunk through the worker on vLLM."""
    from handler import logs
    from handler.contract import ProcessChunkInput
    from handler.runtime import start_runtime
    from handler.settings import WorkerSettings
    from infra.blob_server import BlobServer

    logs.configure()
    # stdout carries the command's result; vLLM's own logs go with ours to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if not input.is_file():
        log.error("input file not found", extra={"path": str(input)})
        raise typer.Exit(2)
    body = input.read_bytes()
    endpoint = endpoint or first_url(body.splitlines()) or DEFAULT_ENDPOINT
    served, max_len = served_model_name, max_model_len
    kv_cache = kv_cache_memory_bytes or os.environ.get("KV_CACHE_MEMORY_BYTES") or None
    if model is None:
        from infra.tiny_model import KV_CACHE_BYTES, generate

        model = str(generate(DEFAULT_WORKDIR / "tiny-model"))
        served, max_len = served or "tiny", max_len or 512
        kv_cache = kv_cache or KV_CACHE_BYTES

    store = BlobServer().start()
    runtime = start_runtime(
        WorkerSettings(
            model_name=model,
            openai_served_model_name_override=served,
            max_model_len=max_len,
            kv_cache_memory_bytes=kv_cache,
        )
    )
    try:
        store.put("chunk/input.jsonl", body)
        job = ProcessChunkInput(
            action="process_chunk",
            batch_id="batch_local",
            chunk_id="00000",
            endpoint=endpoint,
            input_url=store.presign("GET", "chunk/input.jsonl"),
            output_url=store.presign("PUT", "chunk/output.jsonl"),
            error_url=store.presign("PUT", "chunk/errors.jsonl"),
        )
        summary = asyncio.run(runtime.process(job))
    finally:
        runtime.stop()
        store.stop()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("output.jsonl", "errors.jsonl"):
        (out / name).write_bytes(store.get(f"chunk/{name}") or b"")
    result = {
        "output_file": str(out / "output.jsonl"),
        "error_file": str(out / "errors.jsonl"),
        **summary.model_dump(mode="json"),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    _emit(result)


@app.command("tiny-model")
def tiny_model(directory: Path) -> None:
    """Write the tiny random-weight test model."""
    from infra.tiny_model import generate

    _emit({"model": str(generate(directory))})


# --- local ----------------------------------------------------------------------------------

ApiKeyOpt = Annotated[
    str | None, typer.Option(help="fixed API key for scripts (default: a new random one)")
]
TenantOpt = Annotated[str, typer.Option(help="tenant of the API key")]
RunPodKeyOpt = Annotated[str, typer.Option()]
WorkersOpt = Annotated[int, typer.Option(help="workers kept warm (min workers)")]
MaxWorkersOpt = Annotated[int | None, typer.Option(help="default: --workers")]
IdleOpt = Annotated[float, typer.Option(help="seconds (RunPod: 5)")]
ColdOpt = Annotated[float, typer.Option(help="extra seconds per cold start")]
ModelOpt = Annotated[str | None, typer.Option(help="model path (default: the tiny model)")]
ServedOpt = Annotated[str | None, typer.Option()]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        help="requests per chunk at most (default: HOTBATCH_CHUNK_MAX_REQUESTS, 1000; smaller "
        "when the measured throughput or the estimated tokens say so)"
    ),
]
WorkdirOpt = Annotated[Path, typer.Option()]
ReadyOpt = Annotated[float, typer.Option(help="seconds for the engines to load")]
StartAttemptsOpt = Annotated[
    int,
    typer.Option(
        help="give up (exit 1, the worker's errors on stderr) once this many workers have "
        "exited before loading their engine"
    ),
]
PriceOpt = Annotated[
    float, typer.Option(help="USD per worker-hour, for hotbatch.cost_usd (0: no cost)")
]


@local_app.command("up")
def local_up(
    port: Annotated[int, typer.Option(help="control plane (API) port")] = 8000,
    aws_port: Annotated[int, typer.Option(help="moto server port")] = 5000,
    runpod_port: Annotated[int, typer.Option(help="local RunPod port")] = 8100,
    api_key: ApiKeyOpt = None,
    tenant: TenantOpt = "local",
    runpod_api_key: RunPodKeyOpt = "local-runpod-key",
    workers: WorkersOpt = 1,
    max_workers: MaxWorkersOpt = None,
    idle_timeout: IdleOpt = 5.0,
    cold_start_delay: ColdOpt = 0.0,
    model: ModelOpt = None,
    served_model_name: ServedOpt = None,
    chunk_size: ChunkOpt = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    ready_timeout: ReadyOpt = 900.0,
    start_attempts: StartAttemptsOpt = 1,
    gpu_price_per_hour: PriceOpt = 0.0,
) -> None:
    """Start it in the foreground: prints `export …` lines, then `ready`; Ctrl-C stops it."""
    flags = _without_none(locals())
    from handler import logs
    from infra import local_stack

    logs.configure()
    options = local_stack.LocalOptions(**flags)  # type: ignore[arg-type]
    raise typer.Exit(local_stack.up(options))


@local_app.command("run")
def local_run(
    input: Annotated[Path, typer.Argument(help="OpenAI batch input JSONL")],
    endpoint: Annotated[str | None, typer.Option(help="default: the first line's url")] = None,
    out: Annotated[Path, typer.Option()] = DEFAULT_WORKDIR / "out",
    timeout: Annotated[float, typer.Option(help="seconds for the batch")] = 3600.0,
    api_key: ApiKeyOpt = None,
    tenant: TenantOpt = "local",
    runpod_api_key: RunPodKeyOpt = "local-runpod-key",
    workers: WorkersOpt = 1,
    max_workers: MaxWorkersOpt = None,
    idle_timeout: IdleOpt = 5.0,
    cold_start_delay: ColdOpt = 0.0,
    model: ModelOpt = None,
    served_model_name: ServedOpt = None,
    chunk_size: ChunkOpt = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    ready_timeout: ReadyOpt = 900.0,
    start_attempts: StartAttemptsOpt = 1,
    gpu_price_per_hour: PriceOpt = 0.0,
) -> None:
    """Start it, run one batch file through the openai SDK, save the results, stop."""
    flags = _without_none(locals())
    from handler import logs
    from infra import local_stack

    logs.configure()
    options = local_stack.LocalOptions(**flags)  # type: ignore[arg-type]
    raise typer.Exit(local_stack.run(options))


def run_stack(input_path: Path, *flags: str) -> tuple[LocalStack, dict[str, str]]:
    """The stack `hotbatch local run INPUT FLAGS…` would start (not started) and its workers'
    environment: the flags parsed as the command parses them, defaults included."""
    from infra import local_stack

    command = typer.main.get_command(local_app)
    assert isinstance(command, typer.core.TyperGroup)
    run = command.commands["run"]
    with run.make_context("run", [str(input_path), *flags]) as context:
        flags_set = _without_none(context.params)
    return local_stack.planned(local_stack.LocalOptions(**flags_set))  # type: ignore[arg-type]


def _without_none(params: dict[str, object]) -> dict[str, object]:
    """Flags left unset keep LocalOptions' own defaults."""
    return {key: value for key, value in params.items() if value is not None}


# --- keys -----------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for")],
    name: Annotated[str, typer.Option(help="a label to recognise the key by")] = "",
) -> None:
    """Create a key and print it (shown once)."""
    from control_plane.aws import Aws
    from control_plane.settings import Settings
    from control_plane.store import apikeys

    aws = Aws(Settings())
    key = apikeys.create_key(aws.table, tenant_id=tenant, name=name)
    _emit({"tenant": tenant, "api_key": key, "table": aws.settings.table_name})


@keys_app.command("revoke")
def keys_revoke(key: str) -> None:
    """Revoke a key."""
    from control_plane.aws import Aws
    from control_plane.settings import Settings
    from control_plane.store import apikeys

    revoked = apikeys.revoke_key(Aws(Settings()).table, key)
    _emit({"revoked": revoked})
    if not revoked:
        raise typer.Exit(1)


def _emit(payload: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
