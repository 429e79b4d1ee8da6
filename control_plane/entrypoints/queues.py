"""Lambda entry points of the two event queues (SQS FIFO event-source mappings in
template.yaml): the dispatcher (`scheduler/dispatch.py`, one run per RunPod endpoint at a time)
and the batch handler (`scheduler/settle.py`, one run per batch at a time).

A run that raises is retried by SQS with the same messages (after the visibility timeout), and
after a few tries they go to the queue's dead-letter queue; every handler is idempotent (its
moves are conditional writes), so a retry redoes only what did not happen.
"""

from __future__ import annotations

from typing import Any

from control_plane.clients import queues
from control_plane.clients.aws import Aws
from control_plane.observability import configure_lambda, lambda_entry
from control_plane.scheduler.tick import finish, handle, make_context
from control_plane.settings import Settings

_aws = Aws(Settings())
configure_lambda()


def _bodies(event: dict[str, Any]) -> list[str]:
    return [str(record["body"]) for record in event.get("Records", [])]


def _run(which: str, event: dict[str, Any]) -> dict[str, Any]:
    ctx = make_context(_aws)
    report = handle(ctx, which, _bodies(event))
    report["failures"] = finish(ctx)
    return report


@lambda_entry
def dispatch_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _run(queues.DISPATCH, event)


@lambda_entry
def batch_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return _run(queues.BATCHES, event)
