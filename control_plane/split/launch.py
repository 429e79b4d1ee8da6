"""Start the split for a new batch without making the client wait for it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from control_plane.clients.aws import Aws
from control_plane.split.job import run_split

log = logging.getLogger("control_plane.split")

# A split runs at most 15 minutes (its Lambda timeout); one still validating after this died,
# and the sweep starts it again.
SPLIT_STALE_S = 20 * 60


def start_split(aws: Aws, batch_id: str, *, background: Callable[..., Any]) -> None:
    """`lambda` mode: an asynchronous invocation of the split function (Lambda queues and
    retries it; the HTTP API's 30 s limit does not apply). `inline` mode: `background` runs
    it after the response (FastAPI's background tasks), for the local stack and tests."""
    if aws.settings.split_mode == "lambda":
        aws.lambda_.invoke(
            FunctionName=aws.settings.split_function_name,
            InvocationType="Event",
            Payload=json.dumps({"batch_id": batch_id}).encode(),
        )
        return
    background(_run_logged, aws, batch_id)


def _run_logged(aws: Aws, batch_id: str) -> None:
    try:
        run_split(aws, batch_id)
    except Exception:
        # In a background thread nobody else would see it; the batch stays `validating` and
        # a rerun of the split (idempotent) picks it up.
        log.exception("split crashed", extra={"batch_id": batch_id})
