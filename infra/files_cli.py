"""`hotbatch files …`: the files uploaded to a deployment (inputs, results, error files).

`download` writes a file's content to a path, or as it is to stdout (nothing else is printed
there); the others print a table, JSON with `--json`, ids with `-q`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from infra import client as api
from infra import views
from infra.deployment_cli import api_errors, deployment
from infra.output_cli import Exit, Form, JsonOpt, QuietOpt, emit, emit_ids, fail, form, say, show

app = typer.Typer(
    help="Files on a deployment (--api-url/--api-key or HOTBATCH_API_URL/_KEY).",
    no_args_is_help=True,
)

FileIdArg = Annotated[str, typer.Argument(help="a file-… id (`hotbatch files list`)")]


@app.command("list")
def list_files(
    ctx: typer.Context,
    purpose: Annotated[
        str | None, typer.Option(help="only files of this purpose: batch, batch_output")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many")] = 100,
    after: Annotated[str | None, typer.Option(help="the last id of the previous page")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The newest files: id, name, purpose, size, created, expires."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        from openai import omit

        page = target.client().files.list(limit=limit, purpose=purpose or omit, after=after or omit)
        files = list(page.data)
    if shape is Form.JSON:
        emit([file.model_dump(mode="json") for file in files])
    elif shape is Form.IDS:
        emit_ids(file.id for file in files)
    else:
        show(views.files_table(files))


@app.command()
def get(
    ctx: typer.Context, file_id: FileIdArg, as_json: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """One file's name, purpose, size, creation and expiry."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        file = target.client().files.retrieve(file_id)
    if shape is Form.JSON:
        emit(file.model_dump(mode="json"))
    elif shape is Form.IDS:
        emit_ids([file.id])
    else:
        show(views.file_view(file))


@app.command()
def download(
    ctx: typer.Context,
    file_id: FileIdArg,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="write it here (default: to stdout, as it is)"),
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """A file's content, to --out PATH (then prints where; -q: the path) or to stdout."""
    shape = form(as_json, quiet)
    if out is None and shape is not Form.TABLE:
        fail("the content goes to stdout: --json and -q need --out PATH", Exit.USAGE)
    target = deployment(ctx)
    with api_errors(target):
        sdk = target.client()
        if out is None:
            api.download_to(sdk, file_id, sys.stdout.buffer, progress=lambda _: None)
            sys.stdout.buffer.flush()
            return
        size = api.download(sdk, file_id, out, progress=lambda _: None)
    say(f"wrote {out} ({size:,} bytes)")
    if shape is Form.IDS:
        emit_ids([str(out)])
    else:
        emit({"id": file_id, "path": str(out), "bytes": size})


@app.command()
def delete(
    ctx: typer.Context, file_id: FileIdArg, as_json: JsonOpt = False, quiet: QuietOpt = False
) -> None:
    """Delete a file (its content goes with it); print the deletion (-q: the id)."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        deleted = target.client().files.delete(file_id)
    if shape is Form.IDS:
        emit_ids([deleted.id])
    else:
        emit(deleted.model_dump(mode="json"))
