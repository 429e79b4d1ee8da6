"""Lambda entry point of the sweep (EventBridge Scheduler, every minute: `scheduler/sweep.py`)."""

from __future__ import annotations

from typing import Any

from control_plane.clients.aws import Aws
from control_plane.observability import configure_lambda, lambda_entry
from control_plane.scheduler.sweep import run_sweep
from control_plane.scheduler.tick import finish, make_context
from control_plane.settings import Settings

_aws = Aws(Settings())
configure_lambda()


@lambda_entry
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ctx = make_context(_aws)
    report = run_sweep(ctx)
    report["failures"] = finish(ctx)
    return report
