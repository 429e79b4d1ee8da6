"""Lambda entry point of the tick (EventBridge Scheduler; also kicked after a split and after a
chunk result arrives by webhook: `control_plane/kick.py`)."""

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
    # A kick (after a split or a chunk result) dispatches and settles now; keep-hot and its
    # health sample stay on the schedule, one per scheduled tick.
    kicked = isinstance(event, dict) and "kick" in event
    return run_tick(make_context(_aws), kicked=kicked)
