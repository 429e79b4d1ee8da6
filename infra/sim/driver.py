"""What runs when: the control plane's entry points on the virtual clock, as AWS would run them.

Every entry point is one invocation, as a Lambda run would be: a tenant's upload and `POST
/v1/batches`, the split function it starts, RunPod's webhook and a worker's progress post to
the API, the sweep every `tick_s` (EventBridge Scheduler), each tenant polling its unfinished
batches every `poll_s` (`GET /v1/batches/{id}`), and the two queue handlers, fed as SQS's
event-source mappings feed them: the messages of one FIFO message group go to one run at a
time, up to ten per run, the next run of that group starting when the previous one ended.
Whatever an invocation raises is counted as a surfaced failure with its kind, as a 5xx or a
failed Lambda would be.
"""

from __future__ import annotations

import io
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

from control_plane.clients import queues
from control_plane.clients.aws import Aws
from control_plane.models import CreateBatchBody
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.sweep import run_sweep
from control_plane.scheduler.tick import finish, handle, make_context
from control_plane.services.batches import create_batch, get_batch
from control_plane.services.files import create_file
from control_plane.services.results import receive_progress, receive_webhook
from control_plane.split.job import run_split
from infra.sim.clock import Clock

log = logging.getLogger("infra.sim")
ASYNC_INVOKE_S = 0.05  # an asynchronous Lambda invoke reaching the function
ESM_DELAY_S = 0.02  # an SQS message reaching its function through the event-source mapping
ESM_BATCH = 10  # FIFO queues hand a function at most ten messages a run


@dataclass
class Batch:
    id: str
    tenant: str
    priority: str
    created_at: float
    requests: int
    chunks: int = 0
    status: str = "validating"


@dataclass
class _Group:
    """One FIFO message group as the event-source mapping serves it."""

    waiting: deque[str] = field(default_factory=deque)
    busy_until: float = 0.0
    scheduled: bool = False


