"""What runs when: the control plane's entry points on the virtual clock.

Every entry point is one invocation, as a Lambda run would be: a tenant's upload and `POST
/v1/batches`, the split function it starts, the scheduled tick every `tick_s`, a tick kicked
(asynchronously) after a split and after each webhook result, RunPod's webhook to the API, and
each tenant polling its unfinished batches every `poll_s` (`GET /v1/batches/{id}`). Whatever one
raises is counted as a surfaced failure with its kind, as a 5xx or a failed Lambda would be.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

from control_plane.aws import Aws
from control_plane.batches import create_batch, get_batch
from control_plane.files import create_file
from control_plane.models import CreateBatchBody
from control_plane.results import receive_webhook
from control_plane.scheduler.tick import make_context, run_tick
from control_plane.split.job import run_split
from infra.sim.clock import Clock

log = logging.getLogger("infra.sim")
ASYNC_INVOKE_S = 0.05  # an asynchronous Lambda invoke reaching the function


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
class ControlPlane:
    """Today's control plane: one global tick, kicked by splits and webhook results."""

    aws: Aws
    clock: Clock
    tick_s: float = 60.0
    poll_s: float = 60.0
    batches: dict[str, Batch] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    gets: int = 0
    _kick_pending: bool = False
    on_split: Callable[[Batch], None] | None = None

    def start(self) -> None:
        self.clock.after(1.0, self._scheduled)

    def _invoke(self, kind: str, action: Callable[[], Any]) -> Any:
        with self.clock.invocation(kind):
            try:
                return action()
            except Exception as exc:
                # Counted, as a failed Lambda or a 5xx would be; the run goes on.
                self.failures[kind] += 1
                log.warning(
                    "invocation failed: %s %r", kind, exc, exc_info=log.isEnabledFor(logging.DEBUG)
                )
                return None

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
        if item["status"] == "in_progress":
            self.kick()

    def _poll(self, batch: Batch) -> None:
        reply = self._invoke(
            "api.get", lambda: get_batch(self.aws, tenant_id=batch.tenant, batch_id=batch.id)
        )
        self.gets += 1
        if reply is not None:
            batch.status = reply.status
        if batch.status not in ("completed", "failed", "expired", "cancelled"):
            self.clock.after(self.poll_s, lambda: self._poll(batch))

    # --- RunPod ----------------------------------------------------------------------------

    def webhook(self, url: str, job: dict[str, Any]) -> bool:
        query = {key: values[0] for key, values in parse_qs(urlparse(url).query).items()}

        def receive() -> str:
            return receive_webhook(
                self.aws,
                batch_id=query["batch_id"],
                chunk_id=query["chunk_id"],
                attempt=int(query["attempt"]),
                sig=query["sig"],
                job=job,
                kick=lambda _: self.kick(),
            )

        return self._invoke("api.webhook", receive) is not None

    # --- the tick --------------------------------------------------------------------------

    def kick(self) -> None:
        """An asynchronous invoke of the tick function: each one a tick of its own."""
        self.clock.after(ASYNC_INVOKE_S, lambda: self._tick(kicked=True))

    def _scheduled(self) -> None:
        self._tick(kicked=False)
        self.clock.after(self.tick_s, self._scheduled)

    def _tick(self, *, kicked: bool) -> None:
        kind = "tick.kicked" if kicked else "tick.scheduled"
        self._invoke(kind, lambda: run_tick(make_context(self.aws), kicked=kicked))
