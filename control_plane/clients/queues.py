"""The two SQS FIFO queues that carry events (`scheduler/events.py`): sending, and receiving
where no Lambda event-source mapping does it (the local stack and the tests drain them).

A send that fails is logged and dropped: every event has a safety net that re-creates it (the
sweep tops every endpoint up each minute, re-checks each unfinished batch every few minutes
and polls every chunk whose check is overdue), so a lost event costs latency, never work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from control_plane.messages import DISPATCH_EVENT, BatchEvent, DispatchEvent, WorkEvent

log = logging.getLogger("control_plane.clients.queues")

DISPATCH = "dispatch"
BATCHES = "batches"
LOCAL_VISIBILITY_S = 20


def queue_name(table_name: str, which: str) -> str:
    """The local name of a queue (AWS names them in template.yaml)."""
    return f"{table_name}-{which}.fifo"


@dataclass
class Queues:
    sqs: Any
    dispatch_url: str
    batch_url: str

    def url(self, which: str) -> str:
        return self.dispatch_url if which == DISPATCH else self.batch_url


def send_dispatch(queues: Queues, event: DispatchEvent) -> bool:
    return _send(queues, DISPATCH, event, group=event.endpoint_id)


def send_batch(queues: Queues, event: BatchEvent) -> bool:
    return _send(queues, BATCHES, event, group=event.batch_id)


def _send(queues: Queues, which: str, event: BaseModel, *, group: str) -> bool:
    try:
        queues.sqs.send_message(
            QueueUrl=queues.url(which),
            MessageBody=event.model_dump_json(),
            MessageGroupId=group,
        )
    except Exception as exc:
        # Dropped on purpose: the sweep's safety nets re-create every event (module docstring).
        log.warning(
            "event not queued", extra={"queue": which, "group": group, "error": repr(exc)[:300]}
        )
        return False
    return True


def announce_work(queues: Queues, batch: dict[str, Any], *, endpoint_id: str, now: int) -> bool:
    """Tell a batch's endpoint that its tenant has chunks waiting (a split, a redrive, a
    re-check that found work waiting)."""
    return send_dispatch(
        queues,
        WorkEvent(
            endpoint_id=endpoint_id,
            at=now,
            tenant_id=str(batch["tenant_id"]),
            priority=batch.get("priority", "normal"),
            batch_id=str(batch["id"]),
        ),
    )


def parse_dispatch(body: str) -> DispatchEvent:
    return DISPATCH_EVENT.validate_json(body)


def parse_batch(body: str) -> BatchEvent:
    return BatchEvent.model_validate_json(body)


def receive(queues: Queues, which: str, *, wait_s: int = 0) -> list[tuple[str, str]]:
    """Up to ten messages (receipt handle, body); FIFO hands out one message group's messages
    to one receiver at a time."""
    reply = queues.sqs.receive_message(
        QueueUrl=queues.url(which),
        MaxNumberOfMessages=10,
        WaitTimeSeconds=wait_s,
        # A local handler that dies lets its group go again this soon (its moves are
        # idempotent, so a redelivery only redoes what did not happen).
        VisibilityTimeout=LOCAL_VISIBILITY_S,
    )
    return [(m["ReceiptHandle"], m["Body"]) for m in reply.get("Messages", [])]


def delete(queues: Queues, which: str, receipts: list[str]) -> None:
    if not receipts:
        return
    queues.sqs.delete_message_batch(
        QueueUrl=queues.url(which),
        Entries=[{"Id": str(n), "ReceiptHandle": r} for n, r in enumerate(receipts)],
    )
