"""Kick the tick: run it now instead of at its next scheduled time.

The tick runs every minute in AWS (every second locally), but some events want it at once: a
split that just wrote chunks (nothing is dispatched before the next tick otherwise), and a chunk
result recorded from a webhook, which frees a worker's slot that the next chunk should fill
while the worker still drains its other chunk. In AWS a kick is an asynchronous invocation of
the tick function (`{"kick": reason}`); the local stack hands `create_app` its own kick, which
wakes its ticker thread. A lost kick costs only latency: the scheduled tick comes anyway.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from control_plane.aws import Aws

log = logging.getLogger("control_plane.kick")

Kick = Callable[[str], None]


def lambda_kick(aws: Aws) -> Kick:
    """Invoke the tick function asynchronously (none configured: nothing to kick)."""

    def kick(reason: str) -> None:
        name = aws.settings.tick_function_name
        if not name:
            return
        try:
            aws.lambda_.invoke(
                FunctionName=name,
                InvocationType="Event",
                Payload=json.dumps({"kick": reason}).encode(),
            )
        except Exception as exc:
            # Throttled or denied: the scheduled tick does the same work a little later.
            log.warning("tick kick failed", extra={"reason": reason, "error": str(exc)})

    return kick


def no_kick(reason: str) -> None:
    """For callers without a tick to wake (tests that tick by hand)."""
