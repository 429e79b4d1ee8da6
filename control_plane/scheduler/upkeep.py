"""What the tick does after dispatch, for the tenants rather than the GPUs: event webhooks,
file checks and file expiry. Each step is bounded, and each is isolated: one that fails is
logged and retried next tick, and never costs the tick its report or the other steps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from control_plane.scheduler import file_check, file_expiry, notify
from control_plane.scheduler.context import TickContext

log = logging.getLogger("control_plane.tick")

STEPS: tuple[tuple[str, Callable[[TickContext], dict[str, int]]], ...] = (
    ("webhooks", notify.run),
    ("file_checks", file_check.run),
    ("file_expiry", file_expiry.run),
)


def run(ctx: TickContext) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for name, step in STEPS:
        try:
            report[name] = step(ctx)
        except Exception:
            # Its work stays queued in the table; the next tick takes it up again.
            log.exception("upkeep step failed", extra={"step": name})
            report[name] = "failed"
    return report
