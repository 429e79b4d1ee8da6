"""A chaos soak on the local stack: one batch through real workers while a seeded driver, at
random moments of that batch, kills busy workers (SIGKILL, as an OOM kill would), makes the
RunPod client API answer 5xx or stall, starts ticks in processes of their own and kills them
mid-way, and delivers finished jobs' webhooks again. Then every `custom_id` must be answered
exactly once (in the output or the error file) and the batch's counts must match its files.

`bench/chaos.py` runs it at 20,000+ requests and prints the figures; a small run is a CI test
(`tests/e2e/test_chaos.py`). The tick processes are real ticks (`run_tick` from the stack's
settings passed as `HOTBATCH_*` variables, as a Lambda receives them); the background ticker
of the stack keeps running beside them, as EventBridge would.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from infra.local_control_plane import LOCAL_CREDENTIALS
from infra.wait import wait_for

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

    from infra.stack import LocalStack

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("completed", "failed", "expired", "cancelled")
# One tick in a process of its own, from the environment a Lambda would have.
TICK_SCRIPT = (
    "from control_plane.clients.aws import Aws; from control_plane.settings import Settings; "
    "from control_plane.scheduler.tick import make_context, run_tick; "
    "run_tick(make_context(Aws(Settings())))"
)


@dataclass
class ChaosPlan:
    """How many of each fault to cause during the batch, and how far apart (seconds)."""

    worker_kills: int = 3
    error_bursts: int = 3  # the client API answers 5xx for a few seconds
    stall_bursts: int = 2  # the client API answers seconds late
    tick_kills: int = 3
    duplicate_webhooks: int = 3  # rounds; each delivers up to 5 finished jobs' webhooks again
    gap_s: tuple[float, float] = (1.0, 4.0)
    seed: int = 20261204

    def actions(self) -> list[str]:
        names = {
            "kill_worker": self.worker_kills,
            "error_burst": self.error_bursts,
            "stall_burst": self.stall_bursts,
            "kill_tick": self.tick_kills,
            "duplicate_webhooks": self.duplicate_webhooks,
        }
        return [name for name, count in names.items() for _ in range(count)]


@dataclass
class ChaosReport:
    requests: int
    status: str = ""
    wall_s: float = 0.0
    completed: int = 0  # the batch's request_counts
    failed: int = 0
    output_lines: int = 0
    error_lines: int = 0
    lost: int = 0  # custom_ids in neither file
    duplicated: int = 0  # custom_ids answered more than once
    caused: collections.Counter[str] = field(default_factory=collections.Counter)
    webhooks_redelivered: int = 0
    jobs_retried: int = 0  # by the local endpoint, after a worker died holding the job
    worker_starts: int = 0

    @property
    def counts_exact(self) -> bool:
        return (
            self.completed == self.output_lines
            and self.failed == self.error_lines
            and self.completed + self.failed == self.requests
        )

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "status": self.status,
            "wall_s": round(self.wall_s, 1),
            "completed": self.completed,
            "failed": self.failed,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "counts_exact": self.counts_exact,
            "caused": dict(self.caused),
            "webhooks_redelivered": self.webhooks_redelivered,
            "jobs_retried": self.jobs_retried,
            "worker_starts": self.worker_starts,
        }


def request_lines(requests: int, *, model: str, max_tokens: int) -> bytes:
    """`requests` chat requests with distinct custom_ids and prompts, `max_tokens` each."""
    return b"".join(
        json.dumps(
            {
                "custom_id": f"chaos-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "messages": [{"role": "user", "content": f"count to {i % 97}"}],
                    "max_tokens": max_tokens,
                },
            }
        ).encode()
        + b"\n"
        for i in range(requests)
    )


def tick_env(stack: LocalStack) -> dict[str, str]:
    """The environment a tick Lambda of this stack would have: its settings as variables."""
    assert stack.aws is not None
    env = {**os.environ, **LOCAL_CREDENTIALS, "PYTHONPATH": str(REPO)}
    for name, value in stack.aws.settings.model_dump().items():
        if value is None or value == "":
            continue
        env[f"HOTBATCH_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


@dataclass
class _Driver:
    stack: LocalStack
    plan: ChaosPlan
    report: ChaosReport
    done: threading.Event
    rng: random.Random = field(init=False)
    errors: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.plan.seed)

    def run(self) -> None:
        try:
            actions = self.plan.actions()
            self.rng.shuffle(actions)
            for action in actions:
                if self.done.wait(self.rng.uniform(*self.plan.gap_s)):
                    return
                if getattr(self, action)():
                    self.report.caused[action] += 1
        except BaseException as exc:  # reported by `soak`: a driver that dies proves nothing
            self.errors.append(exc)

    def kill_worker(self) -> bool:
        endpoint = self.stack.endpoint
        assert endpoint is not None and endpoint.pool is not None
        backend, pool = endpoint.backend, endpoint.pool
        assert backend is not None

        def busy() -> list[str]:
            return [w.id for w in list(backend.workers.values()) if w.alive and w.jobs]

        # Until a worker holds a chunk, or the batch has ended (then the fault is not caused).
        wait_for(lambda: busy() or self.done.is_set(), "a busy worker", timeout=600, every=0.1)
        workers = busy()
        if self.done.is_set() or not workers:
            return False
        pool.kill(self.rng.choice(sorted(workers)))
        return True

    def error_burst(self) -> bool:
        assert self.stack.endpoint is not None
        status = self.rng.choice([500, 502, 503])
        self.stack.endpoint.inject_fault(seconds=self.rng.uniform(2.0, 6.0), status=status)
        return True

    def stall_burst(self) -> bool:
        assert self.stack.endpoint is not None
        delay = self.rng.uniform(1.0, 4.0)
        self.stack.endpoint.inject_fault(seconds=self.rng.uniform(3.0, 8.0), delay_s=delay)
        return True

    def kill_tick(self) -> bool:
        """A tick killed mid-way: whatever it claimed or half-wrote, the next ticks finish.

        A sweep that finds little to do ends within a second of its imports, so a kill that
        came too late is tried again sooner, until one lands."""
        latest_s = 3.0
        for _ in range(6):
            process = subprocess.Popen(
                [sys.executable, "-c", TICK_SCRIPT],
                env=tick_env(self.stack),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Imports take ~1 s; the kill lands anywhere from the imports to the tick's end.
            time.sleep(self.rng.uniform(min(0.8, latest_s / 2), latest_s))
            killed = process.poll() is None
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            process.wait()
            if killed or self.done.is_set():
                return killed
            latest_s *= 0.7
        return False

    def duplicate_webhooks(self) -> bool:
        """Deliver some finished jobs' webhooks again, as RunPod does when it thinks a delivery
        failed: the same body to the same signed URL."""
        assert self.stack.endpoint is not None and self.stack.endpoint.backend is not None
        backend = self.stack.endpoint.backend
        wait_for(
            lambda: _finished_jobs(backend.jobs) or self.done.is_set(),
            "a finished job",
            timeout=600,
            every=0.2,
        )
        finished = _finished_jobs(backend.jobs)
        sent = 0
        for url, body in self.rng.sample(finished, min(5, len(finished))):
            response = httpx.post(url, json=body, timeout=30)
            sent += response.status_code == 200
        self.report.webhooks_redelivered += sent
        return sent > 0


def _finished_jobs(jobs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    while True:
        try:  # the endpoint's loop adds jobs meanwhile
            snapshot = list(jobs.values())
            break
        except RuntimeError:
            continue
    return [
        (job.webhook, job.to_dict())
        for job in snapshot
        if job.webhook and job.status in ("COMPLETED", "FAILED") and job.webhook_sent
    ]


def chat_stack(workdir: Path, *, chunk_size: int, max_workers: int = 2) -> LocalStack:
    """The stack `hotbatch local run` starts (real workers, the tiny chat model), with up to
    `max_workers` chat workers and no embedding endpoint; not started."""
    from infra.local_stack import LocalOptions, planned

    options = LocalOptions(
        workers=1, max_workers=max_workers, chunk_size=chunk_size, workdir=workdir.resolve()
    )
    stack, _ = planned(options)
    stack.config.embed_model, stack.config.embed_pool = None, None
    return stack


def wait_warm(stack: LocalStack, timeout_s: float = 900.0) -> None:
    """Until a worker has loaded its engine, so the batch starts on a warm endpoint."""
    assert stack.endpoint is not None and stack.endpoint.backend is not None
    backend = stack.endpoint.backend
    wait_for(lambda: backend.health()["workers"]["idle"] >= 1, "a warm worker", timeout=timeout_s)


def soak(
    stack: LocalStack,
    client: OpenAI,
    *,
    requests: int,
    plan: ChaosPlan,
    model: str = "tiny",
    max_tokens: int = 8,
    timeout_s: float = 3600.0,
) -> ChaosReport:
    """Run one batch of `requests` through the started `stack` under `plan`; the report."""
    report = ChaosReport(requests=requests)
    content = request_lines(requests, model=model, max_tokens=max_tokens)
    started = time.monotonic()
    file = client.files.create(file=("chaos.jsonl", content), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = threading.Event()
    driver = _Driver(stack, plan, report, done)
    thread = threading.Thread(target=driver.run, name="chaos", daemon=True)
    thread.start()
    try:
        final = _wait_final(client, batch, timeout_s)
    finally:
        done.set()
        thread.join(timeout=180)
    if driver.errors:
        raise driver.errors[0]
    report.wall_s = time.monotonic() - started
    report.status = final.status
    counts = final.request_counts
    report.completed, report.failed = (counts.completed, counts.failed) if counts else (0, 0)
    _check_answers(client, final, report)
    assert stack.endpoint is not None and stack.endpoint.backend is not None
    assert stack.endpoint.pool is not None
    report.jobs_retried = int(stack.endpoint.backend.counters["retried"])
    report.worker_starts = len(stack.endpoint.pool.cold_starts_s)
    return report


def _wait_final(client: OpenAI, batch: Batch, timeout_s: float) -> Batch:
    def ended() -> Batch | None:
        current = client.batches.retrieve(batch.id)
        return current if current.status in TERMINAL else None

    return wait_for(ended, f"batch {batch.id} to end", timeout=timeout_s, every=1.0)


def _check_answers(client: OpenAI, batch: Batch, report: ChaosReport) -> None:
    answered: collections.Counter[str] = collections.Counter()
    for file_id, attribute in ((batch.output_file_id, "output"), (batch.error_file_id, "error")):
        if file_id is None:
            continue
        lines = client.files.content(file_id).content.splitlines()
        setattr(report, f"{attribute}_lines", len(lines))
        answered.update(json.loads(line)["custom_id"] for line in lines)
    expected = {f"chaos-{i}" for i in range(report.requests)}
    report.lost = len(expected - set(answered))
    report.duplicated = sum(1 for count in answered.values() if count > 1)
    report.duplicated += sum(1 for custom_id in answered if custom_id not in expected)
