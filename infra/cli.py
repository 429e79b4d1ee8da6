"""The `hotbatch` command (typer + rich): the root, its global options and its groups.

hotbatch [--api-url URL] [--api-key KEY] batches|files|health …   any deployment
hotbatch local up | local run FILE                                 the stack on this machine
hotbatch keys create|list|revoke                                   API keys (AWS credentials)
hotbatch run-chunk FILE | tiny-model DIR                           the worker without a stack
hotbatch --version

Each group lives in its own module (infra/*_cli.py); docs/cli.md is the reference.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from infra import batches_cli, files_cli, keys_cli, local_cli, worker_cli
from infra.client import Deployment
from infra.deployment_cli import Globals
from infra.health_cli import health
from infra.local_cli import run_stack
from infra.output_cli import exit_codes_help

__all__ = ["app", "main", "run_stack"]

app = typer.Typer(
    name="hotbatch",
    help="hotbatch: an OpenAI-compatible Batch API on RunPod serverless.",
    epilog=exit_codes_help(),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(batches_cli.app, name="batches")
app.add_typer(files_cli.app, name="files")
app.command("health")(health)
app.add_typer(local_cli.app, name="local")
app.add_typer(keys_cli.app, name="keys")
app.command("run-chunk")(worker_cli.run_chunk)
app.command("tiny-model")(worker_cli.tiny_model)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hotbatch")
    except PackageNotFoundError:  # a checkout run without `pip install`
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"hotbatch {package_version()}\n")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option(
            "--api-url",
            help="the deployment's API base URL, ending in /v1 (default: HOTBATCH_API_URL)",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="its API key (default: HOTBATCH_API_KEY)",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="print `hotbatch VERSION` and exit",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """hotbatch: an OpenAI-compatible Batch API on RunPod serverless."""
    handed = ctx.obj if isinstance(ctx.obj, Deployment) else None
    ctx.obj = Globals(api_url=api_url, api_key=api_key, handed=handed)


def main(argv: list[str] | None = None) -> int:
    """The console script: runs the app, returns its exit status."""
    try:
        app(args=argv, prog_name="hotbatch", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
