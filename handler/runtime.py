"""The worker's long-lived state: one engine on its own event loop thread, loaded before jobs.

The runpod SDK owns the main event loop and only starts it once it takes jobs, yet the engine
must be loaded before that (RunPod marks a worker unhealthy after a 7-minute cold start, and a
job should never pay for it). So the engine lives on a dedicated loop in a thread: it starts
at process start, and each job crosses over once (`submit`), which costs microseconds against
a chunk's seconds. Cancelling the job's task cancels the work on the engine loop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp

from handler import __version__, health
from handler.chunk import process_chunk
from handler.contract import ChunkProgress, ChunkSummary, ProcessChunkInput, WorkerIdentity
from handler.pipeline import EngineGate, RequestRunner
from handler.settings import WorkerSettings
from handler.transfer import posting_progress

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long a cancelled chunk is given to unwind on the engine loop (abort its requests, close
# its lane) before its job is let go anyway.
UNWIND_S = 30.0


class ServedEngine(RequestRunner, Protocol):
    """A loaded engine: `handler.engine.Engine`, or a stand-in in fast tests."""

    served_model_name: str
    max_model_len: int
    vllm_version: str
    load_seconds: float


EngineFactory = Callable[[WorkerSettings], contextlib.AbstractAsyncContextManager[Any]]


@dataclass
class Runtime:
    settings: WorkerSettings
    engine: ServedEngine
    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession
    gate: EngineGate
    jobs_in_progress: int = 0
    chunks_done: int = 0
    last_error: str | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    @property
    def identity(self) -> WorkerIdentity:
        return WorkerIdentity(
            worker_id=self.settings.worker_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            model=self.engine.served_model_name,
            vllm_version=self.engine.vllm_version,
            hotbatch_version=__version__,
        )

    async def submit(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the engine loop and await its result from this one. Cancelled here,
        it is cancelled there and awaited until it has unwound (at most `UNWIND_S`): a chunk
        holds its lane of the gate until then, and the runpod SDK counts the job's slot free
        as soon as this returns, so returning earlier let a worker of MAX_CONCURRENCY 2 open
        a third lane beside a cancelled chunk that was still letting go."""
        caller = asyncio.get_running_loop()
        ended = asyncio.Event()

        async def to_the_end() -> T:
            try:
                return await coro
            finally:
                caller.call_soon_threadsafe(ended.set)

        running = asyncio.run_coroutine_threadsafe(to_the_end(), self.loop)
        try:
            return await asyncio.wrap_future(running)
        except asyncio.CancelledError:
            await _unwound(ended, UNWIND_S)
            raise

    async def process(
        self, job: ProcessChunkInput, progress: Callable[[ChunkProgress], None] | None = None
    ) -> ChunkSummary:
        self.jobs_in_progress += 1
        interval = self.settings.progress_interval_s
        if interval > 0 and job.progress_every_s:
            # The control plane spaces reports out so that a large fleet's stay few.
            interval = max(interval, float(job.progress_every_s))
        if job.progress_url:
            progress = posting_progress(progress, job.progress_url, self.session)
        try:
            summary = await self.submit(
                process_chunk(
                    job,
                    gate=self.gate,
                    session=self.session,
                    worker=self.identity,
                    transfer_retries=self.settings.transfer_retries,
                    progress=progress,
                    progress_interval_s=interval,
                    gpu_read=health.gpu_stats,
                )
            )
            self.chunks_done += 1
            return summary
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.jobs_in_progress -= 1

    def health(self) -> health.HealthReport:
        gpus, gpu_error = health.gpu_stats()
        engine = self.engine
        loops = [self.loop]
        with contextlib.suppress(RuntimeError):
            loops.append(asyncio.get_running_loop())
        return health.HealthReport(
            status="dead" if getattr(engine, "dead", False) else "ok",
            worker_id=self.settings.worker_id,
            uptime_s=health.process_uptime(),
            gpus=gpus,
            gpu_error=gpu_error,
            engine=health.engine_stats(
                health.metric_totals(),
                model=engine.served_model_name,
                max_model_len=engine.max_model_len,
                vllm_version=engine.vllm_version,
                cold_start_s=engine.load_seconds,
            ),
            system=health.system_stats(loops),
            jobs_in_progress=self.jobs_in_progress,
            chunks_done=self.chunks_done,
            last_error=self.last_error,
            engine_busy_s=round(self.gate.busy.seconds(), 3),
            requests_in_flight=self.gate.busy.in_flight,
        )

    def stop(self, timeout: float = 60.0) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)


def start_runtime(settings: WorkerSettings, engine_factory: EngineFactory | None = None) -> Runtime:
    """Start the engine loop thread, load the engine, and return once it answers (or raise)."""
    if engine_factory is None:
        from handler.engine import open_engine

        engine_factory = open_engine
    ready: dict[str, Any] = {}
    loaded = threading.Event()

    async def serve() -> None:
        stop = asyncio.Event()
        try:
            async with _resources(settings, engine_factory) as (engine, session):
                ready["runtime"] = Runtime(
                    settings=settings,
                    engine=engine,
                    loop=asyncio.get_running_loop(),
                    session=session,
                    gate=EngineGate(engine, settings.max_requests_in_flight),
                    _stop=stop,
                )
                _mark_ready(settings.hotbatch_ready_file, True)
                loaded.set()
                monitor = _start_monitor(ready["runtime"])
                await stop.wait()
                if monitor is not None:
                    monitor.cancel()
                _mark_ready(settings.hotbatch_ready_file, False)
        except Exception as exc:  # handed to the starting thread, which raises it
            ready["error"] = exc
            if loaded.is_set():
                log.exception("engine loop ended with an error")
        finally:
            loaded.set()

    thread = threading.Thread(
        target=lambda: asyncio.run(serve()), name="hotbatch-engine", daemon=True
    )
    thread.start()
    loaded.wait()
    if "error" in ready:
        raise RuntimeError(f"engine failed to start: {ready['error']}") from ready["error"]
    runtime: Runtime = ready["runtime"]
    runtime._thread = thread
    return runtime


async def _unwound(ended: asyncio.Event, timeout: float) -> None:
    """Wait for `ended` (at most `timeout`), through every further cancel. A platform sends a
    stop again until the job is gone (the local endpoint every second; RunPod until the next
    heartbeat), and a second cancel that cut this wait short let the SDK take a third chunk
    beside one still letting go of its lane: seen on a loaded machine, 3 chunks in a worker
    of MAX_CONCURRENCY 2."""
    deadline = time.monotonic() + timeout
    while not ended.is_set() and (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(ended.wait(), left)


@contextlib.asynccontextmanager
async def _resources(
    settings: WorkerSettings, engine_factory: EngineFactory
) -> AsyncIterator[tuple[Any, aiohttp.ClientSession]]:
    timeout = aiohttp.ClientTimeout(total=settings.transfer_timeout_s)
    async with engine_factory(settings) as engine:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            yield engine, session


def _mark_ready(path: str | None, ready: bool) -> None:
    if path is None:
        return
    if ready:
        Path(path).write_text(f"{os.getpid()} {time.time():.0f}\n")
    else:
        Path(path).unlink(missing_ok=True)


def _start_monitor(runtime: Runtime) -> asyncio.Task[None] | None:
    if not runtime.settings.enable_vllm_monitor:
        return None

    async def monitor() -> None:
        while True:
            await asyncio.sleep(runtime.settings.vllm_monitor_interval)
            log.info("vllm monitor", extra={"health": runtime.health().model_dump()})

    return asyncio.get_running_loop().create_task(monitor())
