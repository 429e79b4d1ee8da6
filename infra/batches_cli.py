"""`hotbatch batches …` and `hotbatch health`: any deployment, from HOTBATCH_API_URL and
HOTBATCH_API_KEY, through the official openai SDK.

stdout carries each command's result (JSON, or a table where one reads better; `--json` for
scripts); progress, bars and messages go to stderr.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from infra import client as api
from infra import views
from infra.batch_file import endpoint_of

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

app = typer.Typer(
    help="Batches on a deployment (HOTBATCH_API_URL, HOTBATCH_API_KEY).",
    no_args_is_help=True,
)


class Priority(enum.StrEnum):
    high = "high"
    normal = "normal"
    backfill = "backfill"


def _out() -> Console:
    return Console(soft_wrap=False)


def _err() -> Console:
    return Console(stderr=True, soft_wrap=True)  # messages are not cut into lines


def deployment(ctx: typer.Context) -> api.Deployment:
    """The deployment handed in by the caller (tests), else the one the environment names."""
    handed = ctx.find_root().obj
    if isinstance(handed, api.Deployment):
        return handed
    try:
        return api.Deployment.from_env()
    except api.MissingDeployment as exc:
        _err().print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc


@contextlib.contextmanager
def api_errors() -> Iterator[None]:
    """The SDK's errors as one line on stderr and exit status 1, not a traceback."""
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("error", body) if isinstance(body, dict) else {}
        message = detail.get("message") if isinstance(detail, dict) else None
        _err().print(f"[red]error {exc.status_code}:[/] {message or exc.message}", highlight=False)
        raise typer.Exit(1) from exc
    except openai.APIConnectionError as exc:
        _err().print(f"[red]error:[/] cannot reach the deployment: {exc}", highlight=False)
        raise typer.Exit(1) from exc


def emit(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def parse_metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--metadata")
        metadata[key] = value
    return metadata


def input_file_id(
    target: api.Deployment, sdk: OpenAI, file: str, *, single_request_bytes: int
) -> str:
    """Upload a local file (in parts above one request's limit), or take a `file-…` id."""
    path = Path(file)
    if not path.is_file():
        if file.startswith("file-"):
            return file
        _err().print(f"[red]error:[/] input file not found: {file}", highlight=False)
        raise typer.Exit(2)
    size = path.stat().st_size
    err = _err()
    parts = size > single_request_bytes
    bar, task = views.transfer_bar(err, f"uploading {path.name}", size)
    with bar:
        uploaded = api.upload(
            target,
            sdk,
            path,
            progress=lambda sent: bar.advance(task, sent),
            single_request_bytes=single_request_bytes,
        )
    how = "in presigned parts" if parts else "in one request"
    err.print(f"uploaded {path.name} as {uploaded.id} ({size:,} bytes, {how})", highlight=False)
    return uploaded.id


def _endpoint(file: str, endpoint: str | None) -> str:
    if endpoint:
        return endpoint
    path = Path(file)
    return endpoint_of(path) if path.is_file() else "/v1/chat/completions"


FileArg = Annotated[str, typer.Argument(help="a batch input JSONL file, or an uploaded file-… id")]
EndpointOpt = Annotated[
    str | None, typer.Option(help="/v1/chat/completions or /v1/completions (default: the file's)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
IntervalOpt = Annotated[float, typer.Option(help="seconds between two looks at the batch")]
TimeoutOpt = Annotated[float | None, typer.Option(help="give up after this many seconds")]
# Above this, uploads go through /v1/uploads and S3 part URLs (hidden: for tests).
PartsAboveOpt = Annotated[int, typer.Option(hidden=True)]


@app.command()
def submit(
    ctx: typer.Context,
    file: FileArg,
    endpoint: EndpointOpt = None,
    priority: Annotated[Priority, typer.Option(help="dispatch priority")] = Priority.normal,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="key=value, repeatable")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="follow the batch; exit 0 only if it completes")
    ] = False,
    interval: IntervalOpt = 2.0,
    timeout: TimeoutOpt = None,
    parts_above: PartsAboveOpt = api.SINGLE_REQUEST_BYTES,
) -> None:
    """Upload FILE and create a batch from it; print the batch (the final one with --wait)."""
    pairs = parse_metadata(metadata)
    target = deployment(ctx)
    with api_errors():
        sdk = target.client()
        file_id = input_file_id(target, sdk, file, single_request_bytes=parts_above)
        batch = api.create_batch(
            sdk,
            file_id=file_id,
            endpoint=_endpoint(file, endpoint),
            priority=priority.value,
            metadata=pairs,
        )
        _err().print(f"batch {batch.id} created ({batch.status})", highlight=False)
        if wait:
            batch = _follow(sdk, batch.id, interval=interval, timeout=timeout)
    emit(batch.model_dump(mode="json"))
    if wait and batch.status != "completed":
        raise typer.Exit(1)


