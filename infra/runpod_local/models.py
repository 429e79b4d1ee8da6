"""The local RunPod endpoint's state: jobs, their queue, workers and RunPod's policies.

Like a moto backend, this holds plain objects and typed methods; `server.py` only parses HTTP.
All methods run on one event loop, so no locks are needed.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from infra.runpod_local.exceptions import JobNotFound

JobStatus = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]
FINAL: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})

# RunPod's documented defaults for `policy`.
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000
DEFAULT_TTL_MS = 24 * 3600 * 1000
STOP_RESEND_S = 1.0
STOP_GIVE_UP_S = 30.0
# A job whose worker died is put back once, then failed (RunPod retries a lost job a bounded
# number of times; it never leaves it IN_PROGRESS).
MAX_RETRIES = 1


def job_body(
    *,
    id: str,
    status: str,
    now: float,
    created_at: float,
    started_at: float | None,
    completed_at: float | None,
    worker_id: str | None,
    output: Any,
    error: str | None,
) -> dict[str, Any]:
    """A RunPod job object as `/status` returns it and the webhook receives it: times in ms,
    the queue wait until it started, the run until it ended (or until now)."""
    started = started_at if started_at is not None else now
    body: dict[str, Any] = {
        "id": id,
        "status": status,
        "delayTime": int(1000 * (started - created_at)),
    }
    if started_at is not None:
        ended = completed_at if completed_at is not None else now
        body["executionTime"] = int(1000 * (ended - started_at))
    if worker_id is not None:
        body["workerId"] = worker_id
    if output is not None:
        body["output"] = output
    if error is not None:
        body["error"] = error
    return body


@dataclass
class Job:
    id: str
    input: Any
    webhook: str | None
    execution_timeout_ms: int
    ttl_ms: int
    low_priority: bool
    created_at: float = field(default_factory=time.monotonic)
    status: JobStatus = "IN_QUEUE"
    started_at: float | None = None
    completed_at: float | None = None
    output: Any = None
    error: str | None = None
    worker_id: str | None = None
    retries: int = 0
    webhook_sent: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The job object as `/status` returns it and the webhook receives it."""
        body = job_body(
            id=self.id,
            status=self.status,
            now=time.monotonic(),
            created_at=self.created_at,
            started_at=self.started_at,
            completed_at=self.completed_at,
            worker_id=self.worker_id,
            output=self.output,
            error=self.error,
        )
        if self.retries:
            body["retries"] = self.retries
        return body

    def work_item(self) -> dict[str, Any]:
        """What the worker receives from job-take."""
        return {"id": self.id, "input": self.input}


@dataclass
class Worker:
    id: str
    started_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None  # first job-take: the engine is loaded
    last_seen: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)
    jobs: set[str] = field(default_factory=set)
    # Jobs to stop -> (first asked, last sent). Re-sent each second until the worker has let go
    # of the job: a signal that arrives before the SDK has registered the job's task is lost.
    stopping: dict[str, tuple[float, float]] = field(default_factory=dict)
    alive: bool = True
    # Its process exited without being asked to; it counts as unhealthy until a worker starts
    # again (the pool clears it), as RunPod shows a crash-looping worker.
    crashed: bool = False

    @property
    def state(self) -> str:
        if not self.alive:
            return "unhealthy"
        if self.ready_at is None:
            return "initializing"
        return "running" if self.jobs else "idle"


