"""`hotbatch local up` and `hotbatch local run FILE`: the flags; infra/local_stack.py runs them.

`up` is a server: `export` lines (or one JSON object with --json), then `ready`, its logs on
stderr. `run` is a command: progress on stderr, a summary (the batch as JSON with --json, its id
with -q) on stdout, and every log line in a file it names when it starts.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core
import typer.main

from infra.output_cli import Form, JsonOpt, QuietOpt, form, print_batch

if TYPE_CHECKING:
    from infra.local_stack import RunOutcome
    from infra.stack import LocalStack

DEFAULT_WORKDIR = Path(".hotbatch")

app = typer.Typer(help="The whole stack on this machine.", no_args_is_help=True)

ApiKeyOpt = Annotated[
    str | None,
    typer.Option(help="the stack's API key, fixed for scripts (default: a new random one)"),
]
TenantOpt = Annotated[str, typer.Option(help="tenant of the API key")]
RunPodKeyOpt = Annotated[str, typer.Option()]
WorkersOpt = Annotated[int, typer.Option(help="workers kept warm (min workers)")]
MaxWorkersOpt = Annotated[int | None, typer.Option(help="default: --workers")]
IdleOpt = Annotated[float, typer.Option(help="seconds (RunPod: 5)")]
ColdOpt = Annotated[float, typer.Option(help="extra seconds per cold start")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="`smollm2` (SmolLM2-135M-Instruct, a real model made from its package, served as "
        "`smollm2`) or a model path (default: the tiny random-weight model)"
    ),
]
ServedOpt = Annotated[str | None, typer.Option()]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        help="requests per chunk at most (default: HOTBATCH_CHUNK_MAX_REQUESTS, 1000; smaller "
        "when the measured throughput or the estimated tokens say so)"
    ),
]
WorkdirOpt = Annotated[Path, typer.Option(help="the tiny model, the workers' files, logs/")]
ReadyOpt = Annotated[float, typer.Option(help="seconds for the engines to load (then exit 5)")]
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
# `run`'s flags that shape what is printed, not the stack.
OUTPUT_FLAGS = frozenset({"as_json", "quiet"})


@app.command("up")
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
    json_exports: Annotated[
        bool, typer.Option("--json", help="the exports as one JSON object, not `export` lines")
    ] = False,
) -> None:
    """Start it in the foreground: prints `export …` lines, then `ready`; Ctrl-C stops it."""
    flags = _options(locals())
    from handler import logs
    from infra import local_stack

    logs.configure()
    raise typer.Exit(local_stack.up(local_stack.LocalOptions(**flags)))  # type: ignore[arg-type]


@app.command("run")
def local_run(
    input: Annotated[Path, typer.Argument(help="OpenAI batch input JSONL")],
    endpoint: Annotated[str | None, typer.Option(help="default: the first line's url")] = None,
    out: Annotated[Path, typer.Option(help="folder for output.jsonl and errors.jsonl")] = (
        DEFAULT_WORKDIR / "out"
    ),
    timeout: Annotated[float, typer.Option(help="seconds for the batch (then exit 5)")] = 3600.0,
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
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Start it, run one batch file through it, save the results, stop.

    Progress on stderr, every log line in <workdir>/logs/; prints a summary (--json: the final
    batch, -q: its id)."""
    flags = _options(locals())
    shape = form(as_json, quiet)
    from infra import local_stack

    outcome = local_stack.run(local_stack.LocalOptions(**flags))  # type: ignore[arg-type]
    _print_outcome(outcome, shape)
    raise typer.Exit(outcome.code)


def _print_outcome(outcome: RunOutcome, shape: Form) -> None:
    batch = outcome.batch
    if batch is None:
        return  # nothing ran: the reason is on stderr
    if shape is not Form.TABLE:
        print_batch(batch, shape)
        return
    counts = batch.request_counts
    done = (
        f"{counts.completed + counts.failed}/{counts.total} done, {counts.failed} failed"
        if counts
        else "no requests"
    )
    sys.stdout.write(
        f"batch {batch.id} {batch.status}: {done}\n"
        f"results: {outcome.output_file}\n"
        f"errors: {outcome.error_file}\n"
        f"logs: {outcome.log_file}\n"
    )


def run_stack(input_path: Path, *flags: str) -> tuple[LocalStack, dict[str, str]]:
    """The stack `hotbatch local run INPUT FLAGS…` would start (not started) and its workers'
    environment: the flags parsed as the command parses them, defaults included."""
    from infra import local_stack

    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    run = command.commands["run"]
    with run.make_context("run", [str(input_path), *flags]) as context:
        options = _options(context.params)
    return local_stack.planned(local_stack.LocalOptions(**options))  # type: ignore[arg-type]


def _options(params: dict[str, object]) -> dict[str, object]:
    """The LocalOptions of a command's flags: unset ones keep LocalOptions' own defaults, and
    the output flags of `run` are the CLI's, not the stack's."""
    return {
        key: value for key, value in params.items() if value is not None and key not in OUTPUT_FLAGS
    }
