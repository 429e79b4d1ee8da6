"""`hotbatch batches …`: batches on any deployment, through the official openai SDK.

The commands that act (submit, watch, cancel, retry, download) print their result as JSON; those
that list or show (list, get, dead-letters, estimate) print a table unless `--json`; `-q` prints
ids only. Progress and messages go to stderr (infra/output_cli.py).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from infra import client as api
from infra import views
from infra.deployment_cli import api_errors, deployment
from infra.output_cli import (
    Exit,
    Form,
    JsonOpt,
    QuietOpt,
    batch_exit,
    emit,
    emit_ids,
    err,
    fail,
    form,
    print_batch,
    say,
    show,
)
from infra.upload_cli import batch_input, uploaded_input

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

app = typer.Typer(
    help="Batches on a deployment (--api-url/--api-key or HOTBATCH_API_URL/_KEY).",
    no_args_is_help=True,
)


class Priority(enum.StrEnum):
    high = "high"
    normal = "normal"
    backfill = "backfill"


class Status(enum.StrEnum):
    """A Batch's `status`, as OpenAI defines it."""

    validating = "validating"
    in_progress = "in_progress"
    finalizing = "finalizing"
    completed = "completed"
    failed = "failed"
    expired = "expired"
    cancelling = "cancelling"
    cancelled = "cancelled"


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


