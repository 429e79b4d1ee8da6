"""The `hotbatch` command (typer + rich).

hotbatch batches submit FILE [--wait]  a batch on any deployment (HOTBATCH_API_URL / _KEY);
hotbatch batches list|watch|download|dead-letters|retry|cancel|estimate   see `--help`
hotbatch health                  the deployment's health components as a table
hotbatch local up                the local stack (moto, control plane, RunPod endpoint + workers)
hotbatch local run FILE.jsonl    the local stack, one batch through it end to end, then stop
hotbatch keys create --tenant T [--expires 30d]   create an API key (printed once with its id)
hotbatch keys list [--tenant T] [--json]          the keys: id, tenant, hint, expiry (never a key)
hotbatch keys revoke --id ID | < KEY-FILE         revoke one (the key itself only on stdin)
hotbatch run-chunk FILE.jsonl    run one chunk through the real worker code and vLLM locally
hotbatch tiny-model DIR          write the tiny random-weight test model
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
import typer.core
import typer.main

from infra import batches_cli
from infra.batch_file import DEFAULT_ENDPOINT, first_url

if TYPE_CHECKING:
    from control_plane.aws import Aws
    from control_plane.store.apikeys import ApiKeyInfo
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
    help="API keys in the table named by --table or HOTBATCH_TABLE_NAME (AWS credentials).",
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

TableOpt = Annotated[
    str | None,
    typer.Option(
        "--table",
        envvar="HOTBATCH_TABLE_NAME",
        show_envvar=True,
        help="the stack's table (its TableName output)",
    ),
]
# How long a key lives: 30d, 12h, 2w, a date (00:00 UTC) or an ISO time.
EXPIRES_UNITS = {"h": 3600, "d": 86400, "w": 7 * 86400}


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for")],
    name: Annotated[str, typer.Option(help="a label to recognise the key by")] = "",
    expires: Annotated[
        str | None,
        typer.Option(help="30d, 12h, 2w, 2027-01-31 (00:00 UTC) or 2027-01-31T18:00:00Z"),
    ] = None,
    table: TableOpt = None,
) -> None:
    """Create a key and print it (shown once) with its id."""
    from control_plane.ids import now_s
    from control_plane.store import apikeys

    expires_at = parse_expires(expires, now=now_s()) if expires else None
    aws = _keys_aws(table)
    with _aws_errors():
        key, info = apikeys.issue_key(aws.table, tenant_id=tenant, name=name, expires_at=expires_at)
    _emit({**_shown(info), "api_key": key, "table": aws.settings.table_name})


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="a JSON array, not a table")] = False,
    table: TableOpt = None,
) -> None:
    """The keys, newest first: id, tenant, name, hint, created, expires, revoked (never a key)."""
    from rich.console import Console
    from rich.table import Column, Table

    from control_plane.store import apikeys

    aws = _keys_aws(table)
    with _aws_errors():
        found = apikeys.list_keys(aws.table, tenant_id=tenant)
    if as_json:
        sys.stdout.write(json.dumps([_shown(info) for info in found], indent=2) + "\n")
        return
    # The id is what `revoke --id` takes: whole on one line, the other columns wrap.
    view = Table(Column("id", no_wrap=True, min_width=len(apikeys.new_key_id())))
    for heading in ("tenant", "name", "hint", "created", "expires", "revoked"):
        view.add_column(heading)
    for info in found:
        when = [_utc(t) for t in (info.created_at, info.expires_at, info.revoked_at)]
        view.add_row(info.id, info.tenant_id, info.name, info.hint, *when)
    Console(soft_wrap=False).print(view)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[
        str | None, typer.Option("--id", help="the key's id (`hotbatch keys list`)")
    ] = None,
    table: TableOpt = None,
    key: Annotated[str | None, typer.Argument(hidden=True, show_default=False)] = None,
) -> None:
    """Revoke a key by its id, or the key itself read from stdin: `hotbatch keys revoke < FILE`
    (typed without echo at a terminal). Warm API functions refuse it within
    HOTBATCH_KEY_CACHE_S seconds."""
    from control_plane.store import apikeys

    if key is not None:
        _keys_fail(
            "a key is not taken as an argument (it would stay in shell history and ps): pipe "
            "it on stdin (`hotbatch keys revoke < key.txt`) or name it with --id KEY_ID",
            code=2,
        )
    aws = _keys_aws(table)
    plaintext = None if key_id else _key_from_stdin()
    with _aws_errors():
        if key_id:
            revoked = apikeys.revoke_key_id(aws.table, key_id)
        else:
            assert plaintext is not None
            revoked = apikeys.revoke_key(aws.table, plaintext)
    _emit({"revoked": revoked, **({"id": key_id} if key_id else {})})
    if not revoked:
        raise typer.Exit(1)


def parse_expires(value: str, *, now: int) -> int:
    """`--expires` as Unix seconds: a duration from `now` (30d, 12h, 2w), a date (its 00:00
    UTC) or an ISO time (UTC unless it names its offset); it must lie ahead."""
    from datetime import UTC, datetime

    text = value.strip()
    unit = EXPIRES_UNITS.get(text[-1:].lower())
    try:
        if unit and text[:-1].isdigit():
            at = now + int(text[:-1]) * unit
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            at = int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r}: give 30d, 12h, 2w, a date (2027-01-31) or a time", param_hint="--expires"
        ) from exc
    if at <= now:
        raise typer.BadParameter(f"{value!r} is not in the future", param_hint="--expires")
    return at


def _keys_aws(table: str | None) -> Aws:
    """The handle on the named table: never a default name, which could be another stack's."""
    from control_plane.aws import Aws
    from control_plane.settings import Settings

    if not table:
        _keys_fail(
            "name the table: --table NAME or HOTBATCH_TABLE_NAME (the stack's TableName output)",
            code=2,
        )
    return Aws(Settings(table_name=table))


@contextlib.contextmanager
def _aws_errors() -> Iterator[None]:
    """Missing region or credentials and AWS's refusals as one line and exit status 1."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    try:
        yield
    except NoRegionError:
        _keys_fail("no AWS region: set AWS_REGION (or AWS_PROFILE to a profile that has one)")
    except NoCredentialsError:
        _keys_fail("no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY")
    except ClientError as exc:
        error = exc.response.get("Error", {})
        _keys_fail(f"AWS refused: {error.get('Code', '?')}: {error.get('Message', exc)}")
    except BotoCoreError as exc:
        _keys_fail(f"AWS: {exc}")


def _key_from_stdin() -> str:
    if sys.stdin.isatty():
        typed = typer.prompt("API key", hide_input=True, err=True)
        text = str(typed).strip()
    else:
        text = sys.stdin.read().strip()
    if not text or len(text.split()) != 1:
        _keys_fail("expected one API key on stdin (or --id KEY_ID)", code=2)
    return text


def _keys_fail(message: str, *, code: int = 1) -> NoReturn:
    sys.stderr.write(f"hotbatch keys: {message}\n")
    raise typer.Exit(code)


def _shown(info: ApiKeyInfo) -> dict[str, object]:
    return {
        "id": info.id,
        "tenant": info.tenant_id,
        "name": info.name,
        "hint": info.hint,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked_at": info.revoked_at,
    }


def _utc(at: int | None) -> str:
    from datetime import UTC, datetime

    return "" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")


def _emit(payload: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
