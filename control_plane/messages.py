"""The events that drive dispatch and batches, as they travel through SQS (`queues.py` sends
and receives them).

Dispatch events go to the dispatch queue in the message group of their RunPod endpoint (one
dispatcher runs per endpoint at a time); batch events go to the batch queue in the group of
their batch (one run per batch at a time, any number of batches at once). Each carries `at`,
so two events alike but sent at different times are not merged by the queue's content-based
deduplication (which drops a resend of the same event within five minutes).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Priority = Literal["high", "normal", "backfill"]
# An unfinished batch is looked at again at least this often (the sweep's due index): the
# safety net for an event that was lost.
RECHECK_S = 600


class ResultEvent(BaseModel):
    """A dispatched chunk left RunPod (recorded from a webhook or a poll): its slot is free.
    `requeued` chunks (a retry, two halves) wait again in the tenant's queue."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["result"] = "result"
    endpoint_id: str
    at: int
    batch_id: str
    chunk_id: str
    attempt: int
    tenant_id: str
    priority: Priority = "normal"
    outcome: str  # done, dead, retry, split
    requeued: int = 0
    # The chunk's figures for the window and the throughput averages (`done` only).
    seconds: float = 0.0
    requests: int = 0
    tokens: int = 0
    busy_s: float = 0.0


class WorkEvent(BaseModel):
    """A tenant has new pending chunks on this endpoint at this priority (a split, a redrive,
    a re-check that found work waiting)."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["work"] = "work"
    endpoint_id: str
    at: int
    tenant_id: str
    priority: Priority = "normal"
    batch_id: str = ""


class TopUpEvent(BaseModel):
    """Fill the window from RunPod's own count of queued and running jobs: sent by the sweep
    every minute (with the endpoint's workersMax when it read it) and by a dispatcher run that
    stopped before the window was full."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["topup"] = "topup"
    endpoint_id: str
    at: int
    reason: str = "sweep"
    workers_max: int | None = None


DispatchEvent = Annotated[ResultEvent | WorkEvent | TopUpEvent, Field(discriminator="kind")]
DISPATCH_EVENT: TypeAdapter[ResultEvent | WorkEvent | TopUpEvent] = TypeAdapter(DispatchEvent)


class BatchEvent(BaseModel):
    """Something may move this batch on: its last chunk finished, a cancel, the sweep's due
    look (a stale split, the window's end, the periodic re-check)."""

    model_config = ConfigDict(extra="ignore")

    batch_id: str
    at: int
    reason: str