@dataclass
class EndpointBackend:
    endpoint_id: str = "local"
    jobs: dict[str, Job] = field(default_factory=dict)
    queue: collections.deque[str] = field(default_factory=collections.deque)
    workers: dict[str, Worker] = field(default_factory=dict)
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    webhooks: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)

    # --- client API ---

    async def submit(self, payload: dict[str, Any]) -> Job:
        policy = payload.get("policy") or {}
        timeout_ms = policy.get("executionTimeout") or DEFAULT_EXECUTION_TIMEOUT_MS
        job = Job(
            id=f"{uuid.uuid4()}-u1",
            input=payload.get("input"),
            webhook=payload.get("webhook"),
            execution_timeout_ms=int(timeout_ms),
            ttl_ms=int(policy.get("ttl") or DEFAULT_TTL_MS),
            low_priority=bool(policy.get("lowPriority", False)),
        )
        self.jobs[job.id] = job
        self.queue.append(job.id)
        await self._notify()
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def wait_final(self, job_id: str, timeout: float) -> Job:
        job = self.get(job_id)
        deadline = time.monotonic() + timeout
        async with self.changed:
            while job.status not in FINAL and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
        return job

    async def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status not in FINAL:
            await self._finish(job, "CANCELLED")
        return job

    async def purge_queue(self) -> int:
        removed = 0
        for job_id in list(self.queue):
            job = self.jobs[job_id]
            if job.status == "IN_QUEUE":
                await self._finish(job, "CANCELLED", count=False)
                removed += 1
        self.queue.clear()
        return removed

    def health(self) -> dict[str, Any]:
        states = collections.Counter(w.state for w in self.workers.values() if w.alive)
        in_queue = sum(1 for j in self.jobs.values() if j.status == "IN_QUEUE")
        in_progress = sum(1 for j in self.jobs.values() if j.status == "IN_PROGRESS")
        return {
            "jobs": {
                "completed": self.counters["completed"],
                # RunPod counts timed-out jobs as failed; cancelled ones in neither.
                "failed": self.counters["failed"] + self.counters["timed_out"],
                "inProgress": in_progress,
                "inQueue": in_queue,
                "retried": self.counters["retried"],
            },
            "workers": {
                "idle": states["idle"],
                "initializing": states["initializing"],
                "ready": states["idle"],
                "running": states["running"],
                "throttled": 0,
                "unhealthy": sum(1 for w in self.workers.values() if w.crashed),
            },
        }

    # --- worker API ---

    def worker(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = Worker(worker_id)
        worker.last_seen = time.monotonic()
        return worker

    async def take(self, worker_id: str, batch_size: int, timeout: float) -> list[Job]:
        """Long-poll: hand the worker up to `batch_size` queued jobs, or none after `timeout`."""
        worker = self.worker(worker_id)
        if worker.ready_at is None:
            worker.ready_at = time.monotonic()
        deadline = time.monotonic() + timeout
        async with self.changed:
            while True:
                # A worker the pool is retiring (idle timeout, shutdown) takes nothing more: a
                # job handed to it would die with its engine.
                taken = self._dequeue(worker, batch_size) if worker.alive else []
                if taken or time.monotonic() >= deadline or not worker.alive:
                    break
                try:
                    await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())
                except TimeoutError:
                    continue
            if taken:
                self.changed.notify_all()
        return taken

    def _dequeue(self, worker: Worker, batch_size: int) -> list[Job]:
        taken: list[Job] = []
        while self.queue and len(taken) < batch_size:
            job = self.jobs[self.queue.popleft()]
            if job.status != "IN_QUEUE":
                continue
            job.status, job.started_at, job.worker_id = "IN_PROGRESS", time.monotonic(), worker.id
            worker.jobs.add(job.id)
            taken.append(job)
        return taken

    async def done(self, worker_id: str, job_id: str, result: dict[str, Any]) -> None:
        worker = self.worker(worker_id)
        if result.get("status") == "IN_PROGRESS":
            # The SDK's progress_update: RunPod shows it as the running job's output.
            job = self.jobs.get(job_id)
            if job is not None and job.status == "IN_PROGRESS" and job.worker_id == worker_id:
                job.output = result.get("output")
            return
        worker.jobs.discard(job_id)
        worker.stopping.pop(job_id, None)
        if not worker.jobs:
            worker.idle_since = time.monotonic()
        job = self.jobs.get(job_id)
        if job is None or job.status != "IN_PROGRESS" or job.worker_id != worker_id:
            return  # cancelled, timed out or re-dispatched meanwhile: a late result is dropped
        job.output = result.get("output")
        if result.get("error"):
            job.error = str(result["error"])
            await self._finish(job, "FAILED")
        else:
            await self._finish(job, "COMPLETED")
        if result.get("stopPod"):
            worker.alive = False  # the pool retires it

    async def stop_signals(self, worker_id: str, timeout: float) -> list[str]:
        worker = self.worker(worker_id)
        deadline = time.monotonic() + timeout
        async with self.changed:
            while True:
                due = self._due_stops(worker)
                remaining = deadline - time.monotonic()
                if due or remaining <= 0 or not worker.alive:
                    return due
                try:
                    await asyncio.wait_for(self.changed.wait(), min(remaining, STOP_RESEND_S))
                except TimeoutError:
                    continue

    def _due_stops(self, worker: Worker) -> list[str]:
        now = time.monotonic()
        due: list[str] = []
        for job_id, (asked, sent) in list(worker.stopping.items()):
            if now - asked > STOP_GIVE_UP_S:
                del worker.stopping[job_id]
            elif now - sent >= STOP_RESEND_S:
                worker.stopping[job_id] = (asked, now)
                due.append(job_id)
        return due

    def ping(self, worker_id: str, job_ids: list[str]) -> None:
        """A heartbeat lists the jobs the worker still holds; stops for the others are done."""
        worker = self.worker(worker_id)
        for job_id in list(worker.stopping):
            if job_id not in job_ids:
                del worker.stopping[job_id]

    # --- policies, run by the server's housekeeping loop ---

    async def enforce(self) -> None:
        """Execution timeouts, TTL expiry and jobs of workers that died."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.status == "IN_PROGRESS" and job.started_at is not None:
                if now - job.started_at > job.execution_timeout_ms / 1000:
                    await self._finish(job, "TIMED_OUT")
            elif job.status == "IN_QUEUE" and now - job.created_at > job.ttl_ms / 1000:
                await self._finish(job, "TIMED_OUT", count=False)
            if job.status in FINAL and now - job.created_at > job.ttl_ms / 1000:
                del self.jobs[job.id]  # after the TTL the job is gone: 404

    async def worker_died(self, worker_id: str, *, retired: bool = False) -> None:
        """The worker's process is gone. One the pool retired (scale-down, shutdown) leaves
        the endpoint's counts, as on RunPod; one that crashed is `unhealthy`."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        worker.alive = False
        worker.crashed = not retired
        for job_id in list(worker.jobs):
            job = self.jobs.get(job_id)
            if job is None or job.status != "IN_PROGRESS":
                continue
            if job.retries < MAX_RETRIES:
                job.retries += 1
                self.counters["retried"] += 1
                job.status, job.started_at, job.worker_id = "IN_QUEUE", None, None
                job.output = None  # the dead attempt's progress
                self.queue.appendleft(job.id)
            else:
                job.error = f"worker {worker_id} exited while running the job"
                await self._finish(job, "FAILED")
        worker.jobs.clear()
        await self._notify()

    # --- internals ---

    async def _finish(self, job: Job, status: JobStatus, *, count: bool = True) -> None:
        was_running = job.status == "IN_PROGRESS"
        job.status, job.completed_at = status, time.monotonic()
        if was_running and status in ("CANCELLED", "TIMED_OUT") and job.worker_id:
            worker = self.workers.get(job.worker_id)
            if worker is not None:
                worker.jobs.discard(job.id)
                worker.stopping[job.id] = (time.monotonic(), 0.0)
                if not worker.jobs:
                    worker.idle_since = time.monotonic()
        if count:
            self.counters[status.lower()] += 1
        if job.webhook and not job.webhook_sent:
            job.webhook_sent = True
            self.webhooks.put_nowait(job)
        await self._notify()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()
