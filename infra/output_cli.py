"""What every `hotbatch` command prints, and the status it exits with.

stdout carries a command's result and nothing else: JSON (the default of the commands that act,
and `--json` on every command), a table (the default of those that list or show), or with
`-q/--quiet` only ids, one per line, for `$(…)` and `xargs`. Progress, bars and messages go to
stderr. A failure is one line on stderr and one of the exit statuses of `Exit`.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console, RenderableType
from rich.text import Text

from infra.views import TERMINAL

if TYPE_CHECKING:
    from openai.types import Batch


class Exit(enum.IntEnum):
    """The exit statuses, one meaning each, so scripts can tell a failed batch from a typo."""

    OK = 0
    FAILED = 1  # the batch or the operation ended badly; health down
    USAGE = 2  # bad flags or arguments, missing or malformed configuration
    UNREACHABLE = 3  # the deployment (or AWS) cannot be reached
    AUTH = 4  # the API key (or the AWS credentials) refused
    TIMEOUT = 5  # gave up waiting (--timeout) before the batch ended


EXIT_MEANINGS: dict[Exit, str] = {
    Exit.OK: "ok (a followed batch completed)",
    Exit.FAILED: "the batch failed, expired or was cancelled; the API refused (404, 409…); "
    "health down",
    Exit.USAGE: "usage: bad flags or input; no or malformed URL, key or table; no AWS region "
    "or credentials",
    Exit.UNREACHABLE: "cannot reach the deployment (or AWS)",
    Exit.AUTH: "the API key was refused (401, 403), or AWS refused the credentials",
    Exit.TIMEOUT: "gave up waiting: --timeout, --ready-timeout",
}


def exit_codes_help() -> str:
    """The table of exit statuses for `--help` (rich markup: one line each)."""
    rows = "\n".join(f"  [bold]{int(code)}[/]  {text}" for code, text in EXIT_MEANINGS.items())
    return f"[bold]Exit status[/]\n\n{rows}"


class Form(enum.Enum):
    """How a result is printed."""

    TABLE = "table"  # a command's default: a table, or JSON for those that act
    JSON = "json"
    IDS = "ids"


JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="print only ids, one per line (nothing else)")
]


def form(as_json: bool, quiet: bool) -> Form:
    if as_json and quiet:
        fail("--json and --quiet print different things: choose one", Exit.USAGE)
    return Form.JSON if as_json else Form.IDS if quiet else Form.TABLE


def out() -> Console:
    return Console(soft_wrap=False)


def err() -> Console:
    return Console(stderr=True, soft_wrap=True)  # messages are never cut into lines


def emit(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def emit_ids(ids: Iterable[str]) -> None:
    sys.stdout.writelines(f"{one}\n" for one in ids)
    sys.stdout.flush()


def show(renderable: RenderableType) -> None:
    out().print(renderable)


def say(message: str) -> None:
    """A message for the person at the terminal (stderr; no markup read from `message`)."""
    err().print(Text(message), highlight=False)


def fail(message: str, code: Exit = Exit.FAILED, *, label: str = "error") -> NoReturn:
    """One line on stderr (`label: message`), then exit with `code`."""
    err().print(Text.assemble((f"{label}: ", "red"), message), highlight=False)
    raise typer.Exit(int(code))


def print_batch(batch: Batch, shape: Form) -> None:
    """The commands that act on a batch print it as JSON (a table would hide fields scripts
    need), or only its id with -q."""
    if shape is Form.IDS:
        emit_ids([batch.id])
    else:
        emit(batch.model_dump(mode="json"))


def batch_exit(batch: Batch) -> Exit:
    """A followed batch's exit status: completed, ended otherwise, or still running (the wait
    gave up)."""
    if batch.status == "completed":
        return Exit.OK
    return Exit.FAILED if batch.status in TERMINAL else Exit.TIMEOUT
