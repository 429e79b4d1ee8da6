"""A RunPod serverless endpoint on the virtual clock: W workers, no processes.

Jobs wait in one FIFO queue (low-priority jobs behind the others) and are handed to the worker
with the most free slots (MAX_CONCURRENCY each), as RunPod hands a job to an idle worker first.
A chunk job downloads its input (`transfer_s`), waits for its worker's engine, holds it for
`request_s` per request (one engine per worker: a second job in its other slot overlaps only
its transfers, which is what pipelining buys), uploads its lines and completes; its webhook
reaches the API `webhook_delay_s` later (RunPod retries a failed delivery twice). The client
API keeps RunPod's documented per-endpoint limits: past them, or past the queue limit, it
answers 429 (docs.runpod.io/serverless/references/operations).
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import orjson

from control_plane.clients.runpod import EndpointError, JobGone, RunPodClient
from handler.contract import (
    ChunkCounts,
    ChunkSummary,
    ChunkTimings,
    ChunkUsage,
    ProcessChunkInput,
    RequestFailure,
    WorkerIdentity,
)
from infra.runpod_local.models import job_body
from infra.sim.clock import Clock

# Route → (requests per 10 s), RunPod's published per-endpoint limits.
RATE_LIMITS = {"run": 1000, "status": 2000, "cancel": 100}
QUEUE_LIMIT = 50  # and WorkersMax × 500: both must be passed for a 429
RETENTION_S = 1800  # /run results stay 30 minutes after completion
API_LATENCY_S = 0.1  # a RunPod client-API round trip from AWS (assumed, not measured)


@dataclass
class SimJob:
    id: str
    input: dict[str, Any]
    webhook: str | None
    low_priority: bool
    execution_timeout_s: float
    created_at: float
    status: str = "IN_QUEUE"
    started_at: float | None = None
    completed_at: float | None = None
    worker: int | None = None
    output: Any = None
    error: str | None = None
    holds_slot: bool = False

    def to_dict(self, now: float) -> dict[str, Any]:
        return job_body(
            id=self.id,
            status=self.status,
            now=now,
            created_at=self.created_at,
            started_at=self.started_at,
            completed_at=self.completed_at,
            worker_id=f"w{self.worker}" if self.started_at is not None else None,
            output=self.output,
            error=self.error,
        )


@dataclass
class SimWorker:
    index: int
    slots: int
    busy: int = 0
    engine_free_at: float = 0.0


@dataclass
class EndpointModel:
    workers: int
    concurrency: int = 2
    request_s: float = 0.6  # engine seconds per request
    transfer_s: float = 1.0  # each way
    job_failure_rate: float = 0.0  # a job that fails as a whole (a worker crash)
    request_failure_rate: float = 0.0  # a request that fails (a dead letter)
    webhook_delay_s: float = 0.3
    seed: int = 1


@dataclass
class VirtualEndpoint:
    """One endpoint's client API, queue and workers."""

    endpoint_id: str
    model: EndpointModel
    clock: Clock
    read_object: Callable[[str], bytes]
    write_object: Callable[[str, bytes], None]
    deliver_webhook: Callable[[str, dict[str, Any]], bool]
    bucket: str
    # A worker's progress post to the API (the job input's progress_url), if it has one.
    post_progress: Callable[[str, dict[str, Any]], None] | None = None
    jobs: dict[str, SimJob] = field(default_factory=dict)
    queue: deque[str] = field(default_factory=deque)
    low_queue: deque[str] = field(default_factory=deque)
    route_calls: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    rejected: Counter[str] = field(default_factory=Counter)
    # Observers: (job, event) for "start", "engine", "end"
    on_event: Callable[[SimJob, str, float, float], None] | None = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _windows: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._rng.seed(self.model.seed)
        self.workers = [SimWorker(i, self.model.concurrency) for i in range(self.model.workers)]
        # Free workers by free slots: a job goes to the idlest worker first.
        self._free: dict[int, list[int]] = {
            slots: [] for slots in range(1, self.model.concurrency + 1)
        }
        self._free[self.model.concurrency] = list(range(self.model.workers))[::-1]

    # --- client API ------------------------------------------------------------------------

    def call(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        self.clock.charge(API_LATENCY_S)
        route = path.split("/", 1)[0]
        now = self.clock.now
        self.route_calls[route][int(now)] += 1
        limit = RATE_LIMITS.get(route)
        if limit is not None:
            window = self._windows[route]
            while window and window[0] <= now - 10:
                window.popleft()
            if len(window) >= limit:
                self.rejected[route] += 1
                raise EndpointError(f"{method} {path}: HTTP 429 rate limited", status=429)
            window.append(now)
        if route == "run":
            assert body is not None
            return self.run(body)
        if route == "health":
            return self.health()
        job_id = path.split("/", 1)[1]
        job = self.jobs.get(job_id)
        if job is None or (job.completed_at is not None and now - job.completed_at > RETENTION_S):
            raise JobGone(path)
        if route == "cancel":
            self.cancel(job)
        return job.to_dict(now)

    def run(self, body: dict[str, Any]) -> dict[str, Any]:
        queued = len(self.queue) + len(self.low_queue)
        if queued > QUEUE_LIMIT and queued > self.model.workers * 500:
            self.rejected["run"] += 1
            raise EndpointError("POST run: HTTP 429 queue full", status=429)
        policy = body.get("policy") or {}
        job = SimJob(
            id=f"job-{next(self._ids)}",
            input=body["input"],
            webhook=body.get("webhook"),
            low_priority=bool(policy.get("lowPriority")),
            execution_timeout_s=float(policy.get("executionTimeout", 600_000)) / 1000,
            created_at=self.clock.now,
        )
        self.jobs[job.id] = job
        if self.on_event is not None:
            self.on_event(job, "queued", job.created_at, job.created_at)
        (self.low_queue if job.low_priority else self.queue).append(job.id)
        self._assign()
        return {"id": job.id, "status": "IN_QUEUE"}

    def health(self) -> dict[str, Any]:
        running = sum(1 for w in self.workers if w.busy)
        return {
            "jobs": {
                "inQueue": len(self.queue) + len(self.low_queue),
                "inProgress": sum(w.busy for w in self.workers),
                "completed": 0,
                "failed": 0,
                "retried": 0,
            },
            "workers": {
                "idle": len(self.workers) - running,
                "running": running,
                "ready": len(self.workers) - running,
                "initializing": 0,
                "throttled": 0,
                "unhealthy": 0,
            },
        }

    def cancel(self, job: SimJob) -> None:
        if job.status == "IN_QUEUE":
            for queue in (self.queue, self.low_queue):
                if job.id in queue:
                    queue.remove(job.id)
            job.status = "CANCELLED"
            job.completed_at = self.clock.now
        elif job.status == "IN_PROGRESS":
            job.status = "CANCELLED"
            job.completed_at = self.clock.now
            self._release(job)

    # --- workers ---------------------------------------------------------------------------

    def _take_worker(self) -> SimWorker | None:
        for slots in range(self.model.concurrency, 0, -1):
            if self._free[slots]:
                return self.workers[self._free[slots].pop()]
        return None

    def _put_worker(self, worker: SimWorker) -> None:
        free = worker.slots - worker.busy
        if free > 0:
            self._free[free].append(worker.index)

    def _assign(self) -> None:
        while self.queue or self.low_queue:
            worker = self._take_worker()
            if worker is None:
                return
            job_id = (self.queue or self.low_queue).popleft()
            job = self.jobs[job_id]
            worker.busy += 1
            self._put_worker(worker)
            self._start(job, worker)

    def _release(self, job: SimJob) -> None:
        if not job.holds_slot or job.worker is None:
            return
        job.holds_slot = False
        worker = self.workers[job.worker]
        free_before = worker.slots - worker.busy
        if free_before > 0:
            self._free[free_before].remove(worker.index)
        worker.busy -= 1
        self._put_worker(worker)
        self._assign()

    def _start(self, job: SimJob, worker: SimWorker) -> None:
        now = self.clock.now
        job.status, job.started_at, job.worker = "IN_PROGRESS", now, worker.index
        job.holds_slot = True
        if self.on_event is not None:
            self.on_event(job, "start", now, now)
        if job.input.get("action") == "health":
            self.clock.at(now + 0.05, lambda: self._finish_ping(job))
            return
        chunk = ProcessChunkInput.model_validate(job.input)
        lines = self.read_object(self._key(chunk.input_url)).splitlines()
        engine_start = max(now + self.model.transfer_s, worker.engine_free_at)
        engine_end = engine_start + self.model.request_s * len(lines)
        worker.engine_free_at = engine_end
        done = engine_end + self.model.transfer_s
        if done - now > job.execution_timeout_s:
            done = now + job.execution_timeout_s
            self.clock.at(done, lambda: self._fail(job, "TIMED_OUT", "execution timeout"))
            return
        if self.on_event is not None:
            self.on_event(job, "engine", engine_start, engine_end)
        # (getattr: the same endpoint serves the baseline's older contract, without these.)
        url, every = getattr(chunk, "progress_url", None), getattr(chunk, "progress_every_s", 0)
        if url and every and self.post_progress is not None:
            self._progress_from(job, chunk, len(lines), engine_start, done)
        self.clock.at(done, lambda: self._complete(job, chunk, lines, engine_start, engine_end))

    def _progress_from(
        self, job: SimJob, chunk: ProcessChunkInput, requests: int, engine_start: float, done: float
    ) -> None:
        """Reports every `progress_every_s` while the chunk runs, as the handler posts them."""
        every = float(chunk.progress_every_s or 0)
        at = self.clock.now + every
        while at < done:
            answered = int(min(requests, max(0.0, (at - engine_start) / self.model.request_s)))
            body = {
                "batch_id": chunk.batch_id,
                "chunk_id": chunk.chunk_id,
                "attempt": chunk.attempt,
                "requests": requests,
                "completed": answered,
                "failed": 0,
            }
            self.clock.at(at, functools.partial(self._post, job, str(chunk.progress_url), body))
            at += every

    def _post(self, job: SimJob, url: str, body: dict[str, Any]) -> None:
        if job.status == "IN_PROGRESS" and self.post_progress is not None and body["completed"]:
            self.post_progress(url, body)

    def _finish_ping(self, job: SimJob) -> None:
        if job.status != "IN_PROGRESS":
            return
        job.status, job.completed_at = "COMPLETED", self.clock.now
        job.output = {"worker": {"worker_id": f"w{job.worker}"}, "gpus": []}
        self._release(job)

    def _fail(self, job: SimJob, status: str, error: str) -> None:
        if job.status != "IN_PROGRESS":
            return
        job.status, job.error, job.completed_at = status, error, self.clock.now
        self._release(job)
        self._notify(job)
        if self.on_event is not None:
            self.on_event(job, "end", self.clock.now, self.clock.now)

    def _complete(
        self,
        job: SimJob,
        chunk: ProcessChunkInput,
        lines: list[bytes],
        engine_start: float,
        engine_end: float,
    ) -> None:
        if job.status != "IN_PROGRESS":
            return  # cancelled meanwhile
        if self._rng.random() < self.model.job_failure_rate:
            self._fail(job, "FAILED", "worker exited (simulated crash)")
            return
        outputs, errors, failures = [], [], []
        for raw in lines:
            custom_id = str(orjson.loads(raw)["custom_id"])
            if self._rng.random() < self.model.request_failure_rate:
                failures.append(
                    RequestFailure(custom_id=custom_id, status_code=400, message="simulated")
                )
                errors.append(orjson.dumps({"custom_id": custom_id, "response": None}))
            else:
                outputs.append(
                    orjson.dumps({"custom_id": custom_id, "response": {"status_code": 200}})
                )
        self.write_object(self._key(chunk.output_url), b"".join(o + b"\n" for o in outputs))
        self.write_object(self._key(chunk.error_url), b"".join(e + b"\n" for e in errors))
        engine = engine_end - engine_start
        summary = ChunkSummary(
            batch_id=chunk.batch_id,
            chunk_id=chunk.chunk_id,
            attempt=chunk.attempt,
            endpoint=chunk.endpoint,
            counts=ChunkCounts(total=len(lines), completed=len(outputs), failed=len(failures)),
            usage=ChunkUsage(
                prompt_tokens=50 * len(lines),
                completion_tokens=100 * len(outputs),
                total_tokens=50 * len(lines) + 100 * len(outputs),
            ),
            failures=failures,
            timings=ChunkTimings(
                engine_s=engine,
                engine_busy_s=engine,
                total_s=self.clock.now - float(job.started_at or 0),
                started_at=float(job.started_at or 0),
                finished_at=self.clock.now,
            ),
            worker=WorkerIdentity(
                worker_id=f"w{job.worker}",
                hostname="sim",
                pid=int(job.worker or 0),
                model="sim",
                vllm_version="sim",
                hotbatch_version="sim",
            ),
        )
        job.status, job.completed_at = "COMPLETED", self.clock.now
        job.output = summary.model_dump(mode="json")
        self._release(job)
        self._notify(job)
        if self.on_event is not None:
            self.on_event(job, "end", self.clock.now, self.clock.now)

    def _notify(self, job: SimJob, attempt: int = 0) -> None:
        if not job.webhook:
            return
        url = job.webhook

        def send() -> None:
            if not self.deliver_webhook(url, job.to_dict(self.clock.now)) and attempt < 2:
                self.clock.after(10.0, lambda: self._notify_now(job, attempt + 1))

        self.clock.after(self.model.webhook_delay_s, send)

    def _notify_now(self, job: SimJob, attempt: int) -> None:
        self._notify(job, attempt)

    def _key(self, url: str) -> str:
        parsed = urlparse(url)
        path = parsed.path.lstrip("/")
        if path.startswith(self.bucket + "/"):
            path = path[len(self.bucket) + 1 :]
        return path


def route_clients(endpoints: dict[str, VirtualEndpoint]) -> None:
    """Send every `RunPodClient` call in this process to the virtual endpoint it names."""

    def call(
        self: RunPodClient, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        endpoint = endpoints.get(self.endpoint_id)
        if endpoint is None:
            raise EndpointError(f"{method} {path}: no such endpoint {self.endpoint_id}")
        return endpoint.call(method, path, body)

    def workers_max(self: RunPodClient) -> int | None:
        endpoint = endpoints.get(self.endpoint_id)
        return endpoint.model.workers if endpoint is not None else None

    RunPodClient._call = call  # type: ignore[method-assign]
    RunPodClient.workers_max = workers_max  # type: ignore[method-assign]