FileArg = Annotated[
    str | None, typer.Argument(help="a batch input JSONL file, or an uploaded file-… id")
]
FileIdOpt = Annotated[
    str | None,
    typer.Option(
        "--file-id",
        help="an uploaded file (`files list`, `batches estimate`): nothing is uploaded",
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(help="/v1/chat/completions, /v1/completions, … (default: the file's first line)"),
]
IntervalOpt = Annotated[float, typer.Option(help="seconds between two looks at the batch")]
TimeoutOpt = Annotated[float | None, typer.Option(help="give up after this many seconds (exit 5)")]
# Above this, uploads go through /v1/uploads and S3 part URLs (hidden: for tests).
PartsAboveOpt = Annotated[int, typer.Option(hidden=True)]


@app.command()
def submit(
    ctx: typer.Context,
    file: FileArg = None,
    file_id: FileIdOpt = None,
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
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Upload FILE (or take --file-id) and create a batch; print it.

    With --wait, follow it and print the final batch; exit 0 only if it completed."""
    shape = form(as_json, quiet)
    pairs = parse_metadata(metadata)
    if (file is None) == (file_id is None):
        fail("give one of FILE or --file-id ID", Exit.USAGE)
    target = deployment(ctx)
    with api_errors(target):
        sdk = target.client()
        if file_id is not None:
            source = uploaded_input(sdk, file_id, endpoint=endpoint)
        else:
            assert file is not None
            source = batch_input(
                target, sdk, file, endpoint=endpoint, single_request_bytes=parts_above
            )
        batch = api.create_batch(
            sdk,
            file_id=source.file_id,
            endpoint=source.endpoint,
            priority=priority.value,
            metadata=pairs,
        )
        say(f"batch {batch.id} created ({batch.status})")
        if wait:
            batch = _follow(sdk, batch.id, interval=interval, timeout=timeout)
    print_batch(batch, shape)
    if wait:
        _exit_for(batch, timeout)


def _follow(sdk: OpenAI, batch_id: str, *, interval: float, timeout: float | None) -> Batch:
    return views.follow(
        lambda: sdk.batches.retrieve(batch_id), err(), interval=interval, timeout=timeout
    )


def _exit_for(batch: Batch, timeout: float | None) -> None:
    code = batch_exit(batch)
    if code is Exit.TIMEOUT:
        say(f"batch {batch.id} is still {batch.status} after {timeout or 0:g} s")
    if code is not Exit.OK:
        raise typer.Exit(int(code))


@app.command()
def get(
    ctx: typer.Context, batch_id: str, as_json: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """One batch: status, progress, files, cost and, for a failed one, its errors."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        batch = target.client().batches.retrieve(batch_id)
    if shape is Form.TABLE:
        show(views.batch_view(batch))
    else:
        print_batch(batch, shape)


@app.command("list")
def list_batches(
    ctx: typer.Context,
    status: Annotated[
        Status | None, typer.Option(help="only batches in this status (newest first)")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="at most this many")] = 20,
    after: Annotated[str | None, typer.Option(help="the last id of the previous page")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The newest batches, with progress, throughput, ETA and cost."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        found = api.list_batches(
            target.client(),
            limit=limit,
            after=after,
            keep=(lambda batch: batch.status == status) if status else None,
        )
    if found.more and len(found.batches) < limit:  # the scan stopped before the end
        say(
            f"looked at the newest {found.scanned:,} batches only; page on with "
            f"--after {found.last_id}"
        )
    if shape is Form.JSON:
        emit([batch.model_dump(mode="json") for batch in found.batches])
    elif shape is Form.IDS:
        emit_ids(batch.id for batch in found.batches)
    else:
        show(views.batches_table(found.batches))


@app.command()
def watch(
    ctx: typer.Context,
    batch_id: str,
    interval: IntervalOpt = 2.0,
    timeout: TimeoutOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Follow a batch live until it ends; print it; exit 0 only if it completed."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        batch = _follow(target.client(), batch_id, interval=interval, timeout=timeout)
    print_batch(batch, shape)
    _exit_for(batch, timeout)


@app.command()
def download(
    ctx: typer.Context,
    batch_id: str,
    out: Annotated[Path, typer.Option(help="folder for output.jsonl and errors.jsonl")] = Path("."),
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a batch's output and error files to OUT; print where (-q: the two paths)."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        sdk = target.client()
        batch = sdk.batches.retrieve(batch_id)
        if batch.output_file_id is None and batch.error_file_id is None:
            fail(f"batch {batch_id} is {batch.status}: no results yet")
        out.mkdir(parents=True, exist_ok=True)
        written: dict[str, Any] = {"batch_id": batch.id, "status": batch.status}
        for name, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
            path = out / ("output.jsonl" if name == "output" else "errors.jsonl")
            size = 0
            if file_id:
                size = api.download(sdk, file_id, path, progress=lambda _: None)
            else:
                path.write_bytes(b"")  # no such file: an empty one, so scripts find both
            written[f"{name}_file"] = str(path)
            written[f"{name}_bytes"] = size
    say(
        f"wrote {written['output_file']} ({written['output_bytes']:,} bytes) and "
        f"{written['error_file']} ({written['error_bytes']:,} bytes)"
    )
    if shape is Form.IDS:
        emit_ids([written["output_file"], written["error_file"]])
    else:
        emit(written)


@app.command("dead-letters")
def dead_letters(
    ctx: typer.Context, batch_id: str, as_json: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """The requests of a batch that failed for good (hotbatch extra); -q: their custom_ids."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        letters = api.dead_letters(target.client(), batch_id)
    if shape is Form.JSON:
        emit(letters)
    elif shape is Form.IDS:
        emit_ids(str(letter["custom_id"]) for letter in letters)
    else:
        show(views.dead_letters_table(batch_id, letters))


@app.command()
def retry(
    ctx: typer.Context,
    batch_id: str,
    custom_id: Annotated[
        list[str] | None, typer.Option("--custom-id", help="only these (repeatable); default all")
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a completed batch's dead letters again (hotbatch extra); print the batch."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        batch = api.retry(target.client(), batch_id, custom_id or None)
    print_batch(batch, shape)


@app.command()
def cancel(
    ctx: typer.Context, batch_id: str, as_json: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """Cancel a batch (finished chunks' results are kept); print it."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        batch = target.client().batches.cancel(batch_id)
    print_batch(batch, shape)


@app.command()
def estimate(
    ctx: typer.Context,
    file: Annotated[
        str,
        typer.Argument(
            help="an uploaded file-… id, or a JSONL file: uploaded to be estimated, it expires "
            "after a day (submit it with --file-id meanwhile)"
        ),
    ],
    endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    parts_above: PartsAboveOpt = api.SINGLE_REQUEST_BYTES,
) -> None:
    """Requests, tokens, duration and cost of a file before submitting it.

    From the throughput measured on the deployment's recent chunks. -q prints the file's id,
    for `batches submit --file-id`."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        sdk = target.client()
        source = batch_input(
            target,
            sdk,
            file,
            endpoint=endpoint,
            single_request_bytes=parts_above,
            expires_after_s=api.ESTIMATE_COPY_EXPIRES_S,
        )
        result = api.estimate(sdk, file_id=source.file_id, endpoint=source.endpoint)
    if source.uploaded_from is not None:
        say(
            f"{source.file_id} expires in {views.duration(api.ESTIMATE_COPY_EXPIRES_S)}: "
            f"`hotbatch batches submit --file-id {source.file_id}` submits it without uploading "
            "it again"
        )
    if shape is Form.JSON:
        emit(result)
    elif shape is Form.IDS:
        emit_ids([source.file_id])
    else:
        show(views.estimate_table(result))
        for note in result.get("notes", []):
            show(Text(f"note: {note}"))
