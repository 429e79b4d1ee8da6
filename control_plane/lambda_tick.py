"""Lambda entry point of the tick (EventBridge Scheduler; also kicked after a split)."""

from __future__ import annotations

from typing import Any

from control_plane.aws import Aws
from control_plane.observability import configure_lambda, lambda_entry
from control_plane.scheduler.tick import make_context, run_tick
from control_plane.settings import Settings

_aws = Aws(Settings())
configure_lambda()


@lambda_entry
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return run_tick(make_context(_aws))
