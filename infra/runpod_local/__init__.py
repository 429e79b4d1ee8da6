"""A local RunPod serverless endpoint: RunPod's client API and worker API, plus a worker pool.

endpoint = LocalEndpoint(pool=PoolConfig(max_workers=2)).start()
runpod.endpoint_url_base = endpoint.client_base_url      # ends in /v2
runpod.Endpoint("local", api_key=endpoint.api_key).run_sync({"action": "health"})
endpoint.stop()

`also` serves more endpoints from the same server (each with its id, API key, worker token and
pool), as one RunPod account holds several: `backends` and `pools` hold every endpoint's, by id.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from infra.runpod_local.models import EndpointBackend
from infra.runpod_local.pool import PoolConfig, WorkerPool
from infra.runpod_local.server import FAULTS, EndpointConfig, create_app

__all__ = ["EndpointConfig", "LocalEndpoint", "PoolConfig"]


@dataclass
class LocalEndpoint:
    """The endpoint served from a background thread with its own event loop (like moto's
    ThreadedMotoServer), so tests and `hotbatch local up` can drive it from anywhere."""

    config: EndpointConfig = field(default_factory=EndpointConfig)
    pool_config: PoolConfig | None = None
    port: int = 0
    also: list[tuple[EndpointConfig, PoolConfig | None]] = field(default_factory=list)
    backend: EndpointBackend | None = None
    pool: WorkerPool | None = None
    backends: dict[str, EndpointBackend] = field(default_factory=dict)
    pools: dict[str, WorkerPool] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _faults_app: web.Application | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_base_url(self) -> str:
        """What `RUNPOD_ENDPOINT_BASE_URL` / `runpod.endpoint_url_base` must be."""
        return f"{self.base_url}/v2"

    @property
    def api_key(self) -> str:
        return self.config.api_key

    def worker_urls(self, config: EndpointConfig | None = None) -> dict[str, str]:
        """The RUNPOD_WEBHOOK_* values a runpod SDK worker needs to serve this endpoint (or
        `config`'s, one of `also`)."""
        config = config or self.config
        root = f"{self.client_base_url}/{config.endpoint_id}"
        token = f"token={config.worker_token}"
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{root}/job-take/$ID?{token}",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{root}/job-done/$RUNPOD_POD_ID/$ID?{token}",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{root}/job-stream/$RUNPOD_POD_ID/$ID?{token}",
            "RUNPOD_WEBHOOK_PING": f"{root}/ping/$RUNPOD_POD_ID?{token}",
            "RUNPOD_AI_API_KEY": config.worker_token,
        }

    def reserve_port(self) -> int:
        """Pick the port now (when it is 0), so the URLs are known before the start."""
        if self.port == 0:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        return self.port

    def start(self) -> LocalEndpoint:
        self.reserve_port()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # handed to start(), which raises it
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=serve, name="runpod-local", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise RuntimeError(f"local RunPod endpoint failed to start: {failure[0]}")
        return self

    async def _open(self) -> None:
        endpoints = [(self.config, self.pool_config), *self.also]
        apps = [
            self._endpoint_app(config, pool, mounted=bool(self.also)) for config, pool in endpoints
        ]
        self.backend = self.backends[self.config.endpoint_id]
        self.pool = self.pools.get(self.config.endpoint_id)
        app = apps[0]
        if self.also:
            # One server, one sub-application per endpoint at its own prefix.
            app = web.Application()
            for (config, _), sub in zip(endpoints, apps, strict=True):
                app.add_subapp(f"/v2/{config.endpoint_id}", sub)
        self._faults_app = apps[0]
        # RunPod's REST API, as far as the control plane reads it: an endpoint's workersMax.
        app.router.add_get("/rest/v1/endpoints/{endpoint_id}", self._endpoint_config)
        # Workers hold long polls (job-take, stop signals) open for seconds; on stop they are
        # cut after a short grace instead of aiohttp's 60 s (every stack's stop waited ~10 s).
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    @property
    def rest_url(self) -> str:
        """What the control plane's `runpod_rest_url` must be to read workersMax here."""
        return f"{self.base_url}/rest/v1"

    async def _endpoint_config(self, request: web.Request) -> web.Response:
        endpoint_id = request.match_info["endpoint_id"]
        if endpoint_id not in self.backends:
            return web.json_response({"error": "endpoint not found"}, status=404)
        pool = self.pools.get(endpoint_id)
        workers_max = pool.config.max_workers if pool is not None else 0
        return web.json_response({"id": endpoint_id, "workersMax": workers_max})

    def _endpoint_app(
        self, config: EndpointConfig, pool_config: PoolConfig | None, *, mounted: bool
    ) -> web.Application:
        backend = EndpointBackend(endpoint_id=config.endpoint_id)
        self.backends[config.endpoint_id] = backend
        on_tick = None
        if pool_config is not None:
            pool = WorkerPool(backend, pool_config, self.worker_urls(config))
            self.pools[config.endpoint_id] = pool
            on_tick = pool.reconcile
        return create_app(backend, config, on_tick, **({"base": ""} if mounted else {}))

    async def _close(self) -> None:
        # The server first (its cleanup stops housekeeping, which would scale the pool back up),
        # then the workers.
        if self._runner is not None:
            await self._runner.cleanup()
        for pool in self.pools.values():
            await asyncio.get_running_loop().run_in_executor(None, pool.close)

    def inject_fault(
        self, *, seconds: float, status: int | None = None, delay_s: float = 0.0
    ) -> None:
        """Make the client API answer `status` (or answer late) for the next `seconds`."""
        assert self._faults_app is not None
        faults = self._faults_app[FAULTS]
        faults.status, faults.delay_s = status, delay_s
        faults.until = time.monotonic() + seconds

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(60)