def _follow(sdk: OpenAI, batch_id: str, *, interval: float, timeout: float | None) -> Batch:
    return views.follow(
        lambda: sdk.batches.retrieve(batch_id), _err(), interval=interval, timeout=timeout
    )


@app.command("list")
def list_batches(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
    after: Annotated[str | None, typer.Option(help="the last id of the previous page")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The newest batches, with progress, throughput, ETA and cost."""
    with api_errors():
        sdk = deployment(ctx).client()
        pages = sdk.batches
        page = pages.list(limit=limit, after=after) if after else pages.list(limit=limit)
        batches = list(page.data)
    if as_json:
        emit([batch.model_dump(mode="json") for batch in batches])
    else:
        _out().print(views.batches_table(batches))


@app.command()
def watch(
    ctx: typer.Context,
    batch_id: str,
    interval: IntervalOpt = 2.0,
    timeout: TimeoutOpt = None,
) -> None:
    """Follow a batch live until it ends; print it, exit 0 only if it completed."""
    with api_errors():
        batch = _follow(deployment(ctx).client(), batch_id, interval=interval, timeout=timeout)
    emit(batch.model_dump(mode="json"))
    if batch.status != "completed":
        raise typer.Exit(1)


@app.command()
def download(
    ctx: typer.Context,
    batch_id: str,
    out: Annotated[Path, typer.Option(help="folder for output.jsonl and errors.jsonl")] = Path("."),
) -> None:
    """Write a batch's output and error files to OUT."""
    err = _err()
    with api_errors():
        sdk = deployment(ctx).client()
        batch = sdk.batches.retrieve(batch_id)
        if batch.output_file_id is None and batch.error_file_id is None:
            err.print(f"[red]error:[/] batch {batch_id} is {batch.status}: no results yet")
            raise typer.Exit(1)
        out.mkdir(parents=True, exist_ok=True)
        written: dict[str, Any] = {"batch_id": batch.id, "status": batch.status}
        for name, file_id in (
            ("output", batch.output_file_id),
            ("error", batch.error_file_id),
        ):
            path = out / ("output.jsonl" if name == "output" else "errors.jsonl")
            size = 0
            if file_id:
                size = api.download(sdk, file_id, path, progress=lambda _: None)
            else:
                path.write_bytes(b"")  # no such file: an empty one, so scripts find both
            written[f"{name}_file"] = str(path)
            written[f"{name}_bytes"] = size
    err.print(
        f"wrote {written['output_file']} ({written['output_bytes']:,} bytes) and "
        f"{written['error_file']} ({written['error_bytes']:,} bytes)",
        highlight=False,
    )
    emit(written)


@app.command("dead-letters")
def dead_letters(ctx: typer.Context, batch_id: str, as_json: JsonOpt = False) -> None:
    """The requests of a batch that failed for good (hotbatch extra)."""
    with api_errors():
        letters = api.dead_letters(deployment(ctx).client(), batch_id)
    if as_json:
        emit(letters)
    else:
        _out().print(views.dead_letters_table(batch_id, letters))


@app.command()
def retry(
    ctx: typer.Context,
    batch_id: str,
    custom_id: Annotated[
        list[str] | None, typer.Option("--custom-id", help="only these (repeatable); default all")
    ] = None,
) -> None:
    """Run a completed batch's dead letters again (hotbatch extra); print the batch."""
    with api_errors():
        batch = api.retry(deployment(ctx).client(), batch_id, custom_id or None)
    emit(batch.model_dump(mode="json"))


@app.command()
def cancel(ctx: typer.Context, batch_id: str) -> None:
    """Cancel a batch (finished chunks' results are kept); print it."""
    with api_errors():
        batch = deployment(ctx).client().batches.cancel(batch_id)
    emit(batch.model_dump(mode="json"))


@app.command()
def estimate(
    ctx: typer.Context,
    file: FileArg,
    endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
    parts_above: PartsAboveOpt = api.SINGLE_REQUEST_BYTES,
) -> None:
    """Requests, tokens, duration and cost of FILE before submitting it, from the throughput
    measured on the deployment's recent chunks."""
    target = deployment(ctx)
    with api_errors():
        sdk = target.client()
        file_id = input_file_id(target, sdk, file, single_request_bytes=parts_above)
        result = api.estimate(sdk, file_id=file_id, endpoint=_endpoint(file, endpoint))
    if as_json:
        emit(result)
        return
    out = _out()
    out.print(views.estimate_table(result))
    for note in result.get("notes", []):
        out.print(f"note: {note}", highlight=False)


def health(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The deployment's health over the last hour, component by component; exit 1 if down."""
    with api_errors():
        report = api.health(deployment(ctx).client())
    if as_json:
        emit(report)
    else:
        _out().print(views.health_table(report))
    if report.get("status") == "down":
        raise typer.Exit(1)
