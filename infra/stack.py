"""The whole local stack as one object: moto's server, the control plane under uvicorn, the
local RunPod endpoint with its workers, the sweep on a background thread (what EventBridge
Scheduler runs in AWS) and the event queues drained on one thread each (what SQS's event-source
mappings do: the dispatcher and the batch handler).

`hotbatch local up` runs it in the foreground; the end-to-end tests start one per module.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from control_plane.api import create_app
from control_plane.clients import queues
from control_plane.clients.aws import Aws
from control_plane.scheduler.sweep import run_sweep
from control_plane.scheduler.tick import drain, finish, make_context, run_tick
from control_plane.settings import Settings
from control_plane.store import apikeys
from infra import cpu_share
from infra.local_control_plane import LOCAL_CREDENTIALS, LocalApi, LocalAws
from infra.runpod_local import EndpointConfig, LocalEndpoint, PoolConfig

log = logging.getLogger("handler.local")
EMBED_ENDPOINT_ID = "local-embed"
# How often a queue thread looks at its queue when nothing woke it. An event queued in this
# process is followed by a kick, which wakes the threads at once, so the look only catches what
# SQS hands back after its visibility timeout (`queues.LOCAL_VISIBILITY_S`). Each look is a moto
# call on the cores the workers' engines run on: at 0.25 s the two threads took ~4 % of a core.
EVENT_POLL_S = 1.0
QUEUES = (queues.DISPATCH, queues.BATCHES)
SLOW_SWEEP_S = 5.0
# All background threads together get this long to finish what they hold at a stop.
THREADS_STOP_S = 30.0
SLOW_STOP_S = 10.0


@dataclass
class StackConfig:
    api_port: int = 0
    aws_port: int = 0
    runpod_port: int = 0
    api_key: str | None = None
    tenant: str = "local"
    pool: PoolConfig = field(default_factory=PoolConfig)
    runpod_api_key: str = "local-runpod-key"
    # Seconds between background sweeps (the queues are drained as events arrive); None: the
    # caller ticks (`LocalStack.tick`: a sweep, then the queues drained). AWS sweeps once a
    # minute; a local sweep is some 40 moto calls, ~0.14 s of CPU taken from the workers'
    # engines on a small machine, so every second cost a local batch ~14 % of a core. Well
    # under the local workers' idle timeout (5 s), which keep-hot's pings have to beat.
    tick_interval_s: float | None = 2.0
    webhooks: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    # Served models (HOTBATCH_MODELS): `chat_model` on the endpoint of `pool`, `embed_model` on
    # a second endpoint (`EMBED_ENDPOINT_ID`) with `embed_pool`'s workers. No chat model: no
    # map, one endpoint serves any model, as a deployment without HOTBATCH_MODELS.
    chat_model: str | None = None
    embed_model: str | None = None
    embed_pool: PoolConfig | None = None
    # Confine this process to the core(s) vLLM's CPU build leaves to frontends while the stack
    # runs, so the control plane never stops a bound engine (`infra.cpu_share`); the workers
    # keep every CPU. For a process that is the stack (`hotbatch local up|run`): it pins the
    # caller's threads too.
    keep_off_engine_cores: bool = False


@dataclass
class LocalStack:
    config: StackConfig
    local_aws: LocalAws | None = None
    api: LocalApi | None = None
    endpoint: LocalEndpoint | None = None
    aws: Aws | None = None
    api_key: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    # One wake-up and one lock per queue: in AWS the dispatcher and the batch handler are two
    # functions that run side by side, so a long merge never holds up a dispatch.
    _kicked: dict[str, threading.Event] = field(
        default_factory=lambda: {which: threading.Event() for which in QUEUES}
    )
    _threads: list[threading.Thread] = field(default_factory=list)
    _tick_lock: threading.Lock = field(default_factory=threading.Lock)
    _queue_locks: dict[str, threading.Lock] = field(
        default_factory=lambda: {which: threading.Lock() for which in QUEUES}
    )
    _cpus: frozenset[int] | None = None  # this process's CPUs before the stack pinned it

    def start(self) -> LocalStack:
        if self.config.keep_off_engine_cores:
            self._keep_off_engine_cores()
        config = self.config
        self.local_aws = LocalAws(port=config.aws_port).start()
        self.endpoint = LocalEndpoint(
            config=EndpointConfig(api_key=config.runpod_api_key),
            pool_config=config.pool,
            port=config.runpod_port,
            also=self._more_endpoints(),
        )
        self.api = LocalApi(app=None, port=config.api_port)
        self.api.reserve_port()
        self.endpoint.reserve_port()
        settings = Settings(
            table_name=self.local_aws.table_name,
            bucket_name=self.local_aws.bucket_name,
            aws_endpoint_url=self.local_aws.url,
            split_mode="inline",
            runpod_base_url=self.endpoint.client_base_url,
            runpod_rest_url=self.endpoint.rest_url,
            runpod_endpoint_id=self.endpoint.config.endpoint_id,
            runpod_api_key=config.runpod_api_key,
            public_url=self.api.url if config.webhooks else "",
            webhook_secret_value=secrets.token_hex(16) if config.webhooks else "",
            # Event webhooks to receivers on this machine (http, 127.0.0.1): local only.
            **{
                "event_webhook_private_urls": True,
                "models": self._models(),
                **config.settings,
            },
        )
        self.aws = Aws(settings)
        self.api_key = apikeys.create_key(
            self.aws.table, tenant_id=config.tenant, key=config.api_key
        )
        self.api.app = create_app(aws=self.aws, kick=self.kick)
        self.api.start()
        self.endpoint.start()
        if config.tick_interval_s is not None:
            threads = [threading.Thread(target=self._sweep_loop, name="sweep", daemon=True)]
            threads += [
                threading.Thread(target=self._event_loop, args=(which,), name=which, daemon=True)
                for which in QUEUES
            ]
            for thread in threads:
                thread.start()
            self._threads.extend(threads)
        return self

    def _keep_off_engine_cores(self) -> None:
        everything = cpu_share.allowed()
        config = self.config
        frontends = cpu_share.reserved(everything, {**os.environ, **config.pool.env})
        if not cpu_share.pin_process(frontends):
            return
        self._cpus = everything
        log.info(
            "the stack keeps to CPUs %s, its workers get %s", sorted(frontends), sorted(everything)
        )
        config.pool = replace(config.pool, cpus=everything)
        if config.embed_pool is not None:
            config.embed_pool = replace(config.embed_pool, cpus=everything)

    def _more_endpoints(self) -> list[tuple[EndpointConfig, PoolConfig | None]]:
        config = self.config
        if config.embed_model is None:
            return []
        endpoint = EndpointConfig(endpoint_id=EMBED_ENDPOINT_ID, api_key=config.runpod_api_key)
        return [(endpoint, config.embed_pool)]

    def _models(self) -> dict[str, dict[str, str]]:
        config = self.config
        models: dict[str, dict[str, str]] = {}
        if config.chat_model is not None:
            assert self.endpoint is not None
            chat_endpoint = self.endpoint.config.endpoint_id
            models[config.chat_model] = {"endpoint_id": chat_endpoint, "kind": "generate"}
        if config.embed_model is not None:
            models[config.embed_model] = {"endpoint_id": EMBED_ENDPOINT_ID, "kind": "embed"}
        return models

    def tick(self, *, kicked: bool = False) -> dict[str, Any]:
        """A sweep and every queued event handled, now (serialised with the background
        threads, as the tests expect); `kicked` leaves keep-hot out."""
        assert self.aws is not None
        with self._everything():
            return run_tick(make_context(self.aws), kicked=kicked)

    @contextlib.contextmanager
    def _everything(self) -> Iterator[None]:
        """Nothing else moves while a manual tick runs: the tests read what it did."""
        with contextlib.ExitStack() as held:
            held.enter_context(self._tick_lock)
            for which in QUEUES:
                held.enter_context(self._queue_locks[which])
            yield

    def kick(self, reason: str) -> None:
        """An event was queued: the queue threads drain their queues now."""
        for event in self._kicked.values():
            event.set()

    def _sweep_loop(self) -> None:
        interval = self.config.tick_interval_s or 1.0
        while not self._stop.wait(interval):
            try:
                assert self.aws is not None
                started = time.monotonic()
                # Beside the queue threads, as EventBridge's sweep runs beside the dispatcher
                # and the batch handler in AWS; only a manual `tick` waits for it.
                with self._tick_lock:
                    ctx = make_context(self.aws)
                    run_sweep(ctx)
                    finish(ctx)
                self.kick("sweep")  # the sweep queued top-ups and batch events
                took = time.monotonic() - started
                if took > SLOW_SWEEP_S:
                    log.warning("slow sweep: %.1f s", took)
            except Exception:
                # The next sweep retries whatever failed; a crash must not stop the loop.
                log.exception("sweep failed")

    def _event_loop(self, which: str) -> None:
        kicked = self._kicked[which]
        while not self._stop.is_set():
            kicked.wait(EVENT_POLL_S)
            kicked.clear()
            if self._stop.is_set():
                break
            try:
                assert self.aws is not None
                with self._queue_locks[which]:
                    ctx = make_context(self.aws)
                    drained = drain(ctx, rounds=1, only=(which,))
                    finish(ctx)
                if any(drained.values()):
                    self.kick(which)  # more may be queued, here or for the other queue
            except Exception:
                # The messages come back after their visibility timeout, as SQS retries them.
                log.exception("event handling failed")

    def exports(self) -> dict[str, str]:
        assert self.api and self.endpoint and self.local_aws
        return {
            "HOTBATCH_API_URL": f"{self.api.url}/v1",
            "HOTBATCH_API_KEY": self.api_key,
            # The openai SDK reads these two, so `OpenAI()` talks to the local stack as it is.
            "OPENAI_BASE_URL": f"{self.api.url}/v1",
            "OPENAI_API_KEY": self.api_key,
            "RUNPOD_ENDPOINT_BASE_URL": self.endpoint.client_base_url,
            "RUNPOD_ENDPOINT_ID": self.endpoint.config.endpoint_id,
            "RUNPOD_API_KEY": self.endpoint.api_key,
            "AWS_ENDPOINT_URL": self.local_aws.url,
            "HOTBATCH_AWS_ENDPOINT_URL": self.local_aws.url,
            "HOTBATCH_TABLE_NAME": self.local_aws.table_name,
            "HOTBATCH_BUCKET_NAME": self.local_aws.bucket_name,
            **LOCAL_CREDENTIALS,
        }

    def stop(self) -> None:
        """Stop everything, in the order that loses nothing: the threads that send work (one
        shared deadline, not one each), the endpoint and its workers, the API, moto. Each part's
        time is logged, and whatever is still running after is named with its stack, so a stop
        that overruns says where."""
        self._stop.set()
        self.kick("stop")
        with _timed("the sweep and queue threads"):
            deadline = time.monotonic() + THREADS_STOP_S
            for thread in self._threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.endpoint is not None:
            with _timed("the RunPod endpoint and its workers"):
                self.endpoint.stop()
        if self.api is not None:
            with _timed("the API"):
                self.api.stop()
        if self.local_aws is not None:
            with _timed("moto"):
                self.local_aws.stop()
        if self._cpus is not None:
            cpu_share.pin_process(self._cpus)
        _log_lingering_threads()


@contextlib.contextmanager
def _timed(part: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    took = time.monotonic() - started
    (log.warning if took > SLOW_STOP_S else log.info)("stopped %s in %.1f s", part, took)


def _log_lingering_threads() -> None:
    """Log the threads still alive after a stop, each with where it is: a non-daemon one keeps
    the process from exiting, so this is where a stop that hangs shows its cause."""
    frames = sys._current_frames()
    lingering = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.current_thread() and thread.is_alive()
    ]
    for thread in lingering:
        frame = frames.get(thread.ident or -1)
        where = "".join(traceback.format_stack(frame, limit=4)) if frame is not None else "?"
        (log.info if thread.daemon else log.warning)(
            "still running after the stop: %s (daemon=%s)\n%s", thread.name, thread.daemon, where
        )


def worker_pool(
    *,
    workers: int,
    max_workers: int | None = None,
    idle_timeout_s: float = 5.0,
    cold_start_delay_s: float = 0.0,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    workdir: Path | None = None,
) -> PoolConfig:
    pool = PoolConfig(
        min_workers=workers,
        max_workers=max(workers, max_workers or workers, 1),
        idle_timeout_s=idle_timeout_s,
        cold_start_delay_s=cold_start_delay_s,
        env=env or {},
    )
    if command is not None:
        pool.command = command
    if workdir is not None:
        pool.log_dir = (workdir / "logs").resolve()
        pool.work_dir = (workdir / "workers").resolve()
    return pool
