"""`hotbatch health`: the deployment's health over the last hour, component by component."""

from __future__ import annotations

import typer

from infra import client as api
from infra import views
from infra.deployment_cli import api_errors, deployment
from infra.output_cli import Exit, Form, JsonOpt, QuietOpt, emit, emit_ids, form, show


def health(ctx: typer.Context, as_json: JsonOpt = False, quiet: QuietOpt = False) -> None:
    """The deployment's health, component by component; exit 1 if down.

    -q prints only the overall status: healthy, degraded or down."""
    shape = form(as_json, quiet)
    target = deployment(ctx)
    with api_errors(target):
        report = api.health(target.client())
    if shape is Form.JSON:
        emit(report)
    elif shape is Form.IDS:
        emit_ids([str(report.get("status"))])
    else:
        show(views.health_table(report))
    if report.get("status") == "down":
        raise typer.Exit(int(Exit.FAILED))
