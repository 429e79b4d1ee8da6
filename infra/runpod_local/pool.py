"""Real worker processes for the local endpoint, scaled the way RunPod scales a serverless endpoint.

Each worker is `python -m handler` (or any runpod SDK worker command) pointed at the endpoint's
worker API. The pool starts workers while jobs wait (up to `max_workers`), keeps `min_workers`
warm, retires a worker idle longer than `idle_timeout_s`, and notices a worker that died so its
job is retried or failed by the backend, never left IN_PROGRESS. A worker that crashes shows as
`unhealthy` and the next start waits (exponential backoff) until one starts again, as on RunPod;
one that exits before its engine loaded is kept in `start_failures` with its own error lines.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from infra import cpu_share
from infra.runpod_local.crashes import RestartBackoff, StartFailure, error_lines, read_log
from infra.runpod_local.models import EndpointBackend

log = logging.getLogger("handler.runpod_local")


@dataclass
class PoolConfig:
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "handler"])
    min_workers: int = 0
    max_workers: int = 3  # RunPod's default
    idle_timeout_s: float = 5.0  # RunPod's default
    cold_start_delay_s: float = 0.0  # extra, on top of the engine load, to study keep-hot
    stop_grace_s: float = 30.0
    restart_backoff_s: float = 1.0  # after a crash; doubles per crash until a worker starts
    restart_backoff_max_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    # Worker ids (RUNPOD_POD_ID, log and directory names): distinct per pool sharing a workdir.
    id_prefix: str = "local-worker"
    # Each worker runs in its own directory: the runpod SDK keeps its jobs-in-progress state in
    # `.runpod_jobs.pkl` in the working directory, so workers sharing one would see each other's
    # jobs (one killed mid-job would block every later worker). On RunPod each has a container.
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="runpod-local-")))
    # The CPUs a worker may run on whatever this process is confined to (`infra.cpu_share`);
    # None: this process's.
    cpus: frozenset[int] | None = None


@dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    spawned_at: float
    log_path: Path | None = None
    log_offset: int = 0  # logs are appended to: this run's lines start here
    stopping_since: float | None = None


@dataclass
class WorkerPool:
    backend: EndpointBackend
    config: PoolConfig
    worker_urls: dict[str, str]
    processes: dict[str, _Process] = field(default_factory=dict)
    # Workers that exited before their engine loaded: how many, and the last few in detail.
    failed_starts: int = 0
    start_failures: collections.deque[StartFailure] = field(
        default_factory=lambda: collections.deque(maxlen=10)
    )
    backoff: RestartBackoff = field(init=False)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.backoff = RestartBackoff(
            base_s=self.config.restart_backoff_s, max_s=self.config.restart_backoff_max_s
        )

    @property
    def cold_starts_s(self) -> list[float]:
        """Seconds from each worker's start to its first job-take (engine loaded), in order."""
        return [
            worker.ready_at - worker.started_at
            for worker in self.backend.workers.values()
            if worker.ready_at is not None
        ]

    async def reconcile(self) -> None:
        """One scaling step; called by the endpoint's housekeeping loop."""
        await self._reap()
        self._clear_crashes()
        self._retire_idle()
        self._escalate_stops()
        if not self.backoff.allows_start(time.monotonic()):
            return
        for _ in range(self._wanted() - self._active()):
            self.spawn()

    def spawn(self) -> str:
        worker_id = f"{self.config.id_prefix}-{next(self._ids)}"
        command = list(self.config.command)
        if self.config.cold_start_delay_s > 0:
            command = ["/bin/sh", "-c", f'sleep {self.config.cold_start_delay_s}; exec "$0" "$@"']
            command += self.config.command
        if self.config.cpus is not None:
            command = cpu_share.spread(command, self.config.cpus)
        env = {
            **os.environ,
            **self.config.env,
            **self.worker_urls,
            "RUNPOD_POD_ID": worker_id,
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        }
        output: int | IO[bytes] = subprocess.DEVNULL
        log_path, log_offset = None, 0
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.config.log_dir / f"{worker_id}.log"
            output = open(log_path, "ab")  # closed below, once the child has it
            log_offset = output.tell()
        cwd = self.config.work_dir / worker_id
        cwd.mkdir(parents=True, exist_ok=True)
        popen = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if not isinstance(output, int):
            output.close()  # the child has its own descriptor
        self.processes[worker_id] = _Process(popen, time.monotonic(), log_path, log_offset)
        self.backend.worker(worker_id)  # known as initializing until its first job-take
        log.info("worker started", extra={"worker_id": worker_id, "pid": popen.pid})
        return worker_id

    def terminate(self, worker_id: str) -> None:
        """Stop a worker gracefully (SIGTERM to its process group, SIGKILL after the grace)."""
        process = self.processes.get(worker_id)
        if process is None or process.stopping_since is not None:
            return
        worker = self.backend.workers.get(worker_id)
        if worker is not None:
            worker.alive = False
        process.stopping_since = time.monotonic()
        _signal_group(process.popen, signal.SIGTERM)

    def kill(self, worker_id: str) -> None:
        """Kill a worker at once, as a crash or an OOM kill would."""
        process = self.processes.get(worker_id)
        if process is not None:
            _signal_group(process.popen, signal.SIGKILL)

    def kill_all(self) -> None:
        """Kill every worker's process group at once, from any thread: the last resort of a
        stop that overran (`close` is the graceful way)."""
        for process in list(self.processes.values()):
            _signal_group(process.popen, signal.SIGKILL)

    def close(self) -> None:
        for worker_id in list(self.processes):
            self.terminate(worker_id)
        deadline = time.monotonic() + self.config.stop_grace_s
        for process in list(self.processes.values()):
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process.popen, signal.SIGKILL)
                process.popen.wait()
        # Children of workers (vLLM's engine core) share the group; make sure none survive.
        for process in list(self.processes.values()):
            _signal_group(process.popen, signal.SIGKILL)
        self.processes.clear()

    # --- scaling ---

    def _wanted(self) -> int:
        waiting = sum(
            1
            for job_id in self.backend.queue
            if (job := self.backend.jobs.get(job_id)) is not None
            and job.status == "IN_QUEUE"
            and not job.low_priority  # RunPod: low-priority jobs do not trigger scaling
        )
        busy = sum(1 for worker_id in self.processes if self._busy(worker_id))
        return max(self.config.min_workers, min(self.config.max_workers, busy + waiting))

    def _active(self) -> int:
        return sum(1 for process in self.processes.values() if process.stopping_since is None)

    def _busy(self, worker_id: str) -> bool:
        worker = self.backend.workers.get(worker_id)
        return worker is not None and bool(worker.jobs)

    def _retire_idle(self) -> None:
        now = time.monotonic()
        for worker_id, worker in list(self.backend.workers.items()):
            process = self.processes.get(worker_id)
            if process is None or process.stopping_since is not None:
                continue
            if not worker.alive:  # asked to stop (refresh_worker) by its last result
                self.terminate(worker_id)
            elif (
                worker.state == "idle"
                and now - worker.idle_since > self.config.idle_timeout_s
                and self._active() > self.config.min_workers
            ):
                log.info("worker idle timeout", extra={"worker_id": worker_id})
                self.terminate(worker_id)

    def _escalate_stops(self) -> None:
        now = time.monotonic()
        for process in self.processes.values():
            if process.stopping_since is not None and now - process.stopping_since > (
                self.config.stop_grace_s
            ):
                _signal_group(process.popen, signal.SIGKILL)

    async def _reap(self) -> None:
        for worker_id, process in list(self.processes.items()):
            code = process.popen.poll()
            if code is None:
                continue
            _signal_group(process.popen, signal.SIGKILL)  # orphans of a crashed worker
            del self.processes[worker_id]
            retired = process.stopping_since is not None
            ready = self._ready_at(worker_id) is not None
            await self.backend.worker_died(worker_id, retired=retired)
            if not retired:
                self._crashed(worker_id, process, code, ready=ready)

    # --- crashes ---

    def _crashed(self, worker_id: str, process: _Process, code: int, *, ready: bool) -> None:
        delay = self.backoff.crashed(time.monotonic())
        self._limit_unhealthy()
        extra = {"worker_id": worker_id, "code": code, "restart_in_s": delay}
        if ready:
            log.warning("worker exited", extra=extra)
            return
        text = read_log(process.log_path, process.log_offset) if process.log_path else ""
        failure = StartFailure(worker_id, code, process.log_path, error_lines(text))
        self.start_failures.append(failure)
        self.failed_starts += 1
        log.error("worker failed to start", extra={**extra, "error": failure.lines[-1:]})

    def _clear_crashes(self) -> None:
        """A worker ready after the last crash shows the endpoint can start workers again: the
        backoff resets and the crashed workers no longer count as unhealthy."""
        ready = [
            at for worker_id in self.processes if (at := self._ready_at(worker_id)) is not None
        ]
        if ready and self.backoff.started(max(ready)):
            for worker in self.backend.workers.values():
                worker.crashed = False
            log.info("worker started after crashes; unhealthy cleared")

    def _limit_unhealthy(self) -> None:
        # RunPod shows at most one unhealthy worker per slot, not one per restart of a loop.
        crashed = sorted(
            (w for w in self.backend.workers.values() if w.crashed), key=lambda w: w.started_at
        )
        for worker in crashed[: max(0, len(crashed) - self.config.max_workers)]:
            worker.crashed = False

    def _ready_at(self, worker_id: str) -> float | None:
        worker = self.backend.workers.get(worker_id)
        return worker.ready_at if worker is not None else None


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(popen.pid, sig)
    except ProcessLookupError:
        pass
