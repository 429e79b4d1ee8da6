"""`hotbatch keys …`: API keys, straight in the stack's DynamoDB table (AWS credentials).

The table is always named (--table or HOTBATCH_TABLE_NAME), never defaulted: a default name
could be another stack's. Missing AWS settings and AWS's refusals are one line each, with the
exit statuses of infra/output_cli.py.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from infra.output_cli import Exit, Form, JsonOpt, QuietOpt, emit, emit_ids, fail, form, say

if TYPE_CHECKING:
    from control_plane.clients.aws import Aws
    from control_plane.store.apikeys import ApiKeyInfo

app = typer.Typer(
    help="API keys in the table named by --table or HOTBATCH_TABLE_NAME (AWS credentials).",
    no_args_is_help=True,
)

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
# AWS error codes that mean the credentials, not the request, were refused.
AWS_AUTH_CODES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "MissingAuthenticationTokenException",
    }
)


@app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant the key acts for")],
    name: Annotated[str, typer.Option(help="a label to recognise the key by")] = "",
    expires: Annotated[
        str | None,
        typer.Option(help="30d, 12h, 2w, 2027-01-31 (00:00 UTC) or 2027-01-31T18:00:00Z"),
    ] = None,
    table: TableOpt = None,
    as_json: JsonOpt = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="print only the key (its id goes to stderr)"),
    ] = False,
) -> None:
    """Create a key and print it (shown once) with its id, as JSON."""
    from control_plane.ids import now_s
    from control_plane.store import apikeys

    shape = form(as_json, quiet)
    expires_at = parse_expires(expires, now=now_s()) if expires else None
    aws = _keys_aws(table)
    with aws_errors(aws.settings.table_name):
        key, info = apikeys.issue_key(aws.table, tenant_id=tenant, name=name, expires_at=expires_at)
    if shape is Form.IDS:
        # The key is what a script needs, and it is never shown again: it, not the id, is the
        # result here.
        say(f"created {info.id} for tenant {tenant} (the key is shown once)")
        emit_ids([key])
    else:
        emit({**_shown(info), "api_key": key, "table": aws.settings.table_name})


@app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    table: TableOpt = None,
) -> None:
    """The keys, newest first: id, tenant, name, hint, created, expires, revoked (never a key)."""
    from rich.console import Console
    from rich.table import Column, Table

    from control_plane.store import apikeys

    shape = form(as_json, quiet)
    aws = _keys_aws(table)
    with aws_errors(aws.settings.table_name):
        found = apikeys.list_keys(aws.table, tenant_id=tenant)
    if shape is Form.JSON:
        emit([_shown(info) for info in found])
        return
    if shape is Form.IDS:
        emit_ids(info.id for info in found)
        return
    # The id is what `revoke --id` takes: whole on one line, the other columns wrap.
    view = Table(Column("id", no_wrap=True, min_width=len(apikeys.new_key_id())))
    for heading in ("tenant", "name", "hint", "created", "expires", "revoked"):
        view.add_column(heading)
    for info in found:
        when = [_utc(t) for t in (info.created_at, info.expires_at, info.revoked_at)]
        view.add_row(info.id, info.tenant_id, info.name, info.hint, *when)
    Console(soft_wrap=False).print(view)


@app.command("revoke")
def keys_revoke(
    key_id: Annotated[
        str | None, typer.Option("--id", help="the key's id (`hotbatch keys list`)")
    ] = None,
    table: TableOpt = None,
    as_json: JsonOpt = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the revoked key's id (with --id)")
    ] = False,
    key: Annotated[str | None, typer.Argument(hidden=True, show_default=False)] = None,
) -> None:
    """Revoke a key by its id, or the key itself read from stdin.

    `hotbatch keys revoke < FILE` (typed without echo at a terminal). Warm API functions
    refuse it within HOTBATCH_KEY_CACHE_S seconds. Exit 1 if there was no such key."""
    from control_plane.store import apikeys

    shape = form(as_json, quiet)
    if key is not None:
        fail(
            "a key is not taken as an argument (it would stay in shell history and ps): pipe "
            "it on stdin (`hotbatch keys revoke < key.txt`) or name it with --id KEY_ID",
            Exit.USAGE,
        )
    aws = _keys_aws(table)
    plaintext = None if key_id else _key_from_stdin()
    with aws_errors(aws.settings.table_name):
        if key_id:
            revoked = apikeys.revoke_key_id(aws.table, key_id)
        else:
            assert plaintext is not None
            revoked = apikeys.revoke_key(aws.table, plaintext)
    if shape is Form.IDS:
        emit_ids([key_id] if revoked and key_id else [])
    else:
        emit({"revoked": revoked, **({"id": key_id} if key_id else {})})
    if not revoked:
        raise typer.Exit(int(Exit.FAILED))


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
    from control_plane.clients.aws import Aws
    from control_plane.settings import Settings

    if not table:
        fail(
            "name the table: --table NAME or HOTBATCH_TABLE_NAME (the stack's TableName output)",
            Exit.USAGE,
        )
    return Aws(Settings(table_name=table))


@contextlib.contextmanager
def aws_errors(table: str) -> Iterator[None]:
    """Missing AWS settings, unreachable AWS and AWS's refusals as one line each."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    try:
        yield
    except NoRegionError:
        fail("no AWS region: set AWS_REGION (or AWS_PROFILE to a profile that has one)", Exit.USAGE)
    except NoCredentialsError:
        fail(
            "no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY",
            Exit.USAGE,
        )
    except EndpointConnectionError as exc:
        fail(f"cannot reach AWS: {exc}; check AWS_REGION and the network", Exit.UNREACHABLE)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", str(exc))
        if code == "ResourceNotFoundException":
            fail(f"no table {table} in this AWS account and region: check --table", Exit.USAGE)
        if code in AWS_AUTH_CODES:
            fail(f"AWS refused the credentials: {code}: {message}", Exit.AUTH)
        fail(f"AWS refused: {code}: {message}")
    except BotoCoreError as exc:
        fail(f"AWS: {exc}")


def _key_from_stdin() -> str:
    if sys.stdin.isatty():
        typed = typer.prompt("API key", hide_input=True, err=True)
        text = str(typed).strip()
    else:
        text = sys.stdin.read().strip()
    if not text or len(text.split()) != 1:
        fail("expected one API key on stdin (or --id KEY_ID)", Exit.USAGE)
    return text


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