@dataclass
class ControlPlane:
    aws: Aws
    clock: Clock
    tick_s: float = 60.0
    poll_s: float = 60.0
    batches: dict[str, Batch] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    gets: int = 0
    on_split: Callable[[Batch], None] | None = None
    _groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    _pulling: bool = False

    def start(self) -> None:
        import control_plane.store.table as table_module

        # Conflict backoffs wait on the virtual clock.
        table_module.pause = self.clock.charge
        self.clock.after(1.0, self._scheduled)

    def _invoke(self, kind: str, action: Callable[[], Any]) -> Any:
        with self.clock.invocation(kind):
            try:
                return action()
            except Exception as exc:
                # Counted, as a failed Lambda or a 5xx would be; the run goes on.
                self.failures[kind] += 1
                log.warning("invocation failed: %s %r", kind, exc)
                return None
            finally:
                self._pull_soon()

    def context(self) -> TickContext:
        """A handler's context with its threads and waits on the virtual clock."""
        ctx = make_context(self.aws)
        threads = self.aws.settings.dispatch_threads
        clock = self.clock

        def parallel(work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
            clock.parallel = threads
            try:
                return [work(item) for item in items]
            finally:
                clock.parallel = 1

        ctx.parallel_map = parallel
        ctx.pause = clock.charge
        return ctx

    # --- tenants ---------------------------------------------------------------------------

    def submit(self, tenant: str, lines: bytes, requests: int, priority: str) -> None:
        def create() -> str:
            file = create_file(
                self.aws,
                tenant_id=tenant,
                filename="batch.jsonl",
                purpose="batch",
                stream=io.BytesIO(lines),
                expires_after=None,
            )
            body = CreateBatchBody(
                input_file_id=file.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                priority=priority,
            )
            return create_batch(self.aws, tenant_id=tenant, body=body).id

        batch_id = self._invoke("api.create", create)
        if batch_id is None:
            return
        batch = Batch(batch_id, tenant, priority, self.clock.now, requests)
        self.batches[batch_id] = batch
        self.clock.after(ASYNC_INVOKE_S, lambda: self._split(batch))
        self.clock.after(self.poll_s, lambda: self._poll(batch))

    def _split(self, batch: Batch) -> None:
        item = self._invoke("split", lambda: run_split(self.aws, batch.id))
        if item is None:
            return
        batch.status = item["status"]
        batch.chunks = int(item.get("chunks_open", 0))
        if self.on_split is not None:
            self.on_split(batch)

    def _poll(self, batch: Batch) -> None:
        reply = self._invoke(
            "api.get", lambda: get_batch(self.aws, tenant_id=batch.tenant, batch_id=batch.id)
        )
        self.gets += 1
        if reply is not None:
            batch.status = reply.status
        if batch.status not in ("completed", "failed", "expired", "cancelled"):
            self.clock.after(self.poll_s, lambda: self._poll(batch))

    # --- RunPod and its workers ------------------------------------------------------------

    def webhook(self, url: str, job: dict[str, Any]) -> bool:
        query = _query(url)

        def receive() -> str:
            return receive_webhook(
                self.aws,
                batch_id=query["batch_id"],
                chunk_id=query["chunk_id"],
                attempt=int(query["attempt"]),
                sig=query["sig"],
                job=job,
            )

        return self._invoke("api.webhook", receive) is not None

    def progress(self, url: str, body: dict[str, Any]) -> None:
        query = _query(url)
        self._invoke(
            "api.progress",
            lambda: receive_progress(
                self.aws,
                batch_id=query["batch_id"],
                chunk_id=query["chunk_id"],
                attempt=int(query["attempt"]),
                sig=query["sig"],
                body=body,
            ),
        )

    # --- the sweep and the queue handlers ---------------------------------------------------

    def _scheduled(self) -> None:
        def sweep() -> dict[str, Any]:
            ctx = self.context()
            report = run_sweep(ctx)
            finish(ctx)
            return report

        self._invoke("tick.sweep", sweep)
        self.clock.after(self.tick_s, self._scheduled)

    def _pull_soon(self) -> None:
        if not self._pulling:
            self._pulling = True
            self.clock.after(ESM_DELAY_S, self._pull)

    def _pull(self) -> None:
        """What the event-source mappings received: each message to its group's line."""
        self._pulling = False
        for which in (queues.DISPATCH, queues.BATCHES):
            while messages := _receive_all(self.aws, which):
                for group, body in messages:
                    line = self._groups.setdefault((which, group), _Group())
                    line.waiting.append(body)
                    self._serve(which, group)

    def _serve(self, which: str, group: str) -> None:
        line = self._groups[(which, group)]
        if line.scheduled or not line.waiting:
            return
        line.scheduled = True
        self.clock.at(max(self.clock.now, line.busy_until), lambda: self._run(which, group))

    def _run(self, which: str, group: str) -> None:
        line = self._groups[(which, group)]
        line.scheduled = False
        bodies = [line.waiting.popleft() for _ in range(min(ESM_BATCH, len(line.waiting)))]
        kind = "dispatch" if which == queues.DISPATCH else "batch"

        def run() -> dict[str, Any]:
            ctx = self.context()
            report = handle(ctx, which, bodies)
            finish(ctx)
            return report

        with_end = self._invoke_timed(kind, run)
        line.busy_until = with_end
        self._serve(which, group)

    def _invoke_timed(self, kind: str, action: Callable[[], Any]) -> float:
        start = self.clock.now
        self._invoke(kind, action)
        run = self.clock.invocations[-1]
        return start + run.duration


def _query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlparse(url).query).items()}


def _receive_all(aws: Aws, which: str) -> list[tuple[str, str]]:
    """Every visible message of a queue (group, body), taken off it: the mapping holds them."""
    reply = aws.sqs.receive_message(
        QueueUrl=aws.queues.url(which),
        MaxNumberOfMessages=10,
        VisibilityTimeout=3600,
        AttributeNames=["MessageGroupId"],
    )
    messages = reply.get("Messages", [])
    if messages:
        aws.sqs.delete_message_batch(
            QueueUrl=aws.queues.url(which),
            Entries=[
                {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)
            ],
        )
    return [(m["Attributes"]["MessageGroupId"], m["Body"]) for m in messages]
